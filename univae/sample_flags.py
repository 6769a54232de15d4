"""sample.py's flag rules as data, and the checks that apply them.

FLAGS says, in the order they are checked, what the error is when a flag is given to a mode that does
not take it; CHECKS are the rules on flag values. Before the model loads, univae.sample_modes.check_args
applies them to the mode's row (check_flags, check_values) and turns the decoding flags into generate's
arguments; check_model_flags applies the rules that depend on the checkpoint. A broken rule is a
CLIError, in the words sample.py prints.
"""

import dataclasses
from typing import Callable

from univae import generate
from univae.cli import CLIError
from univae.decoding import Decoding

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
    args.direction = args.direction or "probe"


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
