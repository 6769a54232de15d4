"""The run directory: what train.py and `python -m univae.pretrain` write under --out, and how
every other command reads it back. The one module that knows this layout:

    step-N/    the model's save_pretrained files + training_state.pt + train_args.json
    last  ->   step-N   (a symlink, swapped atomically with os.replace)
    .lock      the pid of the run using OUT (RunLock)
    metrics.jsonl   one JSON row per logged step and per evaluation (MetricsLog)
    tensorboard/    the same scalars, when tensorboard is installed (train.py)

A checkpoint is written to a hidden temporary directory and renamed into place (a rename onto a
fresh name is atomic), and only then does `last` move. A kill at any moment leaves every earlier
checkpoint intact and `last` pointing at a complete one; an I/O error while writing (a full disk)
removes the partial directory and says where `last` still points.
"""

import errno
import fcntl
import json
import os
import pickle
import re
import shutil
import zipfile

import torch
import torch.distributed as dist

from univae import data

STATE_FILE = "training_state.pt"
ARGS_FILE = "train_args.json"
LOCK_FILE = ".lock"
METRICS_FILE = "metrics.jsonl"
STEP_DIR = re.compile(r"^step-(\d+)$")


class TrainingError(RuntimeError):
    """A run that cannot go on (a failed save, non-finite weights, too many non-finite steps): one
    line for the user, and nothing on disk made worse."""


class RunLocked(TrainingError):
    """Another live process is training into the same --out."""


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


class Checkpointer:
    """A run's checkpoints in OUT: `save(step, model, state)` writes step-N (save_checkpoint), moves
    `last` to it and keeps only the newest keep_last step-N (prune_checkpoints). Only rank 0 (master)
    writes; with several ranks every one waits at a barrier until it has, so none runs ahead of a
    checkpoint that is not there yet. `model` is anything with save_pretrained(directory)."""

    def __init__(self, out, run_args, keep_last=0, master=True, world=1, log=print):
        self.out, self.run_args, self.keep_last = out, run_args, keep_last
        self.master, self.world, self.log = master, world, log

    def save(self, step, model, state):
        if self.master:
            path = save_checkpoint(self.out, step, model, state, self.run_args)
            self.log(f"saved {path}")
            for gone in prune_checkpoints(self.out, self.keep_last):
                self.log(f"removed {gone} (--keep-last {self.keep_last})")
        if self.world > 1:
            dist.barrier()


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
        self.out, self.path = out_dir, os.path.join(out_dir, LOCK_FILE)
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
        raise RunLocked(
            f"--out {os.path.dirname(self.path)} is in use by a live run"
            + (f" (pid {pid})" if pid else "")
            + "; wait for it, stop it, or choose another --out"
        )

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


# ----------------------------------------------------------------------------- reading a run back


def read_train_args(checkpoint):
    path = os.path.join(checkpoint, ARGS_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def checkpoint_step(checkpoint):
    m = re.fullmatch(r"step-(\d+)", os.path.basename(os.path.realpath(checkpoint)))
    return int(m.group(1)) if m else None


def split_corpus(corpus, maxlen, train_args):
    """Load `corpus` and split it as train.py did: same limit, text field, split seed and val rule."""
    same = bool(train_args) and train_args.get("corpus") == corpus
    args = train_args if same else {}
    sentences, _ = data.load_sentences(
        corpus, limit=maxlen - 2, text_field=args.get("text_field", "text"), strict=args.get("strict", False)
    )
    seed = (train_args or {}).get("split_seed", 0)
    # train.py splits with val_fraction=0 when it got a separate --val file; the test split does not
    # depend on it (cut first), but the train split does, and novelty needs that one.
    val_fraction = 0.0 if args.get("val") else 0.02
    return data.split(sentences, seed=seed, val_fraction=val_fraction), seed


# ----------------------------------------------------------------------------- the metrics log


class MetricsLog:
    """A run's metrics: each row (a dict with "step"; evaluation rows have "split": "val") appended to
    OUT/metrics.jsonl and flushed at once, so a kill loses no row already recorded; with
    tensorboard=True also TensorBoard scalars `<split>/<name>` under OUT/tensorboard where tensorboard
    is installed. MetricsLog(None) records nothing: the ranks other than 0 hold one."""

    def __init__(self, out=None, tensorboard=False):
        self.file = self.writer = None
        if out is None:
            return
        self.file = open(os.path.join(out, METRICS_FILE), "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional: tensorboard may not be installed
            except ImportError:
                return
            self.writer = SummaryWriter(os.path.join(out, "tensorboard"))

    def record(self, row):
        if self.file is None:
            return
        self.file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.file.flush()
        if self.writer is not None:
            for name, value in row.items():
                if isinstance(value, (int, float)) and name != "step":
                    self.writer.add_scalar(f"{row.get('split', 'train')}/{name}", value, row["step"])

    def close(self):
        for f in (self.file, self.writer):
            if f is not None:
                f.close()
        self.file = self.writer = None


def find_metrics_file(checkpoint):
    """metrics.jsonl in the checkpoint dir or its parent (OUT/metrics.jsonl beside OUT/step-N)."""
    candidates = [
        checkpoint,
        os.path.dirname(os.path.abspath(checkpoint)),
        os.path.dirname(os.path.realpath(checkpoint)),
    ]  # OUT/last -> step-N: both parents are OUT
    for d in candidates:
        path = os.path.join(d, METRICS_FILE)
        if os.path.isfile(path):
            return path
    return None


def read_metrics(path):
    """metrics.jsonl -> (train rows, val rows), each sorted by step; a step logged twice (a resumed
    run re-logs the steps after its checkpoint) keeps its last row. Unreadable lines are skipped."""
    train, val = {}, {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write
            if isinstance(row, dict) and "step" in row:
                (val if row.get("split") == "val" else train)[row["step"]] = row
    return [train[s] for s in sorted(train)], [val[s] for s in sorted(val)]
