"""sample.py's flags: their declarations (build_parser), their rules as data, and the checks that
apply them.

FLAGS says, in the order they are checked, what the error is when a flag is given to a mode that does
not take it; CHECKS are the rules on flag values. Before the model loads, univae.sample_modes.check_args
applies them to the mode's row (check_flags, check_values) and turns the decoding flags into generate's
arguments; check_model_flags applies the rules that depend on the checkpoint. A broken rule is a
CLIError, in the words sample.py prints.
"""

import argparse
import dataclasses
import os
from typing import Callable

import torch

from univae import generate
from univae.cli import CLIError, Parser
from univae.config import ATTN_BACKENDS
from univae.decoding import Decoding

# ----------------------------------------------------------------------------- the flags

DEFAULT_CHECKPOINT = os.path.join("runs", "default", "last")
HELD_OUT_EDITS = 5  # --replace-dims alone: this many held-out sentences of the checkpoint's corpus
DECODING = Decoding()  # the decoding flags' defaults


def spread(text):
    """--spread: one number, or one per latent layer separated by commas (lowest first)."""
    values = tuple(float(x) for x in text.split(","))
    return values[0] if len(values) == 1 else values


def build_parser(description=None, default_n=None):
    """sample.py's flags, in --help order; which go together is univae/sample_modes.py's table and
    the rules below. default_n: {mode: its default --n}, for the help text."""
    p = Parser(prog="sample.py", description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_flags(p)
    add_mode_options(p, default_n)
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
        help=f"--transfer: the difference of the two sets' mean codes (mean) or a linear probe's normal between "
        f"them (probe); default {generate.DEFAULT_DIRECTION}",
    )


def add_mode_options(p, default_n=None):
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
    p.add_argument("--n", type=int, help=f"outputs per input (defaults: {default_n})")
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
    g.add_argument("--beam-size", type=int, default=DECODING.beam_size)
    g.add_argument("--length-penalty", type=float, default=DECODING.length_penalty, help="GNMT alpha for beam search")
    g.add_argument("--do-sample", action="store_true", help="sample tokens (implied by --temperature/--top-k/--top-p)")
    g.add_argument("--temperature", type=float, default=DECODING.temperature)
    g.add_argument("--top-k", type=int, default=DECODING.top_k)
    g.add_argument("--top-p", type=float, default=DECODING.top_p)
    g.add_argument("--no-repeat-ngram", type=int, default=DECODING.no_repeat_ngram, metavar="N")
    g.add_argument("--seed", type=int, default=DECODING.seed)
    g.add_argument("--batch-size", type=int, default=DECODING.batch_size)
    g.add_argument("--no-cache", action="store_true", help="recompute the whole sequence every step (slow reference)")
    g.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the one-token decoding step (CUDA graphs on CUDA); compiles once per batch shape",
    )


# ----------------------------------------------------------------------------- the rules


@dataclasses.dataclass(frozen=True)
class Flag:
    name: str  # the parser's dest
    refused: str | None = None  # the error when a mode does not take it; None: a selector, the mode's refusal
    default: object = None  # the parser's default: any other value counts as given

    @property
    def option(self):
        return "--" + self.name.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class Check:
    broken: Callable  # args -> whether the rule is broken
    message: str  # formatted with the flags' values
    modes: tuple | None = None  # the modes it applies to; None: all


# messages are formatted with the flags' values, the mode's name (mode) and the refused flag's option (flag)
PRIOR_SPREAD = (
    "--prior-spread {prior_spread}: a positive scale of the fitted prior's draws, "
    "for prior sampling (no --text/--input/--augment...)"
)
WITH_Z = "--with-z needs --json and is not available with --augment"
FLAGS = (  # checked in this order: the first one needed and missing, or given and not taken, is the error
    Flag("reconstruct"),
    Flag("text"),
    Flag("interpolate"),
    Flag("analogy"),
    Flag("augment"),
    Flag("codes"),
    Flag("input"),
    Flag("transfer"),
    Flag("strength", "--strength goes with --transfer"),
    Flag("direction", "--direction goes with --transfer"),
    Flag("replace_dims"),
    Flag("out", "--out goes with --augment"),
    Flag(
        "component",
        "--component chooses the mixture component of prior draws: it goes with prior sampling or --replace-dims",
    ),
    Flag("prior", "--prior chooses what prior draws come from: it goes with prior sampling or --replace-dims"),
    Flag("prior_spread", PRIOR_SPREAD),
    Flag("n", "--n does not apply to --{mode}"),
    Flag("candidates", "--candidates goes with --augment", default=1),
    Flag("keep_start", "--keep-start goes with --augment"),
    Flag("with_z", WITH_Z, default=False),
)


def texts_given(args):
    """The sentences given on the command line (not in files)."""
    texts = [args.text, *(args.reconstruct or []), *(args.interpolate or []), *(args.analogy or [])]
    return [t for t in texts if t is not None]


CHECKS = (  # after the defaults are filled in, in this order
    Check(
        lambda a: a.prior == "fitted" and a.component is not None,
        "--component draws from the training prior's own mixture: it does not go with --prior fitted",
    ),
    Check(lambda a: a.prior_spread is not None and not a.prior_spread > 0, PRIOR_SPREAD),
    Check(lambda a: a.n < 1, "--n must be at least 1, got {n}"),
    Check(lambda a: a.steps < 2, "--steps must be at least 2, got {steps}", modes=("interpolate",)),
    Check(
        lambda a: a.keep_start is not None and not 0 <= a.keep_start <= 1,
        "--keep-start must be in [0, 1], got {keep_start}",
    ),
    Check(
        lambda a: a.keep_start and a.beam_size > 1,
        "--keep-start forces a prefix, which beam search cannot: use --keep-start 0 with --beam-size",
    ),
    Check(lambda a: a.candidates < 1, "--candidates must be at least 1, got {candidates}"),
    Check(lambda a: a.with_z and not a.json, WITH_Z),
    Check(
        lambda a: any(not t.strip() for t in texts_given(a)),
        "empty text: every input sentence needs at least one character",
    ),
)

# ----------------------------------------------------------------------------- before the model loads


def check_flags(args, mode):
    """FLAGS in order: the first one the mode (a row of univae.sample_modes.MODES) needs and lacks, or given
    and not taken, is a CLIError."""
    for flag in FLAGS:
        given = getattr(args, flag.name) != flag.default
        if not given and flag.name in mode.needs:
            raise CLIError(mode.needs[flag.name])
        if given and flag.name not in mode.takes:
            message = (mode.refusal if flag.refused is None else flag.refused).format(
                mode=mode.name, flag=flag.option, **vars(args)
            )
            raise CLIError(message + (f" (use {mode.hints[flag.name]})" if flag.name in mode.hints else ""))


def check_values(args, mode_name):
    """CHECKS in order, on args with its defaults filled in: the first broken rule is a CLIError."""
    for check in CHECKS:
        if (check.modes is None or mode_name in check.modes) and check.broken(args):
            raise CLIError(check.message.format(**vars(args)))


def decoding_options(args):
    """The decoding flags as generate's keyword arguments, checked by decoding.Decoding."""
    options = dict(
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
    try:
        Decoding(**options)
    except ValueError as e:
        raise CLIError(str(e)) from None
    return options


# a mode's own values: the prepare of its row in MODES


def parse_codes(args):
    """--codes "12 7 301 5" (or commas) -> args.code_ids."""
    try:
        args.code_ids = [int(x) for x in args.codes.replace(",", " ").split()]
    except ValueError:
        raise CLIError(f'--codes {args.codes!r}: expected integers separated by spaces, e.g. "12 7 301 5"') from None
    if not args.code_ids:
        raise CLIError("--codes is empty: give one code index per latent layer")


def transfer_defaults(args):
    args.strength = generate.DEFAULT_STRENGTH if args.strength is None else args.strength
    args.direction = args.direction or generate.DEFAULT_DIRECTION


# ----------------------------------------------------------------------------- once the model has loaded


def check_model_flags(model, args):
    """The flags that depend on the checkpoint: --component, --prior fitted, --spread."""
    c = model.config
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
