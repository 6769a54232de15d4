"""The pretrained start against from scratch, side by side: each recipe's `python train.py` run for
the same wall time, one after another (never sharing the cores), for each seed; then
`python -m univae.evaluate` on each (held-out reviews test sentences) and one table.

    python bench/finetune_ab.py                                  # default vs --from-scratch, seeds 0 1
    python bench/finetune_ab.py --seeds 0 1 2 --budget 480 --recipe lr1e3="--lr 1e-3"
    python bench/finetune_ab.py --steps 580 --baselines default --recipe w50="--warmup 50"
    python bench/finetune_ab.py --table runs/ab                  # only print the table of finished runs

A recipe is NAME="flags added to python train.py"; the baselines `default` (no flags) and `scratch`
(--from-scratch) run too unless --baselines names fewer. --steps N runs every recipe for N steps
instead of a wall-clock budget (give the steps the budget makes on quiet cores): the results then do
not depend on what else shares the cores, so such runs may overlap other work. Columns: steps made, val CE at the last common step (equal steps)
and at the end (equal wall time), and the report's headline: greedy exact / char-F1, content and
pattern kept when the lowest vs the top latent layer is redrawn (lowest - top), the fitted prior's
first-character plausibility over real sentences', distinct-2 of prior samples and of real ones.
"""

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL_FLAGS = ["--n-samples", "400", "--iw-sentences", "20", "--iw-samples", "20", "--interp-paths", "5"]


def run(cmd, log):
    with open(log, "w", encoding="utf-8") as f:
        subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=True)


def val_rows(out):
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        return [r for r in map(json.loads, f) if r.get("split") == "val"]


def summary(out):
    rows = val_rows(out)
    with open(os.path.join(out, "last", "eval", "report.json"), encoding="utf-8") as f:
        rep = json.load(f)
    greedy, lvt, prior = rep["reconstruction"]["greedy"], rep["control"]["lowest_vs_top"], rep["prior"]
    fitted = prior.get("fitted") or prior["uniform"]
    return {
        "steps": rows[-1]["step"],
        "val_ce": {r["step"]: r["ce"] for r in rows},
        "exact": greedy["exact_match"],
        "char_f1": greedy["char_f1"],
        "content_diff": lvt["content_kept"]["diff"],
        "pattern_diff": lvt["pattern_kept"]["diff"],
        "first_char_ratio": fitted["first_char_ratio"],
        "distinct_2": fitted["distinct_2"],
        "data_distinct_2": prior["data_distinct_2"],
    }


def table(results):
    common = min(
        max(s for s in r["val_ce"] if s <= min(x["steps"] for x in results.values())) for r in results.values()
    )
    print(
        f"| run | steps | val CE @ {common} | val CE at the end | exact | char-F1 | content kept, lowest − top | "
        "pattern kept, lowest − top | first char ×real | distinct-2 (real) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['steps']} | {r['val_ce'].get(common, float('nan')):.3f} | {r['val_ce'][r['steps']]:.3f} | "
            f"{r['exact']:.3f} | {r['char_f1']:.3f} | {r['content_diff']:+.3f} | {r['pattern_diff']:+.3f} | "
            f"{r['first_char_ratio']:.2f} | {r['distinct_2']:.3f} ({r['data_distinct_2']:.3f}) |"
        )
    by_recipe = {}
    for name, r in results.items():
        by_recipe.setdefault(name.rsplit("-s", 1)[0], []).append(r)
    print("\nmeans over seeds:")
    for recipe, rs in by_recipe.items():
        mean = lambda k: statistics.mean(r[k] for r in rs)
        print(
            f"  {recipe} ({len(rs)} seeds): steps {mean('steps'):.0f}, exact {mean('exact'):.3f}, char-F1 "
            f"{mean('char_f1'):.3f}, content diff {mean('content_diff'):+.3f}, pattern diff {mean('pattern_diff'):+.3f}, "
            f"first char {mean('first_char_ratio'):.2f}x, distinct-2 {mean('distinct_2'):.3f} "
            f"(real {mean('data_distinct_2'):.3f})"
        )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--budget", type=float, default=480.0, help="seconds of training per run")
    p.add_argument("--steps", type=int, default=0, help="train each run for this many steps instead of --budget")
    p.add_argument("--recipe", action="append", default=[], metavar='NAME="FLAGS"')
    p.add_argument("--baselines", nargs="*", choices=["default", "scratch"], default=["default", "scratch"])
    p.add_argument("--out", default="runs/ab")
    p.add_argument("--table", metavar="DIR", help="print the table of the finished runs under DIR and stop")
    args = p.parse_args(argv)
    if args.table:
        names = sorted(n for n in os.listdir(args.table) if os.path.exists(os.path.join(args.table, n, "last", "eval")))
        table({n: summary(os.path.join(args.table, n)) for n in names})
        return
    baselines = {"default": [], "scratch": ["--from-scratch"]}
    recipes = {name: baselines[name] for name in args.baselines}
    for spec in args.recipe:
        name, _, flags = spec.partition("=")
        recipes[name] = shlex.split(flags)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        + (f"{args.steps} steps per run" if args.steps else f"{args.budget:.0f} s per run"),
        flush=True,
    )
    results = {}
    for seed in args.seeds:
        for name, flags in recipes.items():
            out = os.path.join(args.out, f"{name}-s{seed}")
            cmd = [
                sys.executable,
                "train.py",
                *flags,
                "--seed",
                str(seed),
                *(
                    ["--max-steps", str(args.steps), "--time-budget", "0"]
                    if args.steps
                    else ["--time-budget", str(args.budget)]
                ),
                "--out",
                out,
                "--overwrite",
            ]
            print("$", shlex.join(cmd), flush=True)
            os.makedirs(args.out, exist_ok=True)
            run(cmd, out + ".log")
            run(
                [sys.executable, "-m", "univae.evaluate", "--checkpoint", os.path.join(out, "last"), *EVAL_FLAGS],
                out + ".eval.log",
            )
            results[f"{name}-s{seed}"] = summary(out)
    table(results)


if __name__ == "__main__":
    main()
