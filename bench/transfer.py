"""Attribute transfer, negative -> positive reviews, judged by snownlp's own sentiment classifier
(univae/downstream.py's transfer_trial).

For each seed: FROM / TO = 2,000 train-split single-piece reviews of each label (the VAE saw their
text, never their label), inputs = 200 negative ones, every held-out (val + test split) negative
first, then train-split ones outside FROM. Each input's code moves by strength x the direction
(--direction probe|mean, both by default) and is decoded; the judge (SnowNLP(s).sentiments > 0.5)
says positive or not, and char F1 with the input says how much was kept. Strength 0 is the plain
reconstruction: the baseline. Mean over seeds with a 95% t-interval.

    python bench/transfer.py --checkpoint runs/default/last [--seeds 0 1 2] [--beam-size 4]
"""

import argparse
import datetime
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


from univae import downstream as DS  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--strengths", type=float, nargs="+", default=[0, 1, 2, 3, 3.5, 4, 5, 6])
    p.add_argument("--direction", choices=("probe", "mean"), nargs="+", default=["probe", "mean"])
    p.add_argument("--beam-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    model, data = DS.load_labelled(args.checkpoint, args.threads)
    t0 = time.time()
    print(
        f"# {args.checkpoint}, {datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"decoding beam {args.beam_size}, seeds {args.seeds}"
    )
    for method in args.direction:
        trials = [
            DS.transfer_trial(model, data, args.strengths, seed=s, method=method, beam_size=args.beam_size)
            for s in args.seeds
        ]
        t = trials[0]
        print(
            f"\n{method} direction: {t['n_inputs']} negative inputs ({t['n_held_out_inputs']} held out), FROM/TO "
            f"{t['n_from']}/{t['n_to']}; the inputs themselves judged positive: "
            f"{DS.fmt_interval([x['inputs_positive'] for x in trials])}\n"
        )
        print("| strength | judged positive | char F1 with input | held-out inputs: positive | held-out: char F1 |")
        print("|---|---|---|---|---|")
        for i, strength in enumerate(args.strengths):
            col = lambda k: DS.fmt_interval([x["rows"][i][k] for x in trials])
            name = f"{strength:g}" + (" (reconstruction)" if strength == 0 else "")
            print(
                f"| {name} | {col('positive')} | {col('char_f1')} | {col('positive_held_out')} | {col('char_f1_held_out')} |"
            )
        for a, b in t["rows"][args.strengths.index(max(args.strengths))]["examples"]:
            print(f"  {a} -> {b}")
    print(f"\n{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
