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
import contextlib
import json
import os
import sys
import warnings

import torch

from univae import generate, sample_modes
from univae.cli import CLIError, Parser, report
from univae.config import ATTN_BACKENDS
from univae.decoding import Decoding
from univae.sample_modes import DEFAULT_N, HELD_OUT_EDITS, check_args

DEFAULT_CHECKPOINT = os.path.join("runs", "default", "last")
_D = Decoding()


def spread(text):
    """--spread: one number, or one per latent layer separated by commas (lowest first)."""
    values = tuple(float(x) for x in text.split(","))
    return values[0] if len(values) == 1 else values


def build_parser():
    """The flags, in --help order; which go together is univae/sample_modes.py's table and
    univae/sample_flags.py's rules."""
    p = Parser(prog="sample.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_flags(p)
    add_mode_options(p)
    add_augment_options(p)
    add_decoding_flags(p.add_argument_group("decoding"))
    o = p.add_argument_group("output and runtime")
    o.add_argument("--json", action="store_true", help="one JSON object per output line on stdout, nothing else")
    o.add_argument("--with-z", action="store_true", help="--json: add each output's code z (not for --augment)")
    o.add_argument("--strict", action="store_true", help="a text longer than maxlen is an error, not truncated")
    o.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    o.add_argument("--attn", choices=ATTN_BACKENDS, help="override the checkpoint's attention backend")
    return p


def add_mode_flags(p):
    """The checkpoint, and the flags that choose a mode (univae.sample_modes.MODES)."""
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, metavar="DIR", help="a univae checkpoint directory")
    selectors = p.add_mutually_exclusive_group()
    selectors.add_argument("--reconstruct", nargs="+", metavar="TEXT", help="decode these sentences' codes")
    selectors.add_argument(
        "--input",
        metavar="FILE",
        help="reconstruct every line of FILE (- for stdin); with --replace-dims, edit every line",
    )
    selectors.add_argument("--text", help="the sentence to edit with --replace-dims")
    selectors.add_argument("--interpolate", nargs=2, metavar=("A", "B"))
    selectors.add_argument("--analogy", nargs=3, metavar=("A", "B", "C"), help="A is to B as C is to ?")
    selectors.add_argument("--augment", metavar="FILE", help="variants of every line of FILE (- for stdin)")
    selectors.add_argument(
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


def add_mode_options(p):
    """What the modes take besides their inputs: prior draws, edits, --n, interpolation, noise."""
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


def add_augment_options(p):
    """--augment's own options."""
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


def add_decoding_flags(g):
    """generate.Decoding's options (defaults from it)."""
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


def print_records(mode, records, args, model, jsonl_file):
    """One pass's records on stdout: --json lines, or the mode's table; a mode with its own JSONL
    (--augment) writes it to jsonl_file (--out's), or prints it instead of the table when there is
    neither --out nor --json. -> the JSONL lines written to jsonl_file."""
    written = 0
    if mode.jsonl and (args.out or not args.json):
        lines = "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in mode.jsonl(records))
        if not args.out:
            sys.stdout.write(lines)  # no --out, no --json: the JSONL itself is the output
            return 0
        jsonl_file.write(lines)
        written = lines.count("\n")
    if args.json:
        for r in records:
            if r["output"] is not None:
                print(json.dumps(r, ensure_ascii=False))
    else:
        mode.show(records, args, model, sys.stdout)
    return written


@contextlib.contextmanager
def jsonl_output(mode, args):
    """--out's file for a mode's JSONL, written as OUT.tmp and renamed to OUT when every pass is done:
    a failure leaves no half-written OUT. None when there is no such file."""
    if not (mode.jsonl and args.out):
        yield None
        return
    tmp = f"{args.out}.tmp"
    try:
        f = open(tmp, "w", encoding="utf-8")
    except OSError as e:
        raise CLIError(f"cannot write {args.out}: {e.strerror or e}") from None
    try:
        with f:
            yield f
        os.replace(tmp, args.out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
        mode = check_args(args)
        model = sample_modes.load_model(args.checkpoint, args.device, args.attn)
        if mode.setup:  # before recording warnings, which are the run's own
            mode.setup(model, args)
        n_written = 0
        with warnings.catch_warnings(record=True) as caught, jsonl_output(mode, args) as jsonl_file:
            warnings.simplefilter("always")
            for records in sample_modes.run(model, mode, args):  # one pass, or one per chunk of a streamed file
                n_written += print_records(mode, records, args, model, jsonl_file)
        for w in caught:
            print(f"sample.py: warning: {w.message}", file=sys.stderr)
        if jsonl_file is not None:
            print(f"sample.py: wrote {n_written} lines to {args.out}", file=sys.stderr)
        return 0
    except CLIError as e:
        return report("sample.py", e)
    except BrokenPipeError:  # `python sample.py ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
