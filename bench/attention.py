"""Attention backends on UniVAE's two masks: time, useful TFLOP/s, and agreement with eager.

    python bench/attention.py                                        # CPU default: B 32, maxlen 32 64 128
    python bench/attention.py --batch 32 128 --maxlen 32 64 128 256  # the full grid

For each (B, maxlen, mask) the backends run on the same q, k, v of shape (B, 12, 2*maxlen, 64),
with realistic source padding: source lengths drawn uniformly from [maxlen/4, maxlen], one row
full (a trimmed batch always has one). Rows:

    eager     dense masked softmax (the tests' reference)
    sdpa      F.scaled_dot_product_attention with the dense bool mask
    sdpa+add  proposed: the same mask turned additive (0 / -inf, q's dtype) once per forward;
              SDPA otherwise converts a bool mask with aten::where on every call, i.e. every layer
    flex      FlexAttention with masks.block_mask's BlockMask (compiled); no backward on CPU
    split     UniVAE's decomposition (univae/attention.py): only unmasked work, on fused kernels
    split-sq  proposed: split's latent-layer target call as a square is_causal call over
              [q_cls; q_tgt] x [k_cls; k_tgt] (row 0 dropped) instead of causal_lower_right, which
              torch.compile cannot trace (graph break inside the layer loop; see tests/test_perf.py)
    dense     unmasked SDPA over the whole sequence: the speed-of-light row (it does all S^2 pairs)

FLOP convention: useful work only. fwd = 4 * D * (allowed q.k pairs, all heads) (QK^T and PV,
2 flops per multiply-add); fwd+bwd = 3 x fwd (backward = 2 x forward, no recompute counted). The
dense row's allowed pairs are all B*H*S^2. "fwd" runs under no_grad; the mask objects are built
outside the timed region (the model builds them once per forward and reuses them for all layers;
their build cost is the second table, per forward). max|d| is the largest deviation from eager's
output in the benchmark dtype.
"""

import argparse

import torch
import torch.nn.functional as F
from common import device_arg, interleaved, machine_note, ms, ratio, setup, table  # noqa: E402 (sets sys.path)

import masks  # noqa: E402
from univae.attention import SplitLayout, attend  # noqa: E402

KINDS = {"independent": masks.independent, "uniae": masks.uniae}


def split_square(q, k, v, layout):
    """split with the latent layers' target call as one square causal call (see module doc)."""
    s = layout.src_len
    keep = (torch.arange(s, device=q.device) < layout.src_lengths[:, None])[:, None, None, :]
    src = F.scaled_dot_product_attention(q[:, :, :s], k[:, :, :s], v[:, :, :s], attn_mask=keep)
    q_t, k_t, v_t = q[:, :, s:], k[:, :, s:], v[:, :, s:]
    if layout.sees_cls:  # query row j of [cls; tgt] sees keys 0..j: target i sees cls and tgt 0..i
        q_t = torch.cat([q[:, :, :1], q_t], dim=2)
        k_t, v_t = torch.cat([k[:, :, :1], k_t], dim=2), torch.cat([v[:, :, :1], v_t], dim=2)
        tgt = F.scaled_dot_product_attention(q_t, k_t, v_t, is_causal=True)[:, :, 1:]
    else:
        tgt = F.scaled_dot_product_attention(q_t, k_t, v_t, is_causal=True)
    return torch.cat([src, tgt], dim=2)


def additive(dense, dtype):
    return torch.zeros(dense.shape, dtype=dtype, device=dense.device).masked_fill_(~dense, float("-inf"))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    device_arg(p)
    p.add_argument("--batch", type=int, nargs="+", default=[32])
    p.add_argument(
        "--maxlen", type=int, nargs="+", default=[32, 64, 128], help="tokens per half; the sequence is 2*maxlen"
    )
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument(
        "--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="q, k, v dtype (training runs bf16 autocast)"
    )
    p.add_argument("--reps", type=int, default=5)
    p.add_argument(
        "--no-flex", action="store_true", help="skip flex (its CPU compile costs ~10-30 s per shape and mask)"
    )
    args = p.parse_args()
    device = setup(args)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    H, D = args.heads, args.head_dim
    cpu = device.type == "cpu"
    print(f"# attention backends, {args.dtype}, H={H}, D={D}\n{machine_note(device)}\n")

    rows, build_rows = [], []
    for B in args.batch:
        for maxlen in args.maxlen:
            S = 2 * maxlen
            g = torch.Generator().manual_seed(maxlen * 1000 + B)
            lengths = torch.randint(max(3, maxlen // 4), maxlen + 1, (B,), generator=g)
            lengths[0] = maxlen
            lengths = lengths.to(device)
            q, k, v = (torch.randn(B, H, S, D, generator=g).to(device, dtype) for _ in range(3))
            grad_out = torch.randn(B, H, S, D, generator=g).to(device, dtype)
            for kind, factory in KINDS.items():
                mask_mod = factory(maxlen, lengths)
                dense = masks.materialize(mask_mod, S, S, batch=B, device=device).unsqueeze(1)  # (B, 1, S, S)
                add = additive(dense, dtype)
                block = None if args.no_flex else masks.block_mask(mask_mod, B, S, S, device)
                layout = SplitLayout(maxlen, lengths, kind == "uniae")
                pairs = int(dense.sum()) * H
                fwd_flops = {"dense": 4 * D * B * H * S * S}
                calls = {
                    "eager": lambda q, k, v: attend(q, k, v, dense, "eager"),
                    "sdpa": lambda q, k, v: attend(q, k, v, dense, "sdpa"),
                    "sdpa+add": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=add),
                    "flex": lambda q, k, v: attend(q, k, v, block, "flex"),
                    "split": lambda q, k, v: attend(q, k, v, layout, "split"),
                    "split-sq": lambda q, k, v: split_square(q, k, v, layout),
                    "dense": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
                }
                if args.no_flex:
                    calls.pop("flex")
                with torch.no_grad():
                    ref = calls["eager"](q, k, v).float()
                    dev = {n: (f(q, k, v).float() - ref).abs().max().item() for n, f in calls.items() if n != "dense"}
                    fwd = interleaved({n: (lambda f=f: f(q, k, v)) for n, f in calls.items()}, args.reps, device)

                leaves = [t.detach().requires_grad_() for t in (q, k, v)]

                def fwd_bwd(f):
                    for t in leaves:
                        t.grad = None
                    f(*leaves).backward(grad_out)

                trainable = {n: f for n, f in calls.items() if not (n == "flex" and cpu)}
                both = interleaved({n: (lambda f=f: fwd_bwd(f)) for n, f in trainable.items()}, args.reps, device)
                for n in calls:
                    flops = fwd_flops.get(n, 4 * D * pairs)
                    f_t, b_t = fwd[n], both.get(n)
                    rows.append(
                        [
                            maxlen,
                            B,
                            kind,
                            n,
                            ms(f_t),
                            f"{flops / f_t / 1e12:.3f}",
                            ratio(fwd["sdpa"] / f_t),
                            "n/a (no CPU backward)" if b_t is None else ms(b_t),
                            "" if b_t is None else f"{3 * flops / b_t / 1e12:.3f}",
                            "" if b_t is None else ratio(both["sdpa"] / b_t),
                            "" if n == "dense" else f"{dev[n]:.1e}",
                        ]
                    )
                print(f"done B={B} maxlen={maxlen} {kind} (allowed {pairs / (B * H * S * S):.0%} of pairs)", flush=True)

            # what the model pays once per forward, per mask kind: the mask objects themselves
            builds = {
                "materialize (eager, sdpa)": lambda: masks.materialize(
                    masks.uniae(maxlen, lengths), S, S, batch=B, device=device
                ),
                "materialize + additive": lambda: additive(
                    masks.materialize(masks.uniae(maxlen, lengths), S, S, batch=B, device=device).unsqueeze(1), dtype
                ),
                "SplitLayout (split)": lambda: SplitLayout(maxlen, lengths, True),
            }
            if not args.no_flex:
                builds["block_mask (flex)"] = lambda: masks.block_mask(masks.uniae(maxlen, lengths), B, S, S, device)
            t = interleaved(builds, args.reps, device)
            build_rows += [[maxlen, B, n, f"{t[n] * 1e3:.3f}"] for n in builds]

    print(
        "\nms: median of interleaved repetitions; TFLOP/s of useful (unmasked) work; x sdpa: speed-up over sdpa (>1 = faster)\n"
    )
    print(
        table(
            [
                "maxlen",
                "B",
                "mask",
                "backend",
                "fwd ms",
                "fwd TFLOP/s",
                "fwd x sdpa",
                "fwd+bwd ms",
                "fwd+bwd TFLOP/s",
                "fwd+bwd x sdpa",
                "max|d| vs eager",
            ],
            rows,
        )
    )
    print("\nmask build, once per forward and mask kind (uniae), ms\n")
    print(table(["maxlen", "B", "mask object", "ms"], build_rows))
    print(f"\nend: {machine_note(device)}")


if __name__ == "__main__":
    main()
