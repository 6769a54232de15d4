"""Pieces train.py and `python -m univae.pretrain` are made of: precision and device, distributed
setup, the allocator setting, the learning-rate schedule, optimiser groups, validation metrics.
The run directory they write is univae/rundir.py's."""

import ctypes
import ctypes.util
import math
import os
import re
import resource
import signal
import sys

import torch
import torch.distributed as dist

from univae.data import join
from univae.diagnostics import latent_metrics, posterior_params_of
from univae.metrics import bits_per_char, predicted_chars, reconstruction_scores


def cpu_has_fast_bf16(cpuinfo="/proc/cpuinfo"):
    """True where the CPU multiplies bf16 in hardware (AVX512-BF16, AMX, or Arm's BF16): there bf16
    autocast is several times faster than fp32. Elsewhere oneDNN emulates bf16 and is far slower
    than fp32 (docs/performance.md has the measurement), so `--precision auto` trains in fp32."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = f.read()
    except OSError:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return re.search(r"\b(avx512_bf16|amx_bf16|bf16)\b", flags) is not None


def autocast_dtype(precision, device):
    """--precision -> the autocast dtype (None: plain fp32). auto: bf16 on a GPU that has it or a CPU
    with hardware bf16, else fp32."""
    if precision == "auto":
        fast = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_fast_bf16()
        return torch.bfloat16 if fast else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def trim_length(longest, maxlen, multiple=1):
    """Half length for a batch whose longest sentence has `longest` tokens, rounded up to a multiple
    (length_multiple). Exact for any multiple: the model keeps target positions at maxlen + t
    (UniVAE.forward)."""
    return min(maxlen, -(-longest // multiple) * multiple)


def length_multiple(compile, device, dtype):
    """What trim_length rounds each batch's length up to.

    8 under --compile: torch.compile then sees at most maxlen/8 static shapes. 4 under CPU autocast:
    its bf16/fp16 matmuls go to oneDNN, which caches the kernels it builds for each new shape (up to
    1,024 of them), so one shape per batch length (32 at maxlen 32) grows the run's memory all run
    long as rare lengths come up, while 8 lengths keep it flat at the same speed (the padding costs
    about what building kernels for the other shapes did; docs/performance.md). Otherwise 1: exactly
    the longest sentence, the least padding."""
    if compile:
        return 8
    return 4 if device.type == "cpu" and dtype is not None else 1


def precision_name(dtype):
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def pick_device(device_flag, precision, local_rank):
    """--device (cpu, cuda, cuda:N, auto) -> torch.device; under torchrun each rank takes its own GPU."""
    if device_flag == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(device_flag)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device_flag}: CUDA is not available on this machine")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs CUDA; use bf16, fp32 or auto on CPU")
    return device


def setup_distributed():
    """torchrun sets RANK/WORLD_SIZE; gloo on CPU, nccl on CUDA. Returns (rank, world_size, local_rank)."""
    if "RANK" not in os.environ:
        return 0, 1, 0
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return rank, world, local


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def cpu_rng_state(world):
    """The CPU RNG state to save for a resume: this process's, or under torchrun every rank's
    (stacked, rank order; a collective: every rank calls it), so that each rank's masking, dropout
    and latent draws continue exactly."""
    rng = torch.get_rng_state()
    if world == 1:
        return rng
    gathered = [torch.empty_like(rng) for _ in range(world)]
    dist.all_gather(gathered, rng)
    return torch.stack(gathered)


def loop_state(loop):
    """What a training loop's resume restores, from its step, elapsed, skipped, optimizer, batches,
    world and device: the counters, the optimiser, the data position and the RNG states (a collective
    under torchrun: every rank calls it)."""
    state = {
        "step": loop.step,
        "elapsed": loop.elapsed,
        "skipped_steps": loop.skipped,
        "optimizer": loop.optimizer.state_dict(),
        "data": loop.batches.state_dict(),
        "rng": {"cpu": cpu_rng_state(loop.world)},
    }
    if loop.device.type == "cuda":
        state["rng"]["cuda"] = torch.cuda.get_rng_state(loop.device)
    return state


def restore_loop_state(loop, state):
    """loop_state's counters, data position and RNG states back into the loop (the optimiser is the
    caller's: a trainer may have to check that its parameter groups still match)."""
    loop.batches.load_state_dict(state["data"])
    loop.step, loop.elapsed = int(state["step"]), float(state["elapsed"])
    loop.skipped = int(state.get("skipped_steps", 0))
    cpu = state["rng"]["cpu"]
    torch.set_rng_state(cpu[loop.rank] if cpu.dim() > 1 else cpu)
    if loop.device.type == "cuda" and "cuda" in state["rng"]:
        torch.cuda.set_rng_state(state["rng"]["cuda"], loop.device)


def run_progress(step, max_steps, elapsed, budget):
    """Fraction of a run done, by steps or time, whichever is further (the lr schedule's clock);
    max_steps and budget are math.inf when not set."""
    return max(step / max_steps if max_steps < math.inf else 0.0, elapsed / budget if budget < math.inf else 0.0)


def stop_everywhere(stop, world):
    """Under torchrun every rank stops at the same step: any rank's stop is every rank's."""
    if world == 1:
        return stop
    flag = torch.tensor(float(stop))
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def stop_on_signals(stops):
    """SIGINT and SIGTERM append their number to `stops` (the loop then saves and ends); a second
    signal kills at once."""

    def on_signal(signum, frame):
        stops.append(signum)
        signal.signal(signum, signal.SIG_DFL)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def keep_freed_memory():
    """Make glibc's malloc keep the memory a training step frees, for the next step to reuse.

    A CPU step allocates and frees tensors of tens of MB every time: the logits and their gradient,
    (batch x length x vocab) floats, 29 MB for a batch of the bundled reviews. glibc serves blocks
    over its mmap threshold with a fresh mmap and gives the heap's free top back to the OS past its
    trim threshold, so the next step page-faults that memory in again, 4 kB at a time. With both
    thresholds raised nothing goes back, so the resident size stays at its peak (docs/performance.md
    has the trade measured). Returns whether it took effect (False where the C library is not
    glibc: macOS, musl)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, 1 << 30)) & bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def peak_rss_mb():
    """The process's peak resident memory so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def lr_at(step, progress, peak, warmup):
    """Linear warmup over `warmup` steps, then cosine decay to 10% of peak as progress goes 0 -> 1.

    progress is the fraction of the run done (by steps, epochs or the time budget, whichever
    ends first), so a time-budgeted run still anneals before it stops."""
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0))))


def param_groups(model, weight_decay):
    """AdamW groups: decay matrices, not biases, LayerNorm weights or the latent heads' biases, nor the
    latent family's prior (gmm's component means: decay would pull the components together)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and not name.startswith("family.") else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def evaluate(model, ids, texts, n_reconstruct, batch_size=128, autocast=None, au_delta=0.01):
    """Val metrics: CE per target token, bits per char, KL (total and per layer), the collapse
    diagnostics of univae.diagnostics over all of ids (mi, mi_per_layer, au, au_per_layer, and
    kl_per_dim where the KL splits over dims), and greedy reconstruction of the first n_reconstruct
    sentences (exact match and char F1, whitespace ignored).

    Runs under fork_rng so evaluating never shifts the training RNG stream (resume stays exact)."""
    was_training = model.training
    model.eval()
    total_nats = n_tokens = 0.0
    kl_sum, kl_layers = 0.0, 0.0
    autocast = autocast or torch.autocast("cpu", enabled=False)
    with torch.random.fork_rng(devices=[] if model.device.type == "cpu" else [model.device]):
        for chunk in ids.split(batch_size):
            input_ids, token_type_ids = join(chunk.to(model.device))
            with autocast:
                out = model(input_ids, token_type_ids)
            total_nats += out.ce.item() * out.n_tokens.item()
            n_tokens += out.n_tokens.item()
            kl_sum += out.kl.item() * len(chunk)
            kl_layers = kl_layers + out.kl_per_layer.float().cpu() * len(chunk)
        latent = latent_metrics(model.family, posterior_params_of(model, ids, batch_size, autocast), au_delta)
        subset = texts[:n_reconstruct]
        preds = model.reconstruct(subset) if subset else []
    model.train(was_training)
    n_chars = predicted_chars(texts)
    metrics = {
        "ce": total_nats / max(n_tokens, 1),
        "bits_per_char": bits_per_char(total_nats, n_chars),
        "kl": kl_sum / len(ids),
        "kl_per_layer": (kl_layers / len(ids)).tolist(),
        **latent,
    }
    if subset:
        metrics.update(reconstruction_scores(preds, subset))
    return metrics, list(zip(subset, preds))


def all_finite(module):
    """Every parameter and floating buffer finite (one host sync; at save time only)."""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True
