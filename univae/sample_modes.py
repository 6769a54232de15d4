"""sample.py's modes as a table.

Each row of MODES is one mode: the flags that select it, the flags that go with it, the function
that runs it on a model and the printer of its table. check_args picks the row and applies the flag
rules (univae.sample_flags: FLAGS, CHECKS) before the model loads; run() runs a mode, reading a
streamed input file in chunks (line_chunks). A new mode is one row here (and its flags in sample.py's
parser and sample_flags.FLAGS).

A mode's records are one dict per output line, {"mode", "input", "output", ...details}: what
`sample.py --json` prints, one JSON object per line.
"""

import contextlib
import dataclasses
import os
import sys
import warnings
from typing import Callable

from univae import edit_dims, generate
from univae.cli import CLIError
from univae.measure import load_data
from univae.sample_flags import (
    HELD_OUT_EDITS,
    check_flags,
    check_model_flags,
    check_values,
    decoding_options,
    parse_codes,
    transfer_defaults,
)
from univae.sample_tables import (
    augment_groups,
    show_analogy,
    show_augment,
    show_codes,
    show_edits,
    show_pairs,
    show_path,
    show_samples,
    show_transfer,
)

# ----------------------------------------------------------------------------- a row of the table


@dataclasses.dataclass(frozen=True)
class Mode:
    name: str
    selected_by: tuple  # flags any of which selects the mode (the first row in MODES wins); none: the fallback
    takes: tuple  # the sample_flags.FLAGS that go with it, its own selectors included; any other one given is refused
    run: Callable  # (model, args, records): append the mode's records
    show: Callable  # (records, args, model, out): print them as a table
    default_n: int | None = None  # outputs per input without --n; None: --n does not apply
    needs: dict = dataclasses.field(default_factory=dict)  # flag -> the error when it is missing
    refusal: str = "{flag} does not go with --{mode}"  # the error for another mode's selector given with this one
    hints: dict = dataclasses.field(default_factory=dict)  # refused flag -> the flag to use instead
    prepare: Callable | None = None  # (args): mode-specific values, checked before the model loads
    setup: Callable | None = None  # (model, args): what the mode loads before it runs
    jsonl: Callable | None = None  # records -> the mode's own JSONL objects (--out, or stdout without --json)
    streams: str | None = None  # the flag naming an input file read STREAM_LINES lines per pass (when given)


# ----------------------------------------------------------------------------- before the model loads


def select_mode(args):
    """The first row of MODES one of whose selecting flags is given; the row with none when no flag selects."""
    chosen = (m for m in MODES if any(getattr(args, flag) is not None for flag in m.selected_by))
    return next(chosen, None) or next(m for m in MODES if not m.selected_by)


def check_args(args):
    """Everything that can be checked before the model loads. -> the mode's row; args gets its defaults
    (prior, n, the mode's own values) and args.decoding. A mistake is a CLIError."""
    mode = select_mode(args)
    check_flags(args, mode)
    args.prior = args.prior or "auto"
    args.n = (mode.default_n or 1) if args.n is None else args.n
    if mode.prepare:
        mode.prepare(args)
    check_values(args, mode.name)
    args.decoding = decoding_options(args)
    return mode


# ----------------------------------------------------------------------------- inputs


STREAM_LINES = 1024  # lines of a streamed input file per pass: memory stays flat in the file's length


def line_chunks(path, size=None):
    """The non-blank, stripped lines of a UTF-8 file (stdin for '-'), read lazily, `size` (default
    STREAM_LINES) at a time."""
    size, n_lines = size or STREAM_LINES, 0
    try:
        with contextlib.nullcontext(sys.stdin) if path == "-" else open(path, encoding="utf-8") as f:
            chunk = []
            for line in f:
                if line.strip():
                    chunk.append(line.strip())
                if len(chunk) == size:
                    n_lines += size
                    yield chunk
                    chunk = []
            if chunk:
                n_lines += len(chunk)
                yield chunk
    except OSError as e:
        raise CLIError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise CLIError(f"cannot read {path}: not UTF-8 text ({e.reason} after line {n_lines + len(chunk)})") from None
    if not n_lines:
        raise CLIError(f"{path} has no sentences (every line is blank)")


def read_lines(path):
    """Non-blank lines of a UTF-8 file, or of stdin for '-', all at once."""
    return [line for chunk in line_chunks(path, sys.maxsize) for line in chunk]


def load_model(checkpoint, device, attn=None):
    """A univae checkpoint directory -> the model in eval mode; CLIError names what is wrong."""
    from univae.checkpoint import CheckpointError
    from univae.model import load_trained

    try:
        return load_trained(checkpoint, device, **({"attn": attn} if attn else {}))
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


def edit_setup(model, args):
    """--replace-dims with neither --text nor --input: the checkpoint's held-out sentences. Loaded before
    run() records warnings: importing univae.evaluate may raise import-time DeprecationWarnings that are
    not the user's business."""
    args.held_out, args.held_out_source = None, None
    if args.text is None and args.input is None:
        args.held_out, args.held_out_source = held_out_sentences(args.checkpoint, model.config.maxlen)


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


# ----------------------------------------------------------------------------- running a mode


class Records(list):
    """A mode's records; add() puts in the code's vq indices (which --codes takes back) and, with --with-z, z."""

    def __init__(self, model, mode, with_z):
        super().__init__()
        self.model, self.mode, self.with_z = model, mode, with_z

    def add(self, z, **fields):
        if self.model.family.has_codes:
            fields["codes"] = self.model.z_to_codes(z[None])[0].tolist()
        if self.with_z:
            fields["z"] = z.tolist()
        self.append({"mode": self.mode, **fields})


def run(model, mode, args):
    """Run `mode` (a row of MODES, from check_args) -> its records, one list per pass: a single pass,
    or for a mode that streams its input file, one per STREAM_LINES lines (args.lines, starting at
    line args.line_offset). The API's own argument checks (empty text, bad dims, ...) raise
    ValueErrors: CLIErrors here."""
    try:
        check_model_flags(model, args)
        path = getattr(args, mode.streams) if mode.streams else None
        passes = [(None, 0)] if path is None else _numbered(line_chunks(path))
        for args.lines, args.line_offset in passes:
            records = Records(model, mode.name, args.with_z)
            mode.run(model, args, records)
            yield list(records)
    except ValueError as e:
        raise CLIError(str(e)) from None


def _numbered(chunks):
    """Chunks of lines -> (chunk, index of its first line)."""
    offset = 0
    for chunk in chunks:
        yield chunk, offset
        offset += len(chunk)


def prior_used(model, args):
    return "fitted" if model.uses_fitted_prior(args.prior, args.component) else "uniform"


def run_prior(model, args, records):
    prior = prior_used(model, args)
    out, z = generate.sample(
        model,
        args.n,
        return_z=True,
        component=args.component,
        prior=args.prior,
        spread=args.prior_spread,
        **args.decoding,
    )
    for i, s in enumerate(out):
        records.add(z[i], input=None, output=s, index=i, prior=prior)


def run_reconstruct(model, args, records):
    texts = args.reconstruct if args.reconstruct is not None else args.lines
    check_lengths(model, texts, args.strict)
    out, z = generate.reconstruct(model, texts, return_z=True, **args.decoding)
    for i, (t, s) in enumerate(zip(texts, out)):
        records.add(z[i], input=t, output=s)


def run_edit(model, args, records):
    prior = prior_used(model, args)
    try:
        _, ranges = edit_dims.parse_dims(args.replace_dims, edit_dims.edit_size(model))
    except ValueError as e:
        raise CLIError(f"--replace-dims: {e}") from None
    texts = (
        [args.text] if args.text is not None else read_lines(args.input) if args.input is not None else args.held_out
    )
    check_lengths(model, texts, args.strict)
    layers = edit_dims.edited_layers(model, args.replace_dims)
    n = args.n
    out, z = generate.edit(
        model, texts, args.replace_dims, n, return_z=True, component=args.component, prior=args.prior, **args.decoding
    )
    for i, s in enumerate(out):  # the n variants of each sentence together
        records.add(
            z[i],
            input=texts[i // n],
            output=s,
            index=i % n,
            replace_dims=args.replace_dims,
            dims=[list(r) for r in ranges],
            latent_layers=layers,
            prior=prior,
        )


def run_interpolate(model, args, records):
    check_lengths(model, args.interpolate, args.strict)
    out, z = generate.interpolate(model, *args.interpolate, args.steps, return_z=True, **args.decoding)
    for i, s in enumerate(out):
        records.add(z[i], input=list(args.interpolate), output=s, step=i, alpha=i / (args.steps - 1))


def run_analogy(model, args, records):
    check_lengths(model, args.analogy, args.strict)
    out, z = generate.analogy(model, *args.analogy, n=args.n, spread=args.spread, return_z=True, **args.decoding)
    for i, s in enumerate(out):
        records.add(z[i], input=list(args.analogy), output=s, index=i)


def run_codes(model, args, records):
    c = model.config
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
    z = model.codes_to_z([args.code_ids]).expand(args.n, -1)
    out = generate.generate(model, z, **args.decoding)
    for i, s in enumerate(out):
        records.add(z[i], input=args.codes, output=s, index=i)


def run_transfer(model, args, records):
    texts = read_lines(args.input)
    check_lengths(model, texts, args.strict)
    from_texts, to_texts = (attribute_lines(model, path) for path in args.transfer)
    out, z = generate.transfer(
        model,
        texts,
        from_texts,
        to_texts,
        strength=args.strength,
        method=args.direction,
        return_z=True,
        **args.decoding,
    )
    for i, (t, s) in enumerate(zip(texts, out)):
        records.add(z[i], input=t, output=s, strength=args.strength, direction=args.direction)


def run_augment(model, args, records):
    texts = args.lines
    check_lengths(model, texts, args.strict)
    variants_of = generate.augment(
        model,
        texts,
        args.n,
        spread=args.spread,
        candidates=args.candidates,
        rank=args.rank,
        keep_start=args.keep_start,
        **args.decoding,
    )
    for j, (t, variants) in enumerate(zip(texts, variants_of), args.line_offset):
        for i, s in enumerate(variants):
            records.append(
                {"mode": records.mode, "input": t, "output": s, "index": i, "input_index": j, "spread": args.spread}
            )
        if not variants:  # keep the input in the table and the JSONL even when every variant was dropped
            records.append(
                {
                    "mode": records.mode,
                    "input": t,
                    "output": None,
                    "index": None,
                    "input_index": j,
                    "spread": args.spread,
                }
            )


# ----------------------------------------------------------------------------- the modes

MODES = (  # selection tries the rows in this order; prior sampling, selected by no flag, is the fallback
    Mode("prior", (), ("component", "prior", "prior_spread", "n", "with_z"), run_prior, show_samples, default_n=10),
    Mode(
        "transfer",
        ("transfer",),
        ("transfer", "input", "strength", "direction", "with_z"),
        run_transfer,
        show_transfer,
        needs={"input": "--transfer needs --input FILE: the sentences to move, one per line"},
        refusal="--transfer does not go with {flag}: it moves the lines of --input FILE",
        prepare=transfer_defaults,
    ),
    Mode(
        "edit",
        ("text", "replace_dims"),
        ("text", "replace_dims", "input", "component", "prior", "n", "with_z"),
        run_edit,
        show_edits,
        default_n=6,
        needs={"replace_dims": "--text needs --replace-dims RANGES (e.g. 0:32) saying which latent dims to redraw"},
        refusal="--replace-dims goes with --text, --input, or alone (held-out sentences of the checkpoint's corpus)",
        setup=edit_setup,
    ),
    Mode(
        "reconstruct",
        ("reconstruct", "input"),
        ("reconstruct", "input", "with_z"),
        run_reconstruct,
        show_pairs,
        streams="input",
    ),
    Mode(
        "interpolate", ("interpolate",), ("interpolate", "with_z"), run_interpolate, show_path, hints={"n": "--steps"}
    ),
    Mode("analogy", ("analogy",), ("analogy", "n", "with_z"), run_analogy, show_analogy, default_n=1),
    Mode(
        "augment",
        ("augment",),
        ("augment", "n", "out", "candidates", "keep_start"),
        run_augment,
        show_augment,
        default_n=4,
        jsonl=augment_groups,
        streams="augment",
    ),
    Mode("codes", ("codes",), ("codes", "n", "with_z"), run_codes, show_codes, default_n=1, prepare=parse_codes),
)
MODE = {m.name: m for m in MODES}
DEFAULT_N = {m.name: m.default_n for m in MODES if m.default_n is not None}
