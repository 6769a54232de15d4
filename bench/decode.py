"""Decoding throughput: the cached decoder against recompute-everything decoding (the reference's way),
over a grid of batch size B x maxlen.

    python bench/decode.py                                   B 1 8 64 256 x maxlen 32 64, untrained `small` preset
    python bench/decode.py --batch-sizes 1 8 --maxlens 32    a smaller grid
    python bench/decode.py --device cuda --compile           adds a cached+compiled column (CUDA graphs on CUDA)

Per cell: the same model and codes for every path, greedy, decoded in batches of B; n = max(B, 8)
prior samples unless --n says otherwise (rounded up to whole batches), so the slow recompute
cells at small B stay affordable. An untrained model rarely says [SEP], so every path runs the
full maxlen - 1 steps: the worst case. Each path runs once on two sentences first (first-call
allocations, kernel selection); then the paths are timed interleaved (bench/common.py), the median
of --reps runs each. Columns: sentences/s per path; ratio = cached / recompute sentences/s;
identical outputs = every path produced the same text. With --compile the compiled path (the
cached decoder with Decoding.compile_step) warms up on a full batch of B instead, as
torch.compile specialises on the batch shape, so its timed runs exclude compilation; "compile s"
is that first call's time minus one timed batch (much less on a repeat run: Inductor caches
compiled graphs on disk).

maxlen 64 needs 128 positions; the BERT position table is widened to 2 * maxlen where the preset's
is shorter (an untrained model: only the shape matters).
"""

import argparse
import math
import sys
import time

import torch
from common import device_arg, interleaved, machine_note, setup, sync, table  # noqa: E402 (sets sys.path)

import univae  # noqa: E402
from univae.config import PRESETS, UniVAEConfig  # noqa: E402
from univae.tokenizer import SPECIAL_TOKENS, build_tokenizer  # noqa: E402


def build(args, maxlen, device):
    # A vocab of CJK characters, so the timed path includes detokenisation as sample.py does.
    vocab = SPECIAL_TOKENS + [chr(0x4E00 + i) for i in range(args.vocab_size - len(SPECIAL_TOKENS))]
    positions = PRESETS[args.preset].get("max_position_embeddings", UniVAEConfig.max_position_embeddings)
    config = univae.preset(
        args.preset,
        vocab_size=args.vocab_size,
        maxlen=maxlen,
        attn=args.attn,
        max_position_embeddings=max(positions, 2 * maxlen),
    )
    torch.manual_seed(0)
    return univae.UniVAE(config, build_tokenizer(vocab)).to(device).eval()


def timed_run(model, z, B, opts, out, name):
    """A zero-arg callable for interleaved(): decode z in batches of B, keep the text in out[name]."""

    def run():
        out[name] = model.generate(z, batch_size=B, **opts)

    return run


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64, 256], metavar="B")
    p.add_argument("--maxlens", type=int, nargs="+", default=[32, 64], metavar="MAXLEN")
    p.add_argument("--n", type=int, help="sentences per cell, rounded up to whole batches (default max(B, 8))")
    p.add_argument("--reps", type=int, default=1, help="timed runs per path and cell (median)")
    p.add_argument("--vocab-size", type=int, default=6000)
    p.add_argument("--attn", default="auto")
    p.add_argument("--compile", action="store_true", help="add cached+compiled (Decoding.compile_step)")
    device_arg(p)
    args = p.parse_args()
    device = setup(args)

    paths = {"cached": dict(use_cache=True), "recompute": dict(use_cache=False)}
    if args.compile:
        paths["compiled"] = dict(use_cache=True, compile_step=True)
    rows = []
    for maxlen in args.maxlens:
        model = build(args, maxlen, device)
        for B in args.batch_sizes:
            n = B * math.ceil((args.n or max(B, 8)) / B)
            z = model.sample_prior(n)
            model.generate(z[:2], **paths["cached"])
            model.generate(z[:2], **paths["recompute"])
            if args.compile:  # a full batch: the step compiles for this batch shape
                sync(device)
                t0 = time.perf_counter()
                model.generate(z[:B], batch_size=B, **paths["compiled"])
                sync(device)
                first_call = time.perf_counter() - t0
            out = {}
            fns = {name: timed_run(model, z, B, opts, out, name) for name, opts in paths.items()}
            t = interleaved(fns, args.reps, device, warmup=0)
            row = [
                maxlen,
                B,
                f"{n / t['cached']:.1f}",
                f"{n / t['recompute']:.1f}",
                f"{t['recompute'] / t['cached']:.1f}x",
            ]
            if args.compile:
                compile_s = first_call - t["compiled"] * B / n
                row += [f"{n / t['compiled']:.1f}", f"{t['cached'] / t['compiled']:.2f}x", f"{compile_s:.1f}"]
            row.append("yes" if all(o == out["cached"] for o in out.values()) else "NO")
            rows.append(row)
            print(f"maxlen {maxlen}, B {B}: {n} sentences per path", file=sys.stderr, flush=True)

    headers = ["maxlen", "B", "cached sent/s", "recompute sent/s", "ratio"]
    if args.compile:
        headers += ["cached+compiled sent/s", "compiled / cached", "compile s"]
    print(table(headers + ["identical outputs"], rows))
    print()
    print(
        f"preset {args.preset}, vocab {args.vocab_size}, attn {args.attn} -> {model.backend(device)}, greedy, "
        f"{f'n = {args.n}' if args.n else 'n = max(B, 8)'} sentences per cell, median of {args.reps} run(s)"
    )
    print(machine_note(device))


if __name__ == "__main__":
    main()
