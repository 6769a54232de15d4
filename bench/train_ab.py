"""The default run's training speed, this checkout against another commit, side by side.

    python bench/train_ab.py --baseline c6c7208                 # 2 rounds of A B, 90 s budget each
    python bench/train_ab.py --baseline c6c7208 --steps 300     # same steps instead: equal math?

Each round trains `python train.py` (the default recipe, plus the given --args) once from the
baseline commit (A, a `git archive` copy in a temporary directory) and once from this checkout
(B), in turn, each alone on the machine, for the same --time-budget. Per run it reads OUT/
metrics.jsonl: steps, tokens/s (real tokens of both halves per second of training, train.py's
`tokens_per_s`, logged per 20-step window; the first window dropped as warm-up) as the run's mean,
the harmonic mean over windows (what tokens / seconds gives when windows hold equal tokens), and
as the median window, the final val CE and greedy char-F1 (train.py's last evaluation), and the
process's peak resident memory (wait4's ru_maxrss, so older commits get it too). The
two differ when a run has a tail of slow windows (c6c7208 in 240 s rounds, 2026-12-02: median
11.5k, mean ~8.4k tokens/s); for a time budget, the mean and the steps are what count. The table
gives each run, then B / A of the medians over rounds.

With --steps N both train exactly N steps instead (same lr schedule, same batches): their
per-step training CE should then agree up to float noise if B computes what A computes; the
table adds the largest CE difference over the logged steps.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import table  # noqa: E402 (sets sys.path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def checkout(rev, into):
    """A copy of commit `rev`'s tree in `into` (no .git): what that commit's train.py runs."""
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return into


def train(tree, out, args):
    """Run tree's train.py; -> (wall seconds, metrics rows)."""
    env = {**os.environ, "PYTHONPATH": tree}
    cmd = [
        sys.executable,
        os.path.join(tree, "train.py"),
        "--out",
        out,
        "--overwrite",
        "--prior-components",
        "0",
        "--eval-sentences",
        "200",
        *args,
    ]
    t0 = time.time()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=log, stderr=log, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # wait4, not wait: the child's own peak resident size
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            log.seek(0)
            sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{log.read()[-2000:]}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return time.time() - t0, rows, usage.ru_maxrss / 1024  # kB on Linux


def summary(rows):
    train_rows = [r for r in rows if "tokens_per_s" in r]
    val = [r for r in rows if r.get("split") == "val"][-1]
    return {
        "steps": train_rows[-1]["step"] if train_rows else 0,
        "tokens_per_s": statistics.harmonic_mean([r["tokens_per_s"] for r in train_rows[1:]]),
        "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in train_rows[1:]),
        "val_ce": val["ce"],
        "char_f1": val["char_f1"],
        "ce_by_step": {r["step"]: r["ce"] for r in train_rows},
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, help="git commit A (B is this checkout)")
    p.add_argument("--budget", type=float, default=90, help="--time-budget of every run, seconds")
    p.add_argument("--steps", type=int, default=0, help="train exactly this many steps instead of a time budget")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--args", default="", help="more train.py flags for both, e.g. '--preset small --batch-size 64'")
    a = p.parse_args()
    limit = ["--max-steps", str(a.steps)] if a.steps else ["--time-budget", str(a.budget)]
    args = limit + ["--eval-every", "100000", "--save-every", "100000", *a.args.split()]
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "?")
    print(
        f"# train.py A = {a.baseline}, B = this checkout; {' '.join(args)}\n# {cpu}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "A"))
        trees = {"A": checkout(a.baseline, os.path.join(tmp, "A")), "B": ROOT}
        runs = {"A": [], "B": []}
        for r in range(a.rounds):
            for name in ("A", "B"):
                wall, rows, peak_rss = train(trees[name], os.path.join(tmp, f"out-{name}"), args)
                runs[name].append({**summary(rows), "peak_rss_mb": peak_rss})
                s = runs[name][-1]
                print(
                    f"round {r + 1} {name}: {s['steps']} steps, {s['tokens_per_s']:.0f} tokens/s (median window "
                    f"{s['median_tokens_per_s']:.0f}), val CE {s['val_ce']:.3f}, "
                    f"char-F1 {s['char_f1']:.3f}, peak RSS {s['peak_rss_mb']:.0f} MB ({wall:.0f} s wall)",
                    flush=True,
                )
    head = ["run", "steps", "tokens/s (mean)", "tokens/s (median window)", "val CE", "val char-F1", "peak RSS MB"]
    keys = ("steps", "tokens_per_s", "median_tokens_per_s", "val_ce", "char_f1", "peak_rss_mb")
    rows = [
        [
            f"{n}{i + 1}",
            s["steps"],
            f"{s['tokens_per_s']:.0f}",
            f"{s['median_tokens_per_s']:.0f}",
            f"{s['val_ce']:.3f}",
            f"{s['char_f1']:.3f}",
            f"{s['peak_rss_mb']:.0f}",
        ]
        for i in range(a.rounds)
        for n in ("A", "B")
        for s in [runs[n][i]]
    ]
    med = {n: {k: statistics.median(s[k] for s in runs[n]) for k in keys} for n in runs}
    rows.append(
        [
            "B / A (medians over rounds)",
            f"{med['B']['steps'] / med['A']['steps']:.2f}x",
            f"{med['B']['tokens_per_s'] / med['A']['tokens_per_s']:.2f}x",
            f"{med['B']['median_tokens_per_s'] / med['A']['median_tokens_per_s']:.2f}x",
            f"{med['B']['val_ce'] - med['A']['val_ce']:+.3f}",
            f"{med['B']['char_f1'] - med['A']['char_f1']:+.3f}",
            f"{med['B']['peak_rss_mb'] / med['A']['peak_rss_mb']:.2f}x",
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
        print(f"\nlargest |CE_B - CE_A| at a logged step, same steps and batches: {max(diffs):.4f}")


if __name__ == "__main__":
    main()
