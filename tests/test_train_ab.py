"""bench/train_ab.py against a commit whose train.py takes fewer flags: a small git repository
made here (CI clones may be shallow), its train.py a fake that writes metrics.jsonl at once."""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))  # train_ab imports bench/common
_spec = importlib.util.spec_from_file_location("train_ab", os.path.join(ROOT, "bench", "train_ab.py"))
train_ab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_ab)

OLD_FLAGS = {"--out", "--time-budget"}
NEW_FLAGS = OLD_FLAGS | {
    "--max-steps",
    "--prior-components",
    "--eval-sentences",
    "--eval-every",
    "--save-every",
    "--overwrite",
}

# A fake train.py: argparse with the given flags, then metrics.jsonl rows in the given format.
FAKE = """\
import argparse, json, os
p = argparse.ArgumentParser(description="Train (fake).")
p.add_argument("--out", default="runs/default")
p.add_argument("--time-budget", type=float, default=0.0, help="seconds (0: none, see --max-steps)")
{more}
a = p.parse_args()
os.makedirs(a.out, exist_ok=True)
with open(os.path.join(a.out, "metrics.jsonl"), "w") as f:
    for step in (20, 40, 60):
        f.write(json.dumps({{"step": step, "ce": 3.0 - step / 100, {train_extra}}}) + "\\n")
    f.write(json.dumps({{"step": 60, "split": "val", "ce": 2.5, {val_extra}}}) + "\\n")
"""
OLD = FAKE.format(more="", train_extra="", val_extra="")
NEW = FAKE.format(
    more="\n".join(
        [
            'p.add_argument("--max-steps", type=int, default=0)',
            'p.add_argument("--prior-components", type=int, default=8)',
            'p.add_argument("--eval-sentences", type=int, default=200)',
            'p.add_argument("--eval-every", type=int, default=500)',
            'p.add_argument("--save-every", type=int, default=1000)',
            'p.add_argument("--overwrite", action="store_true")',
        ]
    ),
    train_extra='"tokens_per_s": 1000.0 + step',
    val_extra='"char_f1": 0.5',
)


def git(repo, *args):
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """-> (repository path, the old commit): old train.py takes --out and --time-budget only, the
    working tree's (the new commit's) also --max-steps, --prior-components and the rest."""
    path = tmp_path_factory.mktemp("repo")
    git(path, "init", "-q")
    (path / "train.py").write_text(OLD)
    git(path, "add", "train.py")
    git(path, "commit", "-q", "-m", "old")
    old = git(path, "rev-parse", "--short", "HEAD")
    (path / "train.py").write_text(NEW)
    git(path, "commit", "-q", "-am", "new")
    return path, old


def test_supported_flags_are_each_commits_own(repo, tmp_path):
    path, old = repo
    tree = train_ab.checkout(str(path), old, str(tmp_path))
    assert train_ab.supported_flags(tree, old) == OLD_FLAGS  # not the --max-steps its help text names
    assert train_ab.supported_flags(str(path)) == NEW_FLAGS


def test_old_commands_only_hold_flags_it_takes(repo, tmp_path):
    path, old = repo
    tree = train_ab.checkout(str(path), old, str(tmp_path))
    cmd, dropped = train_ab.train_command(tree, "out", OLD_FLAGS, ["--time-budget", "5"], old)
    assert cmd[1:] == [os.path.join(tree, "train.py"), "--out", "out", "--time-budget", "5"]
    assert dropped == ["--prior-components", "--eval-sentences", "--eval-every", "--save-every"]
    cmd, dropped = train_ab.train_command(str(path), "out", NEW_FLAGS, ["--time-budget", "5"])
    assert {"--prior-components", "--eval-sentences", "--eval-every", "--save-every"} <= set(cmd) and not dropped


def test_bench_runs_against_the_old_commit(repo, capsys):
    path, old = repo
    train_ab.main(["--baseline", old, "--repo", str(path), "--rounds", "1", "--budget", "1"])
    out = capsys.readouterr().out
    assert f"# A ({old}) runs without --prior-components, --eval-sentences, --eval-every, --save-every" in out
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in out.splitlines()
        if line.startswith("|")
    }
    # the old format: no tokens_per_s, no char_f1; n/a in the table, not a crash
    assert rows["A1"][:5] == ["60", "n/a", "n/a", "2.500", "n/a"]
    assert rows["B1"][:5] == ["60", "1050", "1050", "2.500", "0.500"]
    assert rows["B / A (medians over rounds)"][:5] == ["1.00x", "n/a", "n/a", "+0.000", "n/a"]


def test_steps_against_a_commit_without_max_steps_names_both(repo):
    path, old = repo
    with pytest.raises(SystemExit) as e:
        train_ab.main(["--baseline", old, "--repo", str(path), "--rounds", "1", "--steps", "5"])
    assert "--max-steps" in str(e.value) and old in str(e.value)


def test_a_user_flag_the_old_commit_lacks_is_an_error(repo):
    path, old = repo
    with pytest.raises(SystemExit) as e:
        train_ab.main(["--baseline", old, "--repo", str(path), "--budget", "1", "--args", "--prior-components 2"])
    assert "--prior-components" in str(e.value) and old in str(e.value)


def test_side_only_flags_go_to_their_side_alone(repo, capsys):
    path, old = repo
    train_ab.main(
        ["--baseline", old, "--repo", str(path), "--rounds", "1", "--budget", "1", "--b-args=--prior-components 2"]
    )
    out = capsys.readouterr().out
    a_line, b_line = (next(ln for ln in out.splitlines() if ln.startswith(f"# train.py {n} ")) for n in "AB")
    assert a_line == f"# train.py A = {old}: --time-budget 1.0"  # --b-args are B's alone
    assert b_line.endswith("--time-budget 1.0 --prior-components 2")


def test_a_run_shorter_than_a_logging_window_still_has_steps():
    s = train_ab.summary([{"step": 7, "split": "val", "ce": 8.0}])
    assert (s["steps"], s["tokens_per_s"], s["median_tokens_per_s"], s["val_ce"], s["char_f1"]) == (
        7,
        None,
        None,
        8.0,
        None,
    )
    assert train_ab.summary([])["steps"] is None
