"""Shared by the benchmarks: device choice, interleaved timing, markdown tables, the machine note.

Every comparison is timed in one process, interleaved: repetition r runs each contender once, in
an order rotated by r, and a contender's time is the median over repetitions. On a shared machine
a burst of load then hits every contender alike instead of whichever ran during it, so the ratios
hold up far better than the absolute numbers.
"""

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402


def device_arg(p: argparse.ArgumentParser):
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda (default: cuda if available)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help=(
            "torch.set_num_threads; default 1 on CPU: on a shared, loaded machine OpenMP's barrier waits for a "
            "descheduled second thread dominate every timing (pass the core count on an idle machine); torch's default on CUDA"
        ),
    )


def setup(args):
    device = torch.device(args.device)
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else 0)
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns, reps, device, warmup=1):
    """fns: {name: zero-arg callable}. Returns {name: median seconds}; also the raw lists in .raw."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    sync(device)
    times = {n: [] for n in names}
    for r in range(reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            sync(device)
            t0 = time.perf_counter()
            fns[n]()
            sync(device)
            times[n].append(time.perf_counter() - t0)
    return Medians({n: statistics.median(t) for n, t in times.items()}, times)


class Medians(dict):
    def __init__(self, medians, raw):
        super().__init__(medians)
        self.raw = raw


def table(headers, rows):
    """A markdown table (pastes into the README); numbers already formatted as strings."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: (
        "| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |"
    )
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def machine_note(device):
    """One line saying what these numbers were measured on, and how busy the machine was."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    what = (
        torch.cuda.get_device_name(device)
        if torch.device(device).type == "cuda"
        else platform.processor() or platform.machine()
    )
    return (
        f"torch {torch.__version__}, {device} ({what}), {torch.get_num_threads()} threads of {os.cpu_count()} cores, "
        f"1-min load average {load:.1f}"
    )


def matmul_peak(device, dtype=torch.bfloat16, n=2048, reps=5):
    """Achieved FLOP/s of an n x n x n matmul in `dtype`: the roofline the MFU numbers divide by."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = interleaved({"mm": lambda: a @ b}, reps, device)["mm"]
    return 2 * n**3 / t


def flop_counter():
    """FlopCounterMode that also counts SDPA's CPU kernels (torch 2.13 has formulas for the CUDA ones
    only, so on CPU the attention of sdpa would count zero). Attention counts as the shapes the
    kernel is given: dense S x S, masks and causality not discounted (torch's own convention)."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten

    def forward(q, k, v, *args, out_shape=None, **kwargs):
        return fc.sdpa_flop_count(q, k, v)

    def backward(grad_out, q, k, v, *args, out_shape=None, **kwargs):
        return fc.sdpa_backward_flop_count(grad_out, q, k, v)

    return fc.FlopCounterMode(
        display=False,
        custom_mapping={
            aten._scaled_dot_product_flash_attention_for_cpu: forward,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
        },
    )


def ms(seconds):
    return f"{seconds * 1e3:.1f}" if seconds < 10 else f"{seconds * 1e3:.0f}"


def ratio(x):
    return f"{x:.2f}x"
