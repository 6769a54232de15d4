"""The README and docs/ as a newcomer meets them: every relative link resolves, and every
`python train.py ...`, `python sample.py ...` and `python -m univae....` line of the README parses
with today's flags (and sample.py's rules about which flags go together)."""

import glob
import os
import re
import shlex

import pytest

import sample
import train
from univae import app, evaluate, pretrain, prior

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS = [
    README,
    *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))),
    os.path.join(ROOT, "univae", "backbones", "zh-small", "README.md"),
]
PARSERS = {
    "train.py": train.parse_args,
    "sample.py": lambda argv: sample.check_args(sample.build_parser().parse_args(argv)),
    "univae.pretrain": pretrain.parse_args,
    "univae.evaluate": evaluate.parse_args,
    "univae.prior": lambda argv: prior.build_parser().parse_args(argv),
    "univae.app": lambda argv: app.build_parser().parse_args(argv),
}
COMMAND = re.compile(r"python (train\.py|sample\.py|-m univae\.\w+)([^#&\n]*)")


def readme_commands():
    """(command, its arguments) for each command line in the README's fenced code blocks."""
    text = open(README, encoding="utf-8").read()
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", text, flags=re.S))
    return [(m.group(1).removeprefix("-m "), m.group(2).strip()) for m in COMMAND.finditer(blocks)]


def test_the_readme_shows_each_command():
    shown = {name for name, _ in readme_commands()}
    assert shown == set(PARSERS), (
        f"README commands without a parser here, or parsers never shown: {shown ^ set(PARSERS)}"
    )


@pytest.mark.parametrize("name, args", readme_commands())
def test_every_readme_command_parses_with_todays_flags(name, args):
    PARSERS[name](shlex.split(args))


@pytest.mark.parametrize("path", DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_relative_link_resolves(path):
    text = open(path, encoding="utf-8").read()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    missing = [t for t in relative if not os.path.exists(os.path.join(os.path.dirname(path), t))]
    assert not missing, f"{os.path.relpath(path, ROOT)} links to missing files: {missing}"
