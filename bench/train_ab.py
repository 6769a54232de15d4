"""The default run's training speed, this checkout against another commit, side by side.

    python bench/train_ab.py --baseline 1257cf3                 # 2 rounds of A B, 90 s budget each
    python bench/train_ab.py --baseline 1257cf3 --steps 300     # same steps instead: equal math?
    python bench/train_ab.py --baseline 1257cf3 --b-args=--from-scratch   # a recipe one side names differently

Each round trains `python train.py` (the default recipe, plus the given --args) once from the
baseline commit (A, a `git archive` copy in a temporary directory) and once from this checkout
(B), in turn, each alone on the machine, for the same --time-budget, each into a fresh --out. Per
run it reads OUT/metrics.jsonl: steps, tokens/s (real tokens of both halves per second of
training, train.py's `tokens_per_s`, logged per 20-step window; the first window dropped as
warm-up) as the run's mean, the harmonic mean over windows (what tokens / seconds gives when
windows hold equal tokens), and as the median window, the final val CE and greedy char-F1
(train.py's last evaluation), and the process's peak resident memory (wait4's ru_maxrss, so older
commits get it too). The two tokens/s differ when a run has a tail of slow windows; for a time
budget, the mean and the steps are what count. A value a commit's metrics.jsonl lacks shows as
n/a. The table gives each run, then B / A of the medians over rounds.

Older commits' train.py take fewer flags: each tree's own `train.py --help` says which. The
limit (--time-budget, or --max-steps with --steps) and every flag in --args must be there, else
the bench stops before training; the flags that only keep evaluation, checkpoints and the prior
fit out of the timing are left out where missing, and the header says which.

With --steps N both train exactly N steps instead (same lr schedule, same batches): their
per-step training CE should then agree up to float noise if B computes what A computes; the
table adds the largest CE difference over the logged steps.
"""

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from common import table  # noqa: E402 (sets sys.path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Flags that keep what is not training out of the timing: no mid-run evaluation or checkpoint, a
# short final evaluation, no prior fit. A tree whose train.py lacks one runs without it.
OPTIONAL = [
    ("--prior-components", "0"),
    ("--eval-sentences", "200"),
    ("--eval-every", "100000"),
    ("--save-every", "100000"),
]


def checkout(repo, rev, into):
    """A copy of commit `rev`'s tree in `into` (no .git): what that commit's train.py runs."""
    archive = subprocess.run(["git", "-C", repo, "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return into


def supported_flags(tree, name="this checkout"):
    """The long flags tree's train.py takes: those its `--help` usage lists (the options' own lines
    may wrap mid-sentence onto a `--flag` named in a help text; the usage names only real ones)."""
    res = subprocess.run(
        [sys.executable, "train.py", "--help"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": tree},
        capture_output=True,
        text=True,
    )
    if res.returncode:
        sys.exit(f"{name}: python train.py --help failed ({res.returncode}):\n{res.stderr[-2000:]}")
    usage = res.stdout.split("\n\n", 1)[0]
    return set(re.findall(r"(?<![\w-])--[A-Za-z0-9][\w-]*", usage))


def train_command(tree, out, flags, args, name="this checkout"):
    """tree's train.py command line for `args` (the limit, then the user's --args), given the flags
    it takes -> (command, the OPTIONAL flags left out). Exits when it lacks a flag of `args`."""
    for tok in ["--out", *args]:
        flag = tok.split("=", 1)[0]
        if flag.startswith("--") and flag not in flags:
            sys.exit(f"train.py of {name} has no {flag} flag (not in its --help)")
    dropped = [flag for flag, _ in OPTIONAL if flag not in flags]
    kept = [tok for flag, value in OPTIONAL if flag in flags for tok in (flag, value)]
    return [sys.executable, os.path.join(tree, "train.py"), "--out", out, *kept, *args], dropped


def train(tree, out, cmd):
    """Run cmd (tree's train.py, writing to out); -> (wall seconds, metrics rows, peak RSS MB)."""
    t0 = time.time()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=tree, env={**os.environ, "PYTHONPATH": tree}, stdout=log, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)  # wait4, not wait: the child's own peak resident size
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            log.seek(0)
            sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{log.read()[-2000:]}")
    try:
        with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        rows = []
    return time.time() - t0, rows, usage.ru_maxrss / 1024  # kB on Linux


def summary(rows):
    """A run's numbers from its metrics rows; None for what they lack (older formats)."""
    train_rows = [r for r in rows if r.get("split", "train") == "train" and "step" in r]
    windows = [r["tokens_per_s"] for r in train_rows if "tokens_per_s" in r][1:]  # the first is warm-up
    val = ([r for r in rows if r.get("split") == "val"] or [{}])[-1]
    return {
        # the largest step of any row: the final evaluation's when there is one, as a run shorter than one
        # logging window has no train row
        "steps": max((r["step"] for r in rows if "step" in r), default=None),
        "tokens_per_s": statistics.harmonic_mean(windows) if windows else None,
        "median_tokens_per_s": statistics.median(windows) if windows else None,
        "val_ce": val.get("ce"),
        "char_f1": val.get("char_f1"),
        "ce_by_step": {r["step"]: r["ce"] for r in train_rows if "ce" in r},
    }


def fmt(value, spec):
    return "n/a" if value is None else format(value, spec)


def ratio(b, a, spec):
    return "n/a" if b is None or not a else format(b / a, spec) + "x"


def diff(b, a, spec):
    return "n/a" if b is None or a is None else format(b - a, spec)


def median(values):
    """Median over the rounds that have the value; None when none has."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, help="git commit A (B is this checkout)")
    p.add_argument("--budget", type=float, default=90, help="--time-budget of every run, seconds")
    p.add_argument("--steps", type=int, default=0, help="train exactly this many steps instead of a time budget")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--args", default="", help="more train.py flags for both, e.g. '--preset small --batch-size 64'")
    p.add_argument("--a-args", default="", help="more train.py flags for A only (after --args)")
    p.add_argument("--b-args", default="", help="more train.py flags for B only (after --args)")
    p.add_argument("--repo", default=ROOT, help="the repository: A comes from its history, B is its working tree")
    a = p.parse_args(argv)
    limit = ["--max-steps", str(a.steps)] if a.steps else ["--time-budget", str(a.budget)]
    args = {n: limit + shlex.split(a.args) + shlex.split(extra) for n, extra in (("A", a.a_args), ("B", a.b_args))}
    names = {"A": a.baseline, "B": "this checkout" if os.path.abspath(a.repo) == ROOT else a.repo}
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "A"))
        trees = {"A": checkout(a.repo, a.baseline, os.path.join(tmp, "A")), "B": a.repo}
        # Every tree's command before any training: a flag a tree lacks stops the bench at once.
        flags = {n: supported_flags(trees[n], names[n]) for n in trees}
        commands, dropped = {}, {}
        for n in trees:
            commands[n], dropped[n] = train_command(trees[n], "OUT", flags[n], args[n], names[n])
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "?")
        print(f"# train.py A = {names['A']}: {shlex.join(commands['A'][4:])}")
        print(f"# train.py B = {names['B']}: {shlex.join(commands['B'][4:])}")
        for n in trees:
            if dropped[n]:
                print(f"# {n} ({names[n]}) runs without {', '.join(dropped[n])}: its train.py lacks them")
        print(f"# {cpu}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}\n")
        runs = {"A": [], "B": []}
        for r in range(a.rounds):
            for n in ("A", "B"):
                out = os.path.join(tmp, f"out-{n}{r + 1}")  # fresh per run: no --overwrite needed
                wall, rows, peak_rss = train(
                    trees[n], out, train_command(trees[n], out, flags[n], args[n], names[n])[0]
                )
                runs[n].append({**summary(rows), "peak_rss_mb": peak_rss})
                s = runs[n][-1]
                print(
                    f"round {r + 1} {n}: {fmt(s['steps'], 'd')} steps, {fmt(s['tokens_per_s'], '.0f')} tokens/s "
                    f"(median window {fmt(s['median_tokens_per_s'], '.0f')}), val CE {fmt(s['val_ce'], '.3f')}, "
                    f"char-F1 {fmt(s['char_f1'], '.3f')}, peak RSS {s['peak_rss_mb']:.0f} MB ({wall:.0f} s wall)",
                    flush=True,
                )
    head = ["run", "steps", "tokens/s (mean)", "tokens/s (median window)", "val CE", "val char-F1", "peak RSS MB"]
    keys = ("steps", "tokens_per_s", "median_tokens_per_s", "val_ce", "char_f1", "peak_rss_mb")
    rows = [
        [
            f"{n}{i + 1}",
            fmt(s["steps"], "d"),
            fmt(s["tokens_per_s"], ".0f"),
            fmt(s["median_tokens_per_s"], ".0f"),
            fmt(s["val_ce"], ".3f"),
            fmt(s["char_f1"], ".3f"),
            f"{s['peak_rss_mb']:.0f}",
        ]
        for i in range(a.rounds)
        for n in ("A", "B")
        for s in [runs[n][i]]
    ]
    med = {n: {k: median(s[k] for s in runs[n]) for k in keys} for n in runs}
    mb, ma = med["B"], med["A"]
    rows.append(
        [
            "B / A (medians over rounds)",
            ratio(mb["steps"], ma["steps"], ".2f"),
            ratio(mb["tokens_per_s"], ma["tokens_per_s"], ".2f"),
            ratio(mb["median_tokens_per_s"], ma["median_tokens_per_s"], ".2f"),
            diff(mb["val_ce"], ma["val_ce"], "+.3f"),
            diff(mb["char_f1"], ma["char_f1"], "+.3f"),
            ratio(mb["peak_rss_mb"], ma["peak_rss_mb"], ".2f"),
        ]
    )
    print("\n" + table(head, rows))
    if a.steps:
        diffs = [
            abs(runs["A"][i]["ce_by_step"][k] - runs["B"][i]["ce_by_step"][k])
            for i in range(a.rounds)
            for k in runs["A"][i]["ce_by_step"]
            if k in runs["B"][i]["ce_by_step"]
        ]
        largest = f"{max(diffs):.4f}" if diffs else "n/a (no common logged step)"
        print(f"\nlargest |CE_B - CE_A| at a logged step, same steps and batches: {largest}")


if __name__ == "__main__":
    main()
