"""Library pieces train.py is made of: schedule, evaluation, crash-safe checkpoint directories.

Checkpoint layout under --out:

    step-N/    save_pretrained files + training_state.pt + train_args.json
    last  ->   step-N   (a symlink, swapped atomically with os.replace)

    .lock      the pid of the run using OUT (RunLock)

A checkpoint is written to a hidden temporary directory and renamed into place (a rename onto a
fresh name is atomic), and only then does `last` move. A kill at any moment leaves every earlier
checkpoint intact and `last` pointing at a complete one; an I/O error while writing (a full disk)
removes the partial directory and says where `last` still points.
"""
import ctypes
import ctypes.util
import errno
import fcntl
import json
import math
import os
import pickle
import re
import resource
import shutil
import sys
import zipfile

import torch
import torch.distributed as dist

from univae.data import join
from univae.diagnostics import latent_metrics, posterior_params_of
from univae.metrics import bits_per_char, reconstruction_scores

STATE_FILE = "training_state.pt"
ARGS_FILE = "train_args.json"
LOCK_FILE = ".lock"
STEP_DIR = re.compile(r"^step-(\d+)$")


class TrainingError(RuntimeError):
    """A run that cannot go on (a failed save, non-finite weights, too many non-finite steps): one
    line for the user, and nothing on disk made worse."""


class RunLocked(TrainingError):
    """Another live process is training into the same --out."""


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


def keep_freed_memory():
    """Make glibc's malloc keep the memory a training step frees, for the next step to reuse.

    A CPU step allocates and frees tensors of tens of MB every time: the logits and their gradient,
    (batch x length x vocab) floats, 29 MB for a batch of the bundled reviews. glibc serves blocks
    over its mmap threshold with a fresh mmap and gives the heap's free top back to the OS past its
    trim threshold, so the next step page-faults that memory in again, 4 kB at a time. With both
    thresholds raised nothing goes back: the default run made 1.05x the steps in interleaved 240 s
    rounds (1.06-1.25x in shorter pairs; 2-core AMD EPYC, README "Performance"), for a resident
    size that stays at its peak (+5%). Returns
    whether it took effect (False where the C library is not glibc: macOS, musl)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, 1 << 30)) & bool(mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))


def peak_rss_mb():
    """The process's peak resident memory so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024


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
    n_chars = sum(len("".join(t.split())) + 1 for t in texts)  # +1: the closing [SEP] is predicted too
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


# ----------------------------------------------------------------------------- checkpoints

def _last_note(out_dir):
    last = os.path.join(out_dir, "last")
    if os.path.exists(last):
        return f"{last} still points at the complete {os.path.basename(os.path.realpath(last))}"
    return f"{last} does not exist yet (no complete checkpoint)"


def save_checkpoint(out_dir, step, model, state, args):
    """Write OUT/step-N atomically, then point OUT/last at it. Returns the checkpoint path.

    An OSError on the way (disk full, permissions, I/O) removes the partial temporary directory and
    raises TrainingError saying where `last` still points; `last` only moves once step-N is whole."""
    name = f"step-{step}"
    final = os.path.join(out_dir, name)
    tmp = os.path.join(out_dir, f".tmp-{name}")
    link = os.path.join(out_dir, ".last.tmp")
    try:
        if not os.path.exists(final):  # the same step saved twice (periodic + final) holds the same weights
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp)
            torch.save(state, os.path.join(tmp, STATE_FILE))
            with open(os.path.join(tmp, ARGS_FILE), "w", encoding="utf-8") as f:
                json.dump(args, f, indent=2, ensure_ascii=False)
            os.replace(tmp, final)
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(name, link)
        os.replace(link, os.path.join(out_dir, "last"))
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        why = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise TrainingError(f"could not save {final}: {why}; {_last_note(out_dir)}") from None
    return final


def prune_checkpoints(out_dir, keep):
    """Remove all but the newest `keep` step-N directories (0: keep all); never the one `last` points at.
    Returns the removed paths."""
    if not keep:
        return []
    steps = sorted((int(m.group(1)), name) for name in os.listdir(out_dir) if (m := STEP_DIR.match(name)))
    current = os.path.basename(os.path.realpath(os.path.join(out_dir, "last")))
    removed = []
    for _, name in steps[:-keep]:
        if name != current:  # renamed first (atomic), so a kill mid-delete leaves no half step-N behind
            trash = os.path.join(out_dir, f".trash-{name}")
            os.replace(os.path.join(out_dir, name), trash)
            removed.append(os.path.join(out_dir, name))
    for name in os.listdir(out_dir):  # this call's and any a killed run left
        if name.startswith(".trash-"):
            shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)
    return removed


def all_finite(module):
    """Every parameter and floating buffer finite (one host sync; at save time only)."""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True


def load_training_state(directory):
    """training_state.pt (weights_only: no pickled code runs) and train_args.json of a checkpoint.
    A missing file is FileNotFoundError, a truncated or corrupt one ValueError naming the file."""
    path = os.path.join(directory, STATE_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory}: no {STATE_FILE} (not a training checkpoint; nothing to resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise ValueError(f"{path}: truncated or corrupt ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(state, dict) or not {"step", "optimizer", "data", "rng"} <= set(state):
        raise ValueError(f"{path}: not a univae training state (missing step/optimizer/data/rng)")
    args_path = os.path.join(directory, ARGS_FILE)
    try:
        with open(args_path, encoding="utf-8") as f:
            args = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{directory}: no {ARGS_FILE}") from None
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{args_path}: not valid JSON ({str(e)[:120]})") from None
    return state, args


# ----------------------------------------------------------------------------- one run per --out

class RunLock:
    """OUT/.lock: an exclusive flock held for the whole run, the file holding the holder's pid.

    The kernel drops a flock when its process dies, however it dies (kill -9 included), so a lock
    file whose flock can be taken is stale by construction; `stale_pid` then names the dead run."""

    def __init__(self, out_dir):
        self.path = os.path.join(out_dir, LOCK_FILE)
        self.fd = None
        self.stale_pid = None

    @staticmethod
    def contents(out_dir):
        """What OUT holds besides the lock file (what --overwrite would replace)."""
        return [n for n in os.listdir(out_dir) if n != LOCK_FILE]

    def _holder(self, fd):
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None

    def _try(self, fd):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _refuse(self, fd):
        pid = self._holder(fd)
        os.close(fd)
        raise RunLocked(f"--out {os.path.dirname(self.path)} is in use by a live run"
                        + (f" (pid {pid})" if pid else "") + f"; wait for it, stop it, or choose another --out")

    def check(self):
        """Refuse at once if a live run holds the lock; read-only otherwise (takes nothing)."""
        if not os.path.exists(self.path):
            return
        fd = os.open(self.path, os.O_RDONLY)
        if not self._try(fd):
            self._refuse(fd)
        os.close(fd)  # closing drops the flock we just took

    def acquire(self):
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not self._try(fd):
            self._refuse(fd)
        self.stale_pid = self._holder(fd)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self):
        if self.fd is not None:
            os.remove(self.path)  # while still holding it: nobody can have taken it in between
            os.close(self.fd)
            self.fd = None


def clear_out_dir(out_dir):
    """Empty OUT for a fresh run (--overwrite, the default run), keeping the lock this run holds."""
    for name in RunLock.contents(out_dir):
        path = os.path.join(out_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
