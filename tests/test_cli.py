"""univae.cli, the one flag-error parser of the commands: a bad flag raises CLIError, and each command
prints it as one line, `PROG: error: ... (see --help)`, with exit status 2 (argparse's own would print
its usage block and exit)."""

import importlib
import os
import sys

import pytest

from univae.cli import CLIError, Parser

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def test_a_bad_flag_raises_one_line():
    p = Parser(prog="x")
    p.add_argument("--n", type=int)
    with pytest.raises(CLIError) as e:
        p.parse_args(["--n", "a"])
    assert str(e.value) == "argument --n: invalid int value: 'a' (see --help)"


@pytest.mark.parametrize(
    "module, prog",
    [
        ("sample", "sample.py"),
        ("univae.app", "univae.app"),
        ("univae.prior", "univae.prior"),
        ("univae.evaluate", "univae.evaluate"),
    ],
)
def test_each_command_prints_a_bad_flag_as_one_line(module, prog, capsys):
    if module == "univae.app":
        pytest.importorskip("fastapi")
    main = importlib.import_module(module).main
    assert main(["--checkpoint", "nowhere", "--bogus"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"{prog}: error: unrecognized arguments: --bogus (see --help)\n"


@pytest.mark.parametrize("module, prog", [("train", "train.py"), ("univae.pretrain", "univae.pretrain")])
def test_each_run_command_exits_on_a_bad_flag_with_one_line(module, prog, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as e:
        main(["--bogus"])
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"{prog}: error: unrecognized arguments: --bogus (see --help)\n"
