"""One-line command-line errors, shared by the commands (train.py, sample.py, `python -m
univae.app`, `.evaluate`, `.prior`, `.pretrain`): a bad flag or a user mistake is one line on stderr, `PROG:
error: ...`, and exit status 2, instead of argparse's usage block; a run that fails after it started
(a full disk, non-finite weights) is one line too, with status 1."""

import argparse
import sys


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse whose flag errors raise CLIError, for the command's main() to print as one line."""

    def error(self, message):  # argparse prints usage too; one line is enough
        raise CLIError(f"{message} (see --help)")


def report(prog, error):
    """Print `error` as `PROG: error: ...` on stderr; -> the exit status, 2."""
    print(f"{prog}: error: {error}", file=sys.stderr)
    return 2


def fail(prog, error, code=2):
    """Print `error` as one line (report) and exit with `code`: 2 for a user error, 1 for a failed run."""
    report(prog, error)
    sys.exit(code)
