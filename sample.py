"""Sample, reconstruct, edit, interpolate, analogise and augment sentences with a trained UniVAE.

    python sample.py --n 10                                    random sentences from the prior
    python sample.py --reconstruct "句子" ...                    or --input FILE (one per line, - for stdin)
    python sample.py --text "牙龈出血要吃什么药？" --replace-dims 0:32 --n 6
                                                               redraw latent dims, keep the others exactly;
                                                               ranges over the full code, several allowed
                                                               (0:16,48:64), negative ones as --replace-dims=-16:
    python sample.py --replace-dims 0:32                       the same for the first 5 sentences of the
                                                               test split of the checkpoint's own corpus
                                                               (train_args.json; reloaded as univae.evaluate
                                                               does); --input FILE edits every line of FILE
    python sample.py --interpolate "A" "B" --steps 6           slerp per vMF layer, ends included
                                                               (vq: linear, snapped to the nearest codes)
    python sample.py --codes "12 7 301 5"                      --latent vq: decode one code per latent
                                                               layer (--json --reconstruct shows codes);
                                                               --replace-dims then counts code positions
    python sample.py --n 5 --component 2                       --latent gmm: prior draws from component 2
    python sample.py --analogy "A" "B" "C" --n 3               z_C + z_B - z_A, then n-1 codes around it
    python sample.py --augment FILE --n K [--out FILE]         K variants per line from posterior-style
                                                               samples (--spread scales the noise), each
                                                               keeping a random start of the line (--keep-start), as
                                                               JSONL {"input", "outputs"}; --candidates M
                                                               --rank round_trip|overlap: decode M x K, keep
                                                               the K closest to the sentence
    python sample.py --transfer FROM_FILE TO_FILE --input FILE [--strength S]
                                                               move each line of FILE from the attribute of
                                                               FROM_FILE's sentences to TO_FILE's (e.g. neg.txt
                                                               pos.txt) along a linear probe's direction between
                                                               their codes; strength 0 = the reconstruction;
                                                               --json rows {"input", "output"} in input order

Prior draws and --replace-dims edits come from the checkpoint's fitted prior when it has one
(prior.safetensors: a Gaussian mixture fitted to the training sentences' posterior codes; an edit
redraws the chosen dims from its conditional given the kept ones; `python -m univae.prior
--checkpoint DIR` fits one), else from the training prior (uniform on each vMF sphere, N(0, I),
uniform vq codes, the gmm's own mixture). --prior fitted|uniform chooses; --component always draws
from the training prior's mixture.

Decoding is greedy unless told otherwise: --beam-size K (length penalty --length-penalty, GNMT's
alpha), or sampling with --temperature / --top-k / --top-p (or --do-sample); --no-repeat-ngram N;
--seed makes every draw reproducible; --compile runs the one-token step through torch.compile
(CUDA graphs on CUDA; one compile per batch shape, seconds each). --json prints one JSON
object per output line on stdout and nothing else; warnings go to stderr. Errors are one line on
stderr and a non-zero exit.
"""

import argparse
import collections
import json
import os
import sys
import unicodedata
import warnings

import torch

from univae import generate
from univae.config import ATTN_BACKENDS
from univae.decoding import Decoding

DEFAULT_CHECKPOINT = os.path.join("runs", "default", "last")
DEFAULT_N = {"prior": 10, "edit": 6, "analogy": 1, "augment": 4, "codes": 1}
HELD_OUT_EDITS = 5  # --replace-dims alone: this many held-out sentences of the checkpoint's corpus
_D = Decoding()


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage too; we want one line
        raise CLIError(f"{message} (see --help)")


def spread(text):
    """--spread: one number, or one per latent layer separated by commas (lowest first)."""
    values = tuple(float(x) for x in text.split(","))
    return values[0] if len(values) == 1 else values


def build_parser():
    p = Parser(prog="sample.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, metavar="DIR", help="a univae checkpoint directory")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--reconstruct", nargs="+", metavar="TEXT", help="decode these sentences' codes")
    mode.add_argument(
        "--input",
        metavar="FILE",
        help="reconstruct every line of FILE (- for stdin); with --replace-dims, edit every line",
    )
    mode.add_argument("--text", help="the sentence to edit with --replace-dims")
    mode.add_argument("--interpolate", nargs=2, metavar=("A", "B"))
    mode.add_argument("--analogy", nargs=3, metavar=("A", "B", "C"), help="A is to B as C is to ?")
    mode.add_argument("--augment", metavar="FILE", help="variants of every line of FILE (- for stdin)")
    mode.add_argument(
        "--codes",
        metavar="CODES",
        help='--latent vq: decode these code indices, one per latent layer (lowest first), e.g. "12 7 301 5"',
    )
    p.add_argument(
        "--transfer",
        nargs=2,
        metavar=("FROM_FILE", "TO_FILE"),
        help="with --input FILE: move every line of FILE from FROM_FILE's attribute to TO_FILE's "
        "(one sentence per line each)",
    )
    p.add_argument(
        "--strength",
        type=float,
        help=f"--transfer: how far to move (default {generate.DEFAULT_STRENGTH}; "
        "1 = the gap between the two sets' means, 0 = the plain reconstruction)",
    )
    p.add_argument(
        "--direction",
        choices=("probe", "mean"),
        help="--transfer: a linear probe's normal between the codes (default) or the plain difference of their means",
    )
    p.add_argument(
        "--component",
        type=int,
        metavar="C",
        help="--latent gmm: draw from mixture component C (prior samples, --replace-dims edits)",
    )
    p.add_argument(
        "--prior",
        choices=("auto", "fitted", "uniform"),
        help="what prior draws and --replace-dims edits come from: the checkpoint's fitted prior, the "
        "training prior, or auto (default: fitted when the checkpoint has one)",
    )
    p.add_argument(
        "--prior-spread",
        type=float,
        metavar="S",
        help="prior samples from the fitted prior: each mixture component's standard deviation times S "
        "(default 0.5, univae.density.SAMPLE_SPREAD; 1 = the fitted density)",
    )
    p.add_argument("--n", type=int, help=f"outputs per input (defaults: {DEFAULT_N})")
    p.add_argument(
        "--replace-dims",
        metavar="RANGES",
        help="e.g. 0:32, 0:16,48:64, or --replace-dims=-16:; with "
        f"--text, --input, or alone: the first {HELD_OUT_EDITS} test sentences of the checkpoint's corpus",
    )
    p.add_argument("--steps", type=int, default=6, help="interpolation points, ends included")
    p.add_argument(
        "--spread",
        type=spread,
        default=1.0,
        metavar="S[,S...]",
        help="noise scale for --augment and "
        "--analogy (1 = the posterior); one per latent layer, lowest first, e.g. 0,1,1 keeps the lowest",
    )
    p.add_argument("--out", metavar="FILE", help="--augment: write the JSONL here instead of stdout")
    p.add_argument(
        "--keep-start",
        type=float,
        metavar="F",
        help="--augment: each variant keeps the line's first k "
        f"tokens, k drawn from 1..F x its length (default {generate.DEFAULT_KEEP_START}, 0 with --beam-size > 1; "
        "0 = every token from the code)",
    )
    p.add_argument(
        "--candidates",
        type=int,
        default=1,
        metavar="M",
        help="--augment: decode M x n variants per line and keep the n that --rank puts first (default 1: no ranking)",
    )
    p.add_argument(
        "--rank",
        choices=("round_trip", "overlap"),
        default="round_trip",
        help="--augment with "
        "--candidates: round_trip = cosine between the variant's own code and the line's, overlap = char F1",
    )
    g = p.add_argument_group("decoding")
    g.add_argument("--beam-size", type=int, default=_D.beam_size)
    g.add_argument("--length-penalty", type=float, default=_D.length_penalty, help="GNMT alpha for beam search")
    g.add_argument("--do-sample", action="store_true", help="sample tokens (implied by --temperature/--top-k/--top-p)")
    g.add_argument("--temperature", type=float, default=_D.temperature)
    g.add_argument("--top-k", type=int, default=_D.top_k)
    g.add_argument("--top-p", type=float, default=_D.top_p)
    g.add_argument("--no-repeat-ngram", type=int, default=_D.no_repeat_ngram, metavar="N")
    g.add_argument("--seed", type=int, default=_D.seed)
    g.add_argument("--batch-size", type=int, default=_D.batch_size)
    g.add_argument("--no-cache", action="store_true", help="recompute the whole sequence every step (slow reference)")
    g.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the one-token decoding step (CUDA graphs on CUDA); compiles once per batch shape",
    )
    o = p.add_argument_group("output and runtime")
    o.add_argument("--json", action="store_true", help="one JSON object per output line on stdout, nothing else")
    o.add_argument("--with-z", action="store_true", help="--json: add each output's code z (not for --augment)")
    o.add_argument("--strict", action="store_true", help="a text longer than maxlen is an error, not truncated")
    o.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    o.add_argument("--attn", choices=ATTN_BACKENDS, help="override the checkpoint's attention backend")
    return p


def check_args(args):
    """Everything that can be checked before loading the model. Returns the mode."""
    mode = (
        "reconstruct"
        if args.reconstruct is not None or args.input is not None
        else "edit"
        if args.text is not None
        else "interpolate"
        if args.interpolate
        else "analogy"
        if args.analogy
        else "augment"
        if args.augment is not None
        else "codes"
        if args.codes is not None
        else "prior"
    )
    if args.transfer is not None:
        if args.input is None or mode != "reconstruct" or args.reconstruct is not None:
            other = next(
                (
                    f"--{m}"
                    for m in ("reconstruct", "text", "interpolate", "analogy", "augment", "codes")
                    if getattr(args, m) is not None
                ),
                None,
            )
            raise CLIError(
                f"--transfer does not go with {other}: it moves the lines of --input FILE"
                if other
                else "--transfer needs --input FILE: the sentences to move, one per line"
            )
        if args.replace_dims is not None:
            raise CLIError("--transfer does not go with --replace-dims: it moves the lines of --input FILE")
        mode = "transfer"
    elif args.strength is not None or args.direction is not None:
        raise CLIError(f"--{'strength' if args.strength is not None else 'direction'} goes with --transfer")
    if args.replace_dims is not None and (mode == "prior" or args.input is not None):
        mode = "edit"  # alone: held-out sentences of the checkpoint's corpus; with --input: every line of FILE
    if args.replace_dims is not None and mode != "edit":
        raise CLIError(
            "--replace-dims goes with --text, --input, or alone (held-out sentences of the checkpoint's corpus)"
        )
    if mode == "edit" and args.replace_dims is None:
        raise CLIError("--text needs --replace-dims RANGES (e.g. 0:32) saying which latent dims to redraw")
    if args.out is not None and mode != "augment":
        raise CLIError("--out goes with --augment")
    if args.component is not None and mode not in ("prior", "edit"):
        raise CLIError(
            "--component chooses the mixture component of prior draws: it goes with prior sampling or --replace-dims"
        )
    if args.prior is not None and mode not in ("prior", "edit"):
        raise CLIError("--prior chooses what prior draws come from: it goes with prior sampling or --replace-dims")
    if args.prior == "fitted" and args.component is not None:
        raise CLIError("--component draws from the training prior's own mixture: it does not go with --prior fitted")
    if args.prior_spread is not None and (mode != "prior" or not args.prior_spread > 0):
        raise CLIError(
            f"--prior-spread {args.prior_spread}: a positive scale of the fitted prior's draws, "
            "for prior sampling (no --text/--input/--augment...)"
        )
    args.prior = args.prior or "auto"
    if mode == "codes":
        try:
            args.code_ids = [int(x) for x in args.codes.replace(",", " ").split()]
        except ValueError:
            raise CLIError(
                f'--codes {args.codes!r}: expected integers separated by spaces, e.g. "12 7 301 5"'
            ) from None
        if not args.code_ids:
            raise CLIError("--codes is empty: give one code index per latent layer")
    if args.n is not None and mode not in DEFAULT_N:
        raise CLIError(f"--n does not apply to --{mode}" + (" (use --steps)" if mode == "interpolate" else ""))
    args.n = DEFAULT_N.get(mode, 1) if args.n is None else args.n
    if args.n < 1:
        raise CLIError(f"--n must be at least 1, got {args.n}")
    if mode == "interpolate" and args.steps < 2:
        raise CLIError(f"--steps must be at least 2, got {args.steps}")
    if mode != "augment" and (args.candidates != 1 or args.keep_start is not None):
        raise CLIError(f"--{'candidates' if args.candidates != 1 else 'keep-start'} goes with --augment")
    if args.keep_start is not None and not 0 <= args.keep_start <= 1:
        raise CLIError(f"--keep-start must be in [0, 1], got {args.keep_start}")
    if args.keep_start and args.beam_size > 1:
        raise CLIError("--keep-start forces a prefix, which beam search cannot: use --keep-start 0 with --beam-size")
    if args.candidates < 1:
        raise CLIError(f"--candidates must be at least 1, got {args.candidates}")
    if mode == "transfer":
        args.strength = generate.DEFAULT_STRENGTH if args.strength is None else args.strength
        args.direction = args.direction or "probe"
    if args.with_z and (mode == "augment" or not args.json):
        raise CLIError("--with-z needs --json and is not available with --augment")
    for text in [args.text, *(args.reconstruct or []), *(args.interpolate or []), *(args.analogy or [])]:
        if text is not None and not text.strip():
            raise CLIError("empty text: every input sentence needs at least one character")
    try:
        args.decoding = dict(
            beam_size=args.beam_size,
            length_penalty=args.length_penalty,
            do_sample=True if args.do_sample else None,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            no_repeat_ngram=args.no_repeat_ngram,
            seed=args.seed,
            batch_size=args.batch_size,
            use_cache=not args.no_cache,
            compile_step=args.compile,
        )
        Decoding(**args.decoding)
    except ValueError as e:
        raise CLIError(str(e)) from None
    return mode


def read_lines(path):
    """Non-blank lines of a UTF-8 file, or of stdin for '-'."""
    try:
        if path == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
    except OSError as e:
        raise CLIError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise CLIError(f"cannot read {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = [s.strip() for s in lines if s.strip()]
    if not lines:
        raise CLIError(f"{path} has no sentences (every line is blank)")
    return lines


def load_model(args):
    from univae.checkpoint import CheckpointError
    from univae.model import load_trained

    try:
        return load_trained(args.checkpoint, args.device, **({"attn": args.attn} if args.attn else {}))
    except CheckpointError as e:
        raise CLIError(str(e)) from None


def attribute_lines(model, path):
    """The lines of a --transfer FROM/TO file that fit in maxlen (a longer one would be truncated, and
    its code would describe a different sentence): skipped with a warning; none left is an error."""
    lines = read_lines(path)
    limit = model.config.maxlen - 2
    fit = [s for s in lines if len(model.tokenizer.encode(s, add_special_tokens=False).ids) <= limit]
    if not fit:
        raise CLIError(
            f"{path}: every line is longer than maxlen - 2 = {limit} tokens; --transfer needs sentences that fit"
        )
    if len(fit) < len(lines):
        warnings.warn(
            f"{path}: skipped {len(lines) - len(fit)} of {len(lines)} lines longer than maxlen - 2 = {limit} tokens"
        )
    return fit


def held_out_sentences(checkpoint, maxlen):
    """The first HELD_OUT_EDITS sentences of the test split of the checkpoint's corpus, loaded and split
    as univae.evaluate does by default (train_args.json's corpus, text field and split seed);
    -> (sentences, where they come from)."""
    from univae.evaluate import load_data
    from univae.rundir import ARGS_FILE, read_train_args

    hint = "pass --text or --input with the sentences to edit"
    try:
        train_args = read_train_args(checkpoint)
    except (OSError, ValueError) as e:
        raise CLIError(f"cannot read {os.path.join(checkpoint, ARGS_FILE)} ({e}): {hint}") from None
    if not train_args or not train_args.get("corpus"):
        raise CLIError(
            f"{checkpoint} has no {ARGS_FILE} naming its training corpus, so no held-out sentences to edit: {hint}"
        )
    try:
        texts, source, _, _ = load_data(f"{train_args['corpus']}:test", maxlen, train_args)
    except (OSError, ValueError) as e:  # CorpusError is a ValueError
        raise CLIError(
            f"cannot read the checkpoint's corpus {train_args['corpus']} ({' '.join(str(e).split())}): {hint}"
        ) from None
    texts = texts[:HELD_OUT_EDITS]
    return texts, f"the first {len(texts)} sentences of the {source}"


def check_lengths(model, texts, strict):
    """With --strict, a text longer than maxlen is an error; otherwise encode_texts warns and truncates."""
    if not strict:
        return
    limit = model.config.maxlen - 2  # [CLS] and [SEP] take two of the maxlen slots
    for text in texts:
        n = len(model.tokenizer.encode(text, add_special_tokens=False).ids)
        if n > limit:
            short = text if len(text) <= 20 else text[:20] + "…"
            raise CLIError(f"text {short!r} has {n} tokens, more than maxlen - 2 = {limit} (drop --strict to truncate)")


def run(model, mode, args):
    """The mode's records: one dict per output line, {"mode", "input", "output", ...details}."""
    opts, n = args.decoding, args.n
    c = model.config
    records = []
    if args.component is not None:
        if not model.family.has_components:
            raise CLIError(f"--component needs a --latent gmm checkpoint; this one's latent family is {c.latent}")
        if not 0 <= args.component < c.mixture_components:
            raise CLIError(f"--component {args.component}: the mixture has components 0..{c.mixture_components - 1}")
    if args.prior == "fitted" and model.fitted_prior is None:
        if not model.family.fits_prior:
            raise CLIError("a vq checkpoint has no fitted prior: its draws are uniform codes (--prior uniform)")
        raise CLIError(
            f"{args.checkpoint} has no fitted prior: fit one with "
            f"`python -m univae.prior --checkpoint {args.checkpoint}`, or use --prior uniform"
        )
    try:
        generate.layer_spreads(model, args.spread)
    except ValueError as e:  # "spread has 3 values, but ..." / "spread must be non-negative, ..."
        raise CLIError(f"--{e}") from None
    prior_used = "fitted" if model.uses_fitted_prior(args.prior, args.component) else "uniform"
    if mode == "codes":
        if not model.family.has_codes:
            raise CLIError(f"--codes needs a --latent vq checkpoint; this one's latent family is {c.latent}")
        if len(args.code_ids) != c.num_latent_layers:
            raise CLIError(
                f"--codes has {len(args.code_ids)} codes, but the model has {c.num_latent_layers} latent "
                "layers: give one code per layer, lowest first"
            )
        bad = [x for x in args.code_ids if not 0 <= x < c.codebook_size]
        if bad:
            raise CLIError(f"--codes: {bad[0]} is not a code; codes are 0..{c.codebook_size - 1}")

    def add(z, **fields):
        if model.family.has_codes:  # the code indices, which --codes takes back
            fields["codes"] = model.z_to_codes(z[None])[0].tolist()
        if args.with_z:
            fields["z"] = z.tolist()
        records.append({"mode": mode, **fields})

    if mode == "prior":
        out, z = generate.sample(
            model, n, return_z=True, component=args.component, prior=args.prior, spread=args.prior_spread, **opts
        )
        for i, s in enumerate(out):
            add(z[i], input=None, output=s, index=i, prior=prior_used)
    elif mode == "reconstruct":
        texts = args.reconstruct if args.reconstruct is not None else read_lines(args.input)
        check_lengths(model, texts, args.strict)
        out, z = generate.reconstruct(model, texts, return_z=True, **opts)
        for i, (t, s) in enumerate(zip(texts, out)):
            add(z[i], input=t, output=s)
    elif mode == "edit":
        try:
            _, ranges = generate.parse_dims(args.replace_dims, generate.edit_size(model))
        except ValueError as e:
            raise CLIError(f"--replace-dims: {e}") from None
        texts = (
            [args.text]
            if args.text is not None
            else read_lines(args.input)
            if args.input is not None
            else args.held_out
        )
        check_lengths(model, texts, args.strict)
        layers = generate.edited_layers(model, args.replace_dims)
        out, z = generate.edit(
            model, texts, args.replace_dims, n, return_z=True, component=args.component, prior=args.prior, **opts
        )
        for i, s in enumerate(out):  # the n variants of each sentence together
            add(
                z[i],
                input=texts[i // n],
                output=s,
                index=i % n,
                replace_dims=args.replace_dims,
                dims=[list(r) for r in ranges],
                latent_layers=layers,
                prior=prior_used,
            )
    elif mode == "interpolate":
        check_lengths(model, args.interpolate, args.strict)
        out, z = generate.interpolate(model, *args.interpolate, args.steps, return_z=True, **opts)
        for i, s in enumerate(out):
            add(z[i], input=list(args.interpolate), output=s, step=i, alpha=i / (args.steps - 1))
    elif mode == "analogy":
        check_lengths(model, args.analogy, args.strict)
        out, z = generate.analogy(model, *args.analogy, n=n, spread=args.spread, return_z=True, **opts)
        for i, s in enumerate(out):
            add(z[i], input=list(args.analogy), output=s, index=i)
    elif mode == "codes":
        z = model.codes_to_z([args.code_ids]).expand(n, -1)
        out = generate.generate(model, z, **opts)
        for i, s in enumerate(out):
            add(z[i], input=args.codes, output=s, index=i)
    elif mode == "transfer":
        texts = read_lines(args.input)
        check_lengths(model, texts, args.strict)
        from_texts, to_texts = (attribute_lines(model, path) for path in args.transfer)
        out, z = generate.transfer(
            model, texts, from_texts, to_texts, strength=args.strength, method=args.direction, return_z=True, **opts
        )
        for i, (t, s) in enumerate(zip(texts, out)):
            add(z[i], input=t, output=s, strength=args.strength, direction=args.direction)
    elif mode == "augment":
        texts = read_lines(args.augment)
        check_lengths(model, texts, args.strict)
        variants_of = generate.augment(
            model,
            texts,
            n,
            spread=args.spread,
            candidates=args.candidates,
            rank=args.rank,
            keep_start=args.keep_start,
            **opts,
        )
        for j, (t, variants) in enumerate(zip(texts, variants_of)):
            for i, s in enumerate(variants):
                records.append(
                    {"mode": mode, "input": t, "output": s, "index": i, "input_index": j, "spread": args.spread}
                )
            if not variants:  # keep the input in the table and the JSONL even when every variant was dropped
                records.append(
                    {"mode": mode, "input": t, "output": None, "index": None, "input_index": j, "spread": args.spread}
                )
    return records


# ----------------------------------------------------------------------------- output


def _width(s):
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in s)


def _table(header, rows, out):
    widths = [max(_width(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    for r in [header, *rows]:
        cells = [str(c) + " " * (w - _width(str(c))) for c, w in zip(r, widths)]
        print("  ".join([*cells, str(r[-1])]).rstrip(), file=out)


def _edit_groups(records):
    """[(sentence, Counter of its variants in first-drawn order)] of edit records, n per sentence."""
    groups = []
    for r in records:
        if r["index"] == 0:
            groups.append((r["input"], collections.Counter()))
        groups[-1][1][r["output"]] += 1
    return groups


def print_table(mode, records, args, model, out):
    if mode == "prior":
        _table(["#", "output"], [[r["index"], r["output"]] for r in records], out)
    elif mode in ("reconstruct", "transfer"):
        if mode == "transfer":
            print(
                f"moved from {args.transfer[0]} towards {args.transfer[1]} ({args.direction} direction, strength "
                f"{args.strength:g})",
                file=out,
            )
        _table(["input", "output"], [[r["input"], r["output"]] for r in records], out)
    elif mode == "edit":  # what was replaced once, then each sentence with its variants indented below it
        r0 = records[0]
        what = f"{generate.edit_unit(model)} {r0['replace_dims']} of {generate.edit_size(model)}"
        source = {"fitted": "the fitted prior's conditional given the kept dims", "uniform": "the training prior"}
        print(
            f"replaced {what} (latent layers {', '.join(map(str, r0['latent_layers']))}; 0 = lowest), "
            f"redrawn from {source[r0['prior']]}",
            file=out,
        )
        if args.held_out_source:
            print(f"sentences: {args.held_out_source}", file=out)
        for text, variants in _edit_groups(records):
            print(f"\n{text}", file=out)
            for variant, k in variants.items():  # a variant drawn k > 1 times is shown once, with its count
                print(f"    {variant}" + (f"  (×{k})" if k > 1 else ""), file=out)
    elif mode == "codes":
        print(f"codes: {' '.join(map(str, records[0]['codes']))}", file=out)
        _table(["#", "output"], [[r["index"], r["output"]] for r in records], out)
    elif mode == "interpolate":
        _table(["alpha", "output"], [[f"{r['alpha']:.2f}", r["output"]] for r in records], out)
    elif mode == "analogy":
        a, b, c = records[0]["input"]
        print(f"{a} : {b} :: {c} : ?", file=out)
        _table(["#", "output"], [["=" if r["index"] == 0 else r["index"], r["output"]] for r in records], out)
    elif mode == "augment":
        rows, last = [], None
        for r in records:
            rows.append(
                [
                    "" if r["input_index"] == last else r["input"],
                    "(no new variant)" if r["output"] is None else r["output"],
                ]
            )
            last = r["input_index"]
        _table(["input", "variants"], rows, out)


def augment_groups(records):
    """Per-variant records -> one {"input", "outputs"} per input line, in input order."""
    groups = {}
    for r in records:
        g = groups.setdefault(r["input_index"], {"input": r["input"], "outputs": []})
        if r["output"] is not None:
            g["outputs"].append(r["output"])
    return list(groups.values())


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
        mode = check_args(args)
        model = load_model(args)
        args.held_out, args.held_out_source = None, None
        if mode == "edit" and args.text is None and args.input is None:  # before recording warnings: importing
            # univae.evaluate may raise import-time DeprecationWarnings that are not the user's business
            args.held_out, args.held_out_source = held_out_sentences(args.checkpoint, model.config.maxlen)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                records = run(model, mode, args)
            except ValueError as e:  # the API's own argument checks (empty text, bad dims, ...)
                raise CLIError(str(e)) from None
        for w in caught:
            print(f"sample.py: warning: {w.message}", file=sys.stderr)
        if mode == "augment" and (args.out or not args.json):
            lines = "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in augment_groups(records))
            if args.out:
                try:
                    with open(args.out, "w", encoding="utf-8") as f:
                        f.write(lines)
                except OSError as e:
                    raise CLIError(f"cannot write {args.out}: {e.strerror or e}") from None
                print(f"sample.py: wrote {lines.count(chr(10))} lines to {args.out}", file=sys.stderr)
            else:
                sys.stdout.write(lines)  # no --out, no --json: the JSONL itself is the output
                return 0
        if args.json:
            for r in records:
                if r["output"] is not None:
                    print(json.dumps(r, ensure_ascii=False))
        else:
            print_table(mode, records, args, model, sys.stdout)
        return 0
    except CLIError as e:
        print(f"sample.py: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `python sample.py ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
