"""How the training step scales with sequence length and batch size, and how the cached decoder's
per-step cost behaves along the sequence.

    python bench/scaling.py                                    # small preset, CPU-sized default
    python bench/scaling.py --lengths 32 64 128 256 --len-batch 32 --batches 8 16 32 64 128

1. Training step (forward under bf16 autocast, backward, AdamW) of the small preset at half
   lengths --lengths (the joined sequence is twice that) and batch --len-batch, then at batch
   sizes --batches and half length --batch-len; each with every --attn backend. Synthetic ids with
   realistic source padding (lengths uniform in [m/4, m], one row full). Times are interleaved in
   one process; us/token is per real token of both halves.
   Peak memory: each configuration runs in its own subprocess; the column is the growth of the
   peak RSS over two steps above the RSS after a tiny first step has allocated gradients and AdamW
   state, so it is activations plus allocator slack (Linux: the peak is reset through
   /proc/self/clear_refs first; elsewhere ru_maxrss, which a larger earlier peak can hide). On CUDA:
   torch.cuda.max_memory_allocated over the same two steps, minus what was allocated before.
2. Decoding: univae.decoding.CachedDecoder on N rows, every step timed (median over repetitions),
   for each --decode-maxlen; the first, middle and last few steps, last/first (the target: flat,
   <= 1.3x), the FLOPs of the first and last step (FlopCounterMode), and the recompute decoder's
   step (the reference's way: the whole joined sequence per token), interleaved with it.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from common import device_arg, flop_counter, interleaved, machine_note, ms, ratio, setup, sync, table  # noqa: E402 (sets sys.path)

from univae import data as D  # noqa: E402
from univae import decoding  # noqa: E402
from univae.config import preset  # noqa: E402
from univae.model import UniVAE  # noqa: E402
from univae.tokenizer import SPECIAL_TOKENS, build_tokenizer  # noqa: E402

VOCAB = 5000  # about the char vocab of builtin:reviews


def make_model(maxlen, attn, device, presetname="small"):
    torch.manual_seed(0)
    c = preset(presetname, vocab_size=VOCAB, maxlen=maxlen, max_position_embeddings=max(64, 2 * maxlen), attn=attn)
    tok = build_tokenizer(SPECIAL_TOKENS + [chr(0x4E00 + i) for i in range(VOCAB - len(SPECIAL_TOKENS))])
    return UniVAE(c, tok).to(device)


def batch(B, m, seed, device):
    """(B, m) source ids: [CLS] x.. [SEP] pad.., lengths uniform in [m/4, m], row 0 full."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(3, m // 4), m + 1, (B,), generator=g)
    lengths[0] = m
    ids = torch.randint(len(SPECIAL_TOKENS), VOCAB, (B, m), generator=g)
    ids[torch.arange(m)[None, :] >= lengths[:, None]] = 0
    ids[:, 0] = 2
    ids[torch.arange(B), lengths - 1] = 3
    return ids.to(device)


class Step:
    def __init__(self, model, device):
        self.model, self.device = model.train(), device
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def __call__(self, src):
        input_ids, token_type_ids = D.join(src)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            loss = self.model(input_ids, token_type_ids).loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def _status_kib(field):
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1])


def memory_child(m, B, attn, maxlen, device):
    """Runs in a subprocess: peak memory growth of two training steps at (B, m)."""
    device = torch.device(device)
    step = Step(make_model(maxlen, attn, device), device)
    step(batch(1, 8, 0, device))  # gradients and AdamW state exist from here on
    src = batch(B, m, 1, device)
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(src), step(src)
        sync(device)
        grown = torch.cuda.max_memory_allocated(device) - before
    elif os.path.exists("/proc/self/clear_refs"):
        # Linux: reset the process' peak RSS (VmHWM) to its current RSS, so that the model build's
        # transient peak does not hide a small configuration's growth
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kib("VmRSS")
        step(src), step(src)
        grown = (_status_kib("VmHWM") - before) * 1024
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        step(src), step(src)
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * (
            1 if sys.platform == "darwin" else 1024
        )
    print(json.dumps({"bytes": grown}))


def peak_memory(m, B, attn, maxlen, args):
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--_memory",
        str(m),
        str(B),
        attn,
        str(maxlen),
        "--device",
        args.device,
        "--threads",
        str(torch.get_num_threads()),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["bytes"]


def train_scaling(args, device):
    maxlen = max(args.lengths + [args.batch_len])
    models = {attn: make_model(maxlen, attn, device) for attn in args.attn}
    steps = {attn: Step(models[attn], device) for attn in args.attn}
    configs = list(
        dict.fromkeys([(m, args.len_batch) for m in args.lengths] + [(args.batch_len, B) for B in args.batches])
    )
    inputs = {(m, B): batch(B, m, 1, device) for m, B in configs}
    fns = {(m, B, attn): (lambda s=steps[attn], x=inputs[(m, B)]: s(x)) for m, B in configs for attn in args.attn}
    t = interleaved(fns, args.reps, device)
    mem = {}
    if not args.no_memory:
        for m, B in configs:
            for attn in args.attn:
                mem[(m, B, attn)] = peak_memory(m, B, attn, maxlen, args)
                print(f"memory m={m} B={B} {attn}: {mem[(m, B, attn)] / 2**20:.0f} MiB", flush=True)

    def rows(select):
        out = []
        for m, B in configs:
            if not select(m, B):
                continue
            real = int(inputs[(m, B)].ne(0).sum()) * 2
            for attn in args.attn:
                k = (m, B, attn)
                out.append(
                    [
                        m,
                        2 * m,
                        B,
                        attn,
                        ms(t[k]),
                        f"{t[k] / real * 1e6:.0f}",
                        ratio(t[(m, B, args.attn[0])] / t[k]),
                        "n/a" if k not in mem else f"{mem[k] / 2**20:.0f}",
                    ]
                )
        return out

    head = ["half len", "seq len", "B", "attn", "ms/step", "us/token", f"x {args.attn[0]}", "peak mem growth MiB"]
    print(f"\ntraining step vs length (B={args.len_batch}), small preset, bf16 autocast\n")
    print(table(head, rows(lambda m, B: B == args.len_batch and m in args.lengths)))
    print(f"\ntraining step vs batch size (half length {args.batch_len})\n")
    print(table(head, rows(lambda m, B: m == args.batch_len and B in args.batches)))


def decode_scaling(args, device):
    rows = []
    for maxlen in args.decode_maxlen:
        model = make_model(maxlen, args.decode_attn, device).eval()
        torch.manual_seed(1)
        z = model.sample_prior(args.decode_rows, device)
        prefix = torch.randint(len(SPECIAL_TOKENS), VOCAB, (args.decode_rows, maxlen), device=device)
        prefix[:, 0] = 2
        T = maxlen - 1  # greedy decoding takes maxlen - 1 steps
        steps = [[] for _ in range(T)]
        with torch.no_grad():

            def run_cached():
                decoder = decoding.CachedDecoder(model, z)
                for t in range(T):
                    sync(device)
                    t0 = time.perf_counter()
                    decoder(prefix[:, : t + 1])
                    sync(device)
                    steps[t].append(time.perf_counter() - t0)

            recompute = decoding.RecomputeDecoder(model, z)
            fns = {
                "cached (all steps)": run_cached,
                "recompute first": lambda: recompute(prefix[:, :1]),
                "recompute last": lambda: recompute(prefix[:, :T]),
            }
            rt = interleaved(fns, args.decode_reps, device)
            for s in steps:  # drop the warm-up pass
                del s[0]
            med = [statistics.median(s) for s in steps]
            w = min(args.window, T // 2)  # single steps are ~ms: compare windows of w steps
            first, middle, last = (statistics.mean(med[i : i + w]) for i in (0, (T - w) // 2, T - w))
            decoder = decoding.CachedDecoder(model, z)
            flops = []
            for t in range(T):
                if t in (0, T - 1):
                    with flop_counter() as counter:
                        decoder(prefix[:, : t + 1])
                    flops.append(counter.get_total_flops())
                else:
                    decoder(prefix[:, : t + 1])
        rows.append(
            [
                maxlen,
                args.decode_rows,
                T,
                ms(first),
                ms(middle),
                ms(last),
                ratio(last / first),
                f"{flops[0] / 1e6:.1f} / {flops[1] / 1e6:.1f}",
                ms(rt["recompute first"]),
                ms(rt["recompute last"]),
                ratio(rt["recompute last"] / last),
            ]
        )
        print(f"decode maxlen {maxlen}: per-step ms {[round(x * 1e3, 2) for x in med]}", flush=True)
    print(
        f"\ncached decoding, small preset, fp32, attn {args.decode_attn}: ms per step along the sequence (each step's "
        f"median over {args.decode_reps} repetitions, averaged over windows of {args.window} steps: the first, the "
        "middle and the last); recompute: the reference's whole-sequence step, interleaved\n"
    )
    print(
        table(
            [
                "maxlen",
                "rows",
                "steps",
                "first ms",
                "middle ms",
                "last ms",
                "last/first",
                "MFLOP step 0 / last",
                "recompute step 0 ms",
                "recompute last ms",
                "cached speed-up (last)",
            ],
            rows,
        )
    )


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--_memory":
        m, B, attn, maxlen = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
        rest = argparse.ArgumentParser()
        device_arg(rest)
        a = rest.parse_args(sys.argv[6:])
        device = setup(a)
        return memory_child(m, B, attn, maxlen, device)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    device_arg(p)
    p.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128, 256], help="half lengths (tokens per half)")
    p.add_argument("--len-batch", type=int, default=8, help="batch size of the length sweep")
    p.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32, 64], help="batch sizes of the batch sweep")
    p.add_argument("--batch-len", type=int, default=32, help="half length of the batch sweep")
    p.add_argument("--attn", nargs="+", default=["sdpa", "split", "eager"])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-memory", action="store_true", help="skip the per-configuration memory subprocesses")
    p.add_argument("--decode-maxlen", type=int, nargs="+", default=[32, 128])
    p.add_argument("--decode-rows", type=int, default=32)
    p.add_argument("--decode-attn", default="sdpa")
    p.add_argument("--decode-reps", type=int, default=7)
    p.add_argument("--window", type=int, default=4, help="steps averaged for the first / middle / last columns")
    p.add_argument("--skip", choices=["train", "decode"], default=None)
    args = p.parse_args()
    device = setup(args)
    print(f"# scaling\n{machine_note(device)}")
    if args.skip != "train":
        train_scaling(args, device)
    if args.skip != "decode":
        decode_scaling(args, device)
    print(f"\nend: {machine_note(device)}")


if __name__ == "__main__":
    main()
