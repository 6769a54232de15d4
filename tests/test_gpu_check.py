"""The CUDA path's CPU-checkable parts: bench/gpu_check.sh without a GPU, what the GPU machine lacks
(snownlp, rapidfuzz), train_step.py's synthetic batches, and the CUDA choices made in plain code."""

import os
import subprocess
import sys

import pytest
import torch

import masks
from univae import settings
from univae.config import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_gpu_check_without_cuda_says_so_in_one_line_and_exits_0(tmp_path):
    out = tmp_path / "out"
    res = subprocess.run(
        ["bash", os.path.join(ROOT, "bench", "gpu_check.sh"), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [res.stdout.strip()] and "no CUDA device is present" in res.stdout
    assert res.stderr == "" and not out.exists()


def test_the_cuda_modules_import_without_snownlp_and_rapidfuzz():
    """The GPU machine has neither: train.py, sample.py, the CUDA tests and the benchmarks the
    script runs must import without them (None in sys.modules makes an import fail)."""
    code = (
        "import sys; sys.modules['snownlp'] = sys.modules['rapidfuzz'] = None; "
        f"sys.path[:0] = [{ROOT!r}, {os.path.join(ROOT, 'tests')!r}, {os.path.join(ROOT, 'bench')!r}]; "
        "import train, sample, univae.evaluate, test_cuda, train_step, decode"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]


def test_train_step_bench_runs_on_synthetic_batches():
    res = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "bench", "train_step.py"),
            "--presets",
            "small",
            "--batch",
            "2",
            "--batches",
            "1",
            "--reps",
            "1",
            "--attn",
            "sdpa",
            "--matmul",
            "64",
            "--data",
            "synthetic",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "1 synthetic batches of 2 sentences" in res.stdout and "| hf:small " in res.stdout


def test_synthetic_batches_look_like_sentences():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from train_step import MAXLEN, synthetic_ids

    vocab_size, ids = synthetic_ids(2000)
    lengths = ids.ne(0).sum(1) - 2  # characters between [CLS] and [SEP]
    assert ids.shape == (2000, MAXLEN) and (ids[:, 0] == 2).all() and int(ids.max()) < vocab_size
    assert (ids == 3).sum(1).eq(1).all() and ids.gather(1, lengths[:, None] + 1).eq(3).all()
    assert lengths.min() >= 1 and lengths.max() <= MAXLEN - 2 and 18 < lengths.float().mean() < 22  # reviews: 20.4


def test_block_size_is_torchs_128_on_cuda_and_fits_the_source_half_on_cpu():
    assert [masks.default_block_size(n, n, "cpu") for n in (32, 64, 128, 256, 512)] == [16, 32, 64, 128, 128]
    assert masks.default_block_size(64, 64, "cuda") == masks.default_block_size(64, 64, torch.device("cuda", 1)) == 128


def test_device_cuda_under_torchrun_is_the_local_rank_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = TrainConfig(device="cuda")
    assert settings.pick_device(cfg, local_rank=1) == torch.device("cuda", 1)
    assert settings.pick_device(TrainConfig(device="cuda:0"), local_rank=1) == torch.device("cuda", 0)
