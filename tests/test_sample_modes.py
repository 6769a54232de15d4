"""univae.sample_modes' table and univae.sample_flags' rules, checked without a model: which flags
select each mode, which optional flags each mode takes (any other is refused with its message), the
rules on flag values, and that the tables agree with sample.py's parser and its usage text. The
expectations are written out here, not derived from the tables."""

import os
import sys

import pytest

from univae import generate, sample_flags, sample_modes
from univae.cli import CLIError

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import sample  # noqa: E402  (the CLI at the repo root)

MODES = {"prior", "transfer", "edit", "reconstruct", "interpolate", "analogy", "augment", "codes"}
# each way to reach a mode, as sample.py's usage shows it
SELECTED = [
    ([], "prior"),
    (["--reconstruct", "a", "b"], "reconstruct"),
    (["--input", "f"], "reconstruct"),
    (["--text", "a", "--replace-dims", "0:4"], "edit"),
    (["--input", "f", "--replace-dims", "0:4"], "edit"),
    (["--replace-dims", "0:4"], "edit"),
    (["--interpolate", "a", "b"], "interpolate"),
    (["--analogy", "a", "b", "c"], "analogy"),
    (["--augment", "f"], "augment"),
    (["--codes", "1 2"], "codes"),
    (["--transfer", "f", "t", "--input", "f"], "transfer"),
]
MODE_ARGV = {mode: argv for argv, mode in reversed(SELECTED)}  # one way to each mode
# the optional flags: an example, the modes that take it, and the error anywhere else
OPTIONAL = {
    "--strength 0.5": ({"transfer"}, "--strength goes with --transfer"),
    "--direction mean": ({"transfer"}, "--direction goes with --transfer"),
    "--out x.jsonl": ({"augment"}, "--out goes with --augment"),
    "--component 0": (
        {"prior", "edit"},
        "--component chooses the mixture component of prior draws: it goes with prior sampling or --replace-dims",
    ),
    "--prior uniform": (
        {"prior", "edit"},
        "--prior chooses what prior draws come from: it goes with prior sampling or --replace-dims",
    ),
    "--prior-spread 0.5": (
        {"prior"},
        "--prior-spread 0.5: a positive scale of the fitted prior's draws, for prior sampling "
        "(no --text/--input/--augment...)",
    ),
    "--n 2": ({"prior", "edit", "analogy", "augment", "codes"}, "--n does not apply to --{mode}"),
    "--candidates 2": ({"augment"}, "--candidates goes with --augment"),
    "--keep-start 0.5": ({"augment"}, "--keep-start goes with --augment"),
    "--with-z --json": (MODES - {"augment"}, "--with-z needs --json and is not available with --augment"),
}
TRANSFER_ONLY = "--transfer does not go with {}: it moves the lines of --input FILE"
EDIT_ONLY = "--replace-dims goes with --text, --input, or alone (held-out sentences of the checkpoint's corpus)"


def mode_of(argv):
    return sample_modes.check_args(sample.build_parser().parse_args(argv)).name


def error_of(argv):
    with pytest.raises(CLIError) as e:
        mode_of(argv)
    return str(e.value)


@pytest.mark.parametrize("argv, mode", SELECTED)
def test_each_mode_is_selected_by_its_flags(argv, mode):
    assert mode_of(argv) == mode


def test_every_mode_is_reached_from_the_flags_its_usage_shows():
    assert set(sample_modes.MODE) == MODES == set(MODE_ARGV)
    usage = sample.__doc__.split("\n\n")[1]  # the command lines at the top of --help
    for mode in sample_modes.MODES:
        for flag in mode.selected_by:
            option = "--" + flag.replace("_", "-")
            assert option in usage, option
            assert any(option in argv and m == mode.name for argv, m in SELECTED), option


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("flag", list(OPTIONAL))
def test_an_optional_flag_goes_with_its_modes_only(flag, mode):
    modes, message = OPTIONAL[flag]
    argv = MODE_ARGV[mode] + flag.split()
    if mode in modes:
        assert mode_of(argv) == mode
    else:
        hint = " (use --steps)" if (flag, mode) == ("--n 2", "interpolate") else ""
        assert error_of(argv) == message.format(mode=mode) + hint


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--transfer", "f", "t"], "--transfer needs --input FILE: the sentences to move, one per line"),
        (["--transfer", "f", "t", "--reconstruct", "a"], TRANSFER_ONLY.format("--reconstruct")),
        (["--transfer", "f", "t", "--text", "a"], TRANSFER_ONLY.format("--text")),
        (["--transfer", "f", "t", "--interpolate", "a", "b"], TRANSFER_ONLY.format("--interpolate")),
        (["--transfer", "f", "t", "--analogy", "a", "b", "c"], TRANSFER_ONLY.format("--analogy")),
        (["--transfer", "f", "t", "--augment", "f"], TRANSFER_ONLY.format("--augment")),
        (["--transfer", "f", "t", "--codes", "1"], TRANSFER_ONLY.format("--codes")),
        (["--transfer", "f", "t", "--input", "f", "--replace-dims", "0:4"], TRANSFER_ONLY.format("--replace-dims")),
        (["--text", "a"], "--text needs --replace-dims RANGES (e.g. 0:32) saying which latent dims to redraw"),
        (["--replace-dims", "0:4", "--reconstruct", "a"], EDIT_ONLY),
        (["--replace-dims", "0:4", "--interpolate", "a", "b"], EDIT_ONLY),
        (["--replace-dims", "0:4", "--analogy", "a", "b", "c"], EDIT_ONLY),
        (["--replace-dims", "0:4", "--augment", "f"], EDIT_ONLY),
        (["--replace-dims", "0:4", "--codes", "1"], EDIT_ONLY),
    ],
)
def test_mode_flags_that_do_not_go_together(argv, message):
    assert error_of(argv) == message


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--augment", "f", "--keep-start", "1.5"], "--keep-start must be in [0, 1], got 1.5"),
        (
            ["--augment", "f", "--keep-start", "0.5", "--beam-size", "2"],
            "--keep-start forces a prefix, which beam search cannot: use --keep-start 0 with --beam-size",
        ),
        (["--augment", "f", "--candidates", "0"], "--candidates must be at least 1, got 0"),
        (
            ["--prior-spread", "0"],
            "--prior-spread 0.0: a positive scale of the fitted prior's draws, for prior sampling "
            "(no --text/--input/--augment...)",
        ),
        (["--with-z"], "--with-z needs --json and is not available with --augment"),
        (["--interpolate", "a", " "], "empty text: every input sentence needs at least one character"),
        (["--analogy", "a", "b", ""], "empty text: every input sentence needs at least one character"),
        (["--codes", ","], "--codes is empty: give one code index per latent layer"),
    ],
)
def test_flag_values(argv, message):
    assert error_of(argv) == message


def test_defaults_filled_in():
    args = sample.build_parser().parse_args(["--transfer", "f", "t", "--input", "f"])
    sample_modes.check_args(args)
    assert (args.strength, args.direction, args.n, args.prior) == (
        generate.DEFAULT_STRENGTH,
        generate.DEFAULT_DIRECTION,
        1,
        "auto",
    )
    args = sample.build_parser().parse_args(["--codes", "3,4 5", "--steps", "1"])  # --steps: interpolation only
    sample_modes.check_args(args)
    assert args.code_ids == [3, 4, 5] and args.n == 1
    assert sample_modes.DEFAULT_N == {"prior": 10, "edit": 6, "analogy": 1, "augment": 4, "codes": 1}


def test_the_tables_agree_with_the_parser():
    parser = sample.build_parser()
    dests = vars(parser.parse_args([]))
    for flag in sample_flags.FLAGS:  # "given" means "not the parser's default"
        assert flag.name in dests and parser.get_default(flag.name) == flag.default, flag.name
    named = {f.name for f in sample_flags.FLAGS}
    for mode in sample_modes.MODES:
        assert set(mode.selected_by) <= set(mode.takes) <= named, mode.name
        assert set(mode.needs) | set(mode.hints) <= named, mode.name
        assert ("n" in mode.takes) == (mode.default_n is not None), mode.name
