"""Decoding throughput: the cached decoder against recompute-everything decoding (the reference's way).

    python bench/decode.py                      256 prior samples, maxlen 32, untrained `small` preset

Same model, same codes, same machine, one timed run each (after a two-sentence warm-up), greedy.
An untrained model rarely says [SEP], so both paths run the full maxlen - 1 steps: the worst case.
Prints sentences/s for each path, the ratio, and whether the two produced the same text.
"""
import argparse
import time

import torch

import univae
from univae.tokenizer import SPECIAL_TOKENS, build_tokenizer


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--n", type=int, default=256, help="sentences to decode")
    p.add_argument("--maxlen", type=int, default=32)
    p.add_argument("--vocab-size", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--attn", default="auto")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    # A vocab of CJK characters, so the timed path includes detokenisation as sample.py does.
    vocab = SPECIAL_TOKENS + [chr(0x4E00 + i) for i in range(args.vocab_size - len(SPECIAL_TOKENS))]
    config = univae.preset(args.preset, vocab_size=args.vocab_size, maxlen=args.maxlen, attn=args.attn)
    torch.manual_seed(0)
    model = univae.UniVAE(config, build_tokenizer(vocab)).to(args.device).eval()
    z = model.sample_prior(args.n)

    results = {}
    for name, use_cache in [("cached", True), ("recompute", False)]:
        model.generate(z[:2], use_cache=use_cache)  # warm-up: first-call allocations, kernel selection
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(z, use_cache=use_cache, batch_size=args.batch_size)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        results[name] = (out, seconds)
        print(f"{name:>9}: {args.n} sentences in {seconds:7.2f} s = {args.n / seconds:8.1f} sentences/s")

    (cached, t_cached), (recompute, t_recompute) = results["cached"], results["recompute"]
    print(f"    ratio: {t_recompute / t_cached:.1f}x  (preset {args.preset}, maxlen {args.maxlen}, vocab {args.vocab_size}, "
          f"batch {args.batch_size}, {args.device}, {torch.get_num_threads()} threads, backend {model.backend(args.device)})")
    print(f"identical outputs: {cached == recompute}  (mean length {sum(map(len, cached)) / len(cached):.1f} chars)")


if __name__ == "__main__":
    main()
