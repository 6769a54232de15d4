"""The measured sweep behind the `small` preset (README, "The small preset").

Each candidate trains from scratch on builtin:reviews exactly like `python train.py` (same time
budget, bf16, bucketed batches), then is scored on held-out sentences: the reviews test split
(never trained on) and, out of domain, People's Daily sentences (builtin:news).

On a shared machine a wall-clock budget alone is meaningless, so a candidate trains either for a
fixed number of steps (what an idle 2-core CPU reaches in the default 480 s budget, measured
with bench/train_step.py for that size; --steps NAME=N to override), or, to compare sizes that
cost different time per step, for a --time-budget side by side with its rival: two processes at
--threads 1 started together share the machine's load alike.

    python bench/sweep_small.py                # all candidates, fixed steps
    python bench/sweep_small.py --only B C     # some of them
    python bench/sweep_small.py --only S --threads 1 --time-budget 620 --log results_S.jsonl &
    python bench/sweep_small.py --only P --threads 1 --time-budget 620 --log results_P.jsonl
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import train  # noqa: E402
import univae.generate  # noqa: E402,F401  (imported now: the model imports it lazily at the end)
from univae import data as D  # noqa: E402
from univae.config import PRESETS  # noqa: E402
from univae.metrics import reconstruction_scores  # noqa: E402
from univae.model import UniVAE  # noqa: E402

BASE = dict(max_position_embeddings=64, maxlen=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
SIZE_4x256 = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
SIZE_4x128 = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=2, intermediate_size=512)
SIZE_4x192 = dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768)
SIZE_6x192 = dict(hidden_size=192, num_hidden_layers=6, num_attention_heads=3, intermediate_size=768)
SIZE_6x256 = dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=4, intermediate_size=1024)
# candidate -> (architecture and latent, train.py flags (each says its lr and word dropout, which would
# otherwise come from the sweep's --lr and the preset's recipe), steps an idle 2-core CPU makes in the
# default budget, or 0: compared on --time-budget)
CANDIDATES = {
    "F": (
        {**SIZE_4x256, "num_latent_layers": 3, "z_dim": 16, "kappa": 32.0},
        ["--word-dropout", "0"],
        1800,
    ),  # the reference's rate
    "C": ({**SIZE_4x256, "num_latent_layers": 3, "z_dim": 32, "kappa": 128.0}, ["--word-dropout", "0"], 1800),
    "D": ({**SIZE_6x256, "num_latent_layers": 5, "z_dim": 32, "kappa": 128.0}, ["--word-dropout", "0"], 1200),
    "G": ({**SIZE_4x256, "num_latent_layers": 3, "z_dim": 64, "kappa": 512.0}, ["--word-dropout", "0"], 1800),
    "H": ({**SIZE_4x256, "num_latent_layers": 3, "z_dim": 32, "kappa": 128.0}, ["--word-dropout", "0.3"], 1800),
    "I": ({**SIZE_4x256, "num_latent_layers": 3, "z_dim": 64, "kappa": 256.0}, ["--word-dropout", "0.3"], 1800),
    "J": ({**SIZE_6x256, "num_latent_layers": 5, "z_dim": 32, "kappa": 128.0}, ["--word-dropout", "0.3"], 1200),
    "L": (
        {**SIZE_4x256, "num_latent_layers": 3, "z_dim": 32, "kappa": 128.0},
        ["--word-dropout", "0.3"],
        1800,
    ),  # H, unit-scale up(z) init
    "M": ({**SIZE_4x256, "num_latent_layers": 3, "z_dim": 32, "kappa": 128.0}, ["--word-dropout", "0.5"], 1800),
    "N": ({**SIZE_4x256, "num_latent_layers": 3, "z_dim": 32, "kappa": 256.0}, ["--word-dropout", "0.3"], 1800),
    "O": (
        {**SIZE_4x256, "num_latent_layers": 3, "z_dim": 32, "kappa": 128.0},
        ["--word-dropout", "0.3", "--lr", "2e-3"],
        1800,
    ),  # L, twice the lr
    "P": (
        {**SIZE_4x256, "num_latent_layers": 3, "z_dim": 64, "kappa": 256.0},
        ["--word-dropout", "0.3", "--lr", "2e-3"],
        1800,
    ),  # I, twice the lr
    "Q": (
        {**SIZE_4x256, "num_latent_layers": 3, "z_dim": 32, "kappa": 128.0},
        ["--word-dropout", "0.3", "--lr", "3e-3"],
        1800,
    ),  # L, three times the lr
    "T": (
        {**SIZE_4x256, "num_latent_layers": 3, "z_dim": 128, "kappa": 512.0},
        ["--word-dropout", "0.3", "--lr", "2e-3"],
        1800,
    ),  # P, twice the dims and kappa
    "S": (
        {**SIZE_4x192, "num_latent_layers": 3, "z_dim": 64, "kappa": 256.0},
        ["--word-dropout", "0.3", "--lr", "2e-3"],
        0,
    ),  # P, narrower (run on time)
    "U": (
        {**SIZE_6x192, "num_latent_layers": 5, "z_dim": 64, "kappa": 256.0},
        ["--word-dropout", "0.3", "--lr", "2e-3"],
        0,
    ),  # deeper, narrower, 5 latent layers (run on time)
    "W": (
        {**SIZE_4x128, "num_latent_layers": 3, "z_dim": 64, "kappa": 256.0},
        ["--word-dropout", "0.3", "--lr", "2e-3"],
        0,
    ),  # S, narrower still (run on time)
    "X": (
        {**SIZE_4x192, "num_latent_layers": 3, "z_dim": 64, "kappa": 256.0},
        ["--word-dropout", "0.3", "--lr", "2e-3", "--batch-size", "32"],
        0,
    ),  # S, half the batch (run on time)
    "Y": (
        {**SIZE_4x192, "num_latent_layers": 3, "z_dim": 64, "kappa": 256.0},
        ["--word-dropout", "0.3", "--lr", "3e-3"],
        0,
    ),  # S, 1.5x the lr (run on time)
    "Z": (
        {**SIZE_4x192, "num_latent_layers": 3, "z_dim": 64, "kappa": 256.0},
        ["--word-dropout", "0.3", "--lr", "4e-3"],
        0,
    ),  # S, twice the lr (run on time)
    "V": (
        {**SIZE_4x192, "num_latent_layers": 3, "z_dim": 64, "kappa": 256.0},
        ["--word-dropout", "0.2", "--lr", "3e-3"],
        0,
    ),  # Y, less word dropout (run on time)
    "V1": (
        {**SIZE_4x192, "num_latent_layers": 3, "z_dim": 64, "kappa": 256.0},
        ["--word-dropout", "0.1", "--lr", "3e-3"],
        0,
    ),  # V, less word dropout (run on time)
    "V0": (
        {**SIZE_4x192, "num_latent_layers": 3, "z_dim": 64, "kappa": 256.0},
        ["--word-dropout", "0", "--lr", "3e-3"],
        0,
    ),  # V, no word dropout (run on time)
    "K": (
        {**SIZE_4x256, "num_latent_layers": 3, "z_dim": 32, "kappa": 128.0},
        ["--word-dropout", "0.3", "--batch-size", "32"],
        3600,
    ),
}


def score(model, sentences):
    preds = model.reconstruct(sentences)
    return reconstruction_scores(preds, sentences)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--only", nargs="*", default=list(CANDIDATES))
    p.add_argument("--steps", nargs="*", default=[], help="NAME=STEPS overrides")
    p.add_argument(
        "--time-budget",
        type=float,
        default=0,
        help="train each candidate for this many seconds instead of a fixed number of steps (fair only "
        "between candidates run side by side, e.g. two processes at --threads 1)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-eval", type=int, default=300)
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--log", default="results.jsonl")
    args = p.parse_args()
    test = D.split(D.load_sentences("builtin:reviews", 30)[0], seed=0)["test"][: args.n_eval]
    news = D.split(D.load_sentences("builtin:news", 30)[0], seed=0)["test"][: args.n_eval]
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = {**{k: c[2] for k, c in CANDIDATES.items()}, **{k: int(v) for k, v in (s.split("=") for s in args.steps)}}
    rows = []
    for name in args.only:
        size, flags, _ = CANDIDATES[name]
        PRESETS["small"] = {**BASE, **size}
        out = os.path.join(args.out, name)
        t0 = time.time()
        stop = ["--time-budget", str(args.time_budget)] if args.time_budget else ["--max-steps", str(steps[name])]
        train.main(
            [
                "--out",
                out,
                "--overwrite",
                *stop,
                "--lr",
                str(args.lr),
                "--batch-size",
                str(args.batch_size),
                "--eval-every",
                "100000",
                "--eval-sentences",
                "0",
                *flags,
            ]
        )
        model = UniVAE.from_pretrained(os.path.join(out, "last")).eval()
        state = torch.load(os.path.join(out, "last", "training_state.pt"), weights_only=True)
        with torch.no_grad():
            row = {
                "name": name,
                **size,
                "flags": " ".join(flags),
                "steps": int(state["step"]),
                "wall_s": round(time.time() - t0),
                "reviews_test": score(model, test),
                "news": score(model, news),
                "samples": model.sample(5, seed=0),
            }
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False), flush=True)
        with open(os.path.join(args.out, args.log), "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print("\n| cand | layers x hidden | latent | kappa | flags | steps | reviews test F1 / exact | news F1 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['num_hidden_layers']}x{r['hidden_size']} | {r['num_latent_layers']}x{r['z_dim']} | {r['kappa']:g} | {r['flags']} "
            f"| {r['steps']} | {r['reviews_test']['char_f1']:.3f} / {r['reviews_test']['exact_match']:.3f} | {r['news']['char_f1']:.3f} |"
        )


if __name__ == "__main__":
    main()
