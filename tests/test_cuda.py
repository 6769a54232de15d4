"""The CUDA path against the eager/fp32 references, on one GPU (skipped without CUDA).

`bash bench/gpu_check.sh OUT` runs this module first. Written on a machine without a GPU: until
it has passed on an H200 the CUDA path is untested (README, "CUDA path").

What is compared, and why the tolerances:

* FlexAttention forward + backward against eager, both masks, with source padding, in fp32 (the
  attention function alone, then the whole UniVAE loss and every parameter's gradient). Both
  compute the same sums in IEEE fp32 (TF32 is off by default, and checked), only in another
  order: errors of a few ulp of the largest values, so 1e-4 relative to each tensor's largest
  entry leaves a margin of ~100x and still catches any wrongly masked key.
* 30 steps of train.py with flex + bf16 autocast against eager + fp32: same seed, init, batches
  and vMF noise. bf16 keeps 8 mantissa bits (relative rounding 2^-9 = 0.2% per cast): step 1 (same
  weights) within 2%; the curves then drift apart, within the 5% per step that the CPU suite
  already allows between two bf16 backends (test_train.py); and the run must learn.
* fp16 autocast with GradScaler (train.py --precision fp16): every loss finite, step 1 within
  1% of fp32 (fp16 keeps 11 bits), the curve within 5% of fp32's per step, the scaler's scale
  never collapsing (each halving is a step it skipped for an inf gradient).
* The compiled one-token decode step (CachedDecoder(compile_step=True): CUDA graphs) against the
  eager step: the same logits at every step within 1e-4 (Inductor fuses and reorders fp32
  reductions; 10x the CPU test's 1e-5), one dynamo graph, one CUDA graph recorded and then
  replayed for a second batch of the same size (reset in the same buffers), no cudagraph skip;
  then the same greedy and beam text through model.generate.
* torchrun --nproc-per-node 1 train.py --device cuda: the nccl process group starts and the run
  saves and reloads. With one process train.py wraps no DDP and calls no collective (world size
  1), so gradient all-reduce over nccl needs a machine with two GPUs.

Flex compiles once per shape, dtype, mask function and grad mode (univae/attention.py), so the
shapes here are few and fixed: the training runs pad every batch to full maxlen (one shape)
instead of trimming it (trimming is tested on CPU), and the fp16 and torchrun runs use sdpa.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch._dynamo.utils import counters

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

from conftest import random_joined  # noqa: E402
from test_generate import _model  # noqa: E402
from test_train import ROOT, SENTENCES, base_args  # noqa: E402

import masks  # noqa: E402
import train  # noqa: E402
import univae  # noqa: E402
import univae.trainer  # noqa: E402
from univae import decoding  # noqa: E402
from univae.attention import attend  # noqa: E402
from univae.transformer import build_mask  # noqa: E402

SRC, B, H, D = 16, 4, 2, 16  # flex's CUDA kernels need a head size of at least 16 (D = 16: the debug preset's)
LENGTHS = [16, 9, 1, 5]
STEPS = 30


def _close(got, want, tol, what):
    """max |got - want| <= tol * max |want|: an error relative to the tensor's own scale."""
    err, scale = (got.float() - want.float()).abs().max().item(), want.float().abs().max().item()
    assert err <= tol * max(scale, 1e-12), f"{what}: max error {err:.3g} vs scale {scale:.3g} (tol {tol})"


@pytest.fixture(autouse=True)
def ieee_fp32():
    """The fp32 references are IEEE fp32: TF32 off, as torch's default (bench/common.py turns it on)."""
    assert not torch.backends.cuda.matmul.allow_tf32 and torch.get_float32_matmul_precision() == "highest"
    yield


# ----------------------------------------------------------------------------- flex vs eager


@pytest.mark.parametrize("factory", [masks.independent, masks.uniae])
def test_flex_forward_and_backward_match_eager(factory):
    mod = factory(SRC, torch.tensor(LENGTHS, device="cuda"))
    g = torch.Generator().manual_seed(0)
    qkv = [torch.randn(B, H, 2 * SRC, D, generator=g) for _ in range(3)]
    results = []
    for backend in ("eager", "flex"):
        q, k, v = [t.cuda().requires_grad_() for t in qkv]
        out = attend(q, k, v, build_mask(mod, B, 2 * SRC, 2 * SRC, backend, "cuda"), backend)
        (out * torch.linspace(-1, 1, D, device="cuda")).square().sum().backward()
        results.append((out.detach(), [t.grad for t in (q, k, v)]))
    (out_e, grads_e), (out_f, grads_f) = results
    _close(out_f, out_e, 1e-4, "output")
    for name, a, b in zip("qkv", grads_f, grads_e):
        _close(a, b, 1e-4, f"d{name}")


def test_flex_model_loss_and_gradients_match_eager():
    """The whole training forward (per-layer BlockMasks built from the batch's source lengths) and
    every parameter's gradient, fp32, eval mode (posterior means: no sampling noise)."""
    import copy

    torch.manual_seed(0)
    eager = univae.UniVAE(univae.preset("debug", attn="eager")).cuda().eval()
    flex = copy.deepcopy(eager)
    flex.config.attn = "flex"
    input_ids, token_types = [t.cuda() for t in random_joined(eager, B=B, seed=1)]
    assert input_ids[:, :SRC].ne(0).sum(1).unique().numel() == B  # every row its own source padding
    outs = []
    for m in (eager, flex):
        out = m(input_ids, token_types)
        out.loss.backward()
        outs.append(out)
    _close(outs[1].loss, outs[0].loss, 1e-5, "loss")
    _close(outs[1].logits, outs[0].logits, 1e-4, "logits")
    for (name, p_e), p_f in zip(eager.named_parameters(), flex.parameters()):
        if p_e.grad is not None:
            _close(p_f.grad, p_e.grad, 1e-4, f"grad of {name}")


# ----------------------------------------------------------------------------- train.py on CUDA


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(f"{s}{i % 7}" for i, s in enumerate(SENTENCES)) + "\n", encoding="utf-8")
    return str(path)


def _train(corpus, out, *flags, scaler_log=None):
    """train.main in-process for STEPS steps on CUDA, every batch padded to full maxlen (one shape
    for flex to compile); returns the loss curve."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(univae.trainer, "trim_length", lambda longest, maxlen, multiple=1: maxlen)
        if scaler_log is not None:

            class RecordingScaler(torch.amp.GradScaler):
                def update(self, new_scale=None):
                    super().update(new_scale)
                    scaler_log.append(self.get_scale())

            mp.setattr(torch.amp, "GradScaler", RecordingScaler)
        train.main(
            base_args(
                corpus,
                out,
                "--max-steps",
                str(STEPS),
                "--log-every",
                "1",
                "--device",
                "cuda",
                "--prior-components",
                "0",
                *flags,
            )
        )
    rows = [json.loads(line) for line in open(out / "metrics.jsonl", encoding="utf-8")]
    return torch.tensor([r["loss"] for r in rows if "split" not in r])


@pytest.fixture(scope="module")
def fp32_curve(corpus_file, tmp_path_factory):
    """The reference: eager attention, fp32."""
    curve = _train(corpus_file, tmp_path_factory.mktemp("eager-fp32"), "--attn", "eager", "--precision", "fp32")
    assert len(curve) == STEPS and curve[-5:].mean() < curve[:5].mean() - 0.2  # a real curve: it learned
    return curve


def test_flex_bf16_training_follows_the_eager_fp32_curve(corpus_file, fp32_curve, tmp_path, capsys):
    curve = _train(corpus_file, tmp_path / "flex", "--attn", "flex", "--precision", "bf16")
    assert "training on cuda:0 (bf16, attn flex)" in capsys.readouterr().out
    assert torch.isfinite(curve).all()
    _close(curve[0], fp32_curve[0], 0.02, "step-1 loss")
    torch.testing.assert_close(curve, fp32_curve, rtol=0.05, atol=0, msg="flex bf16 vs eager fp32 loss curve")
    univae.UniVAE.from_pretrained(str(tmp_path / "flex" / "last"))


def test_fp16_with_grad_scaler_stays_finite_and_close_to_fp32(corpus_file, fp32_curve, tmp_path):
    scales = []
    curve = _train(corpus_file, tmp_path / "fp16", "--attn", "sdpa", "--precision", "fp16", scaler_log=scales)
    assert len(scales) == STEPS and torch.isfinite(curve).all()
    halvings = sum(b < a for a, b in zip(scales, scales[1:]))
    assert min(scales) >= 2.0**8, f"the loss scale collapsed: {scales}"
    _close(curve[0], fp32_curve[0], 0.01, "step-1 loss")
    torch.testing.assert_close(
        curve, fp32_curve, rtol=0.05, atol=0, msg=f"fp16 vs fp32 loss curve ({halvings} steps skipped by the scaler)"
    )
    model = univae.UniVAE.from_pretrained(str(tmp_path / "fp16" / "last"))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_torchrun_one_process_nccl(corpus_file, tmp_path):
    assert torch.distributed.is_nccl_available()
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "1",
        "--master-port",
        "29547",
        os.path.join(ROOT, "train.py"),
        *base_args(
            corpus_file,
            out,
            "--max-steps",
            "6",
            "--save-every",
            "3",
            "--device",
            "cuda",
            "--attn",
            "sdpa",
            "--prior-components",
            "0",
        ),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "training on cuda:0" in res.stdout and "stopped at step 6" in res.stdout
    state = torch.load(out / "last" / "training_state.pt", weights_only=True)
    assert state["step"] == 6 and "cuda" in state["rng"]
    univae.UniVAE.from_pretrained(str(out / "last"))


# ----------------------------------------------------------------------------- compiled decoding, CUDA graphs


@pytest.fixture
def cuda_graph_counts(monkeypatch):
    """Counts CUDA graph recordings and replays (torch._inductor.cudagraph_trees), on an empty dynamo cache."""
    from torch._inductor import cudagraph_trees as trees

    torch._dynamo.reset()
    counters.clear()
    n = {"recorded": 0, "replayed": 0}
    record, replay = trees.CUDAGraphTreeManager.record_function, trees.CUDAGraphNode.run

    def counted_record(self, *args, **kwargs):
        n["recorded"] += 1
        return record(self, *args, **kwargs)

    def counted_replay(self, *args, **kwargs):
        n["replayed"] += 1
        return replay(self, *args, **kwargs)

    monkeypatch.setattr(trees.CUDAGraphTreeManager, "record_function", counted_record)
    monkeypatch.setattr(trees.CUDAGraphNode, "run", counted_replay)
    yield n
    torch._dynamo.reset()


def test_compiled_decode_step_under_cuda_graphs_equals_eager(hf_dirs, cuda_graph_counts):
    """RoFormer (the step gathers rotary rows by a tensor index), 4 rows, maxlen 12: every step of two
    batches of codes, the second through reset() in the same buffers."""
    n = cuda_graph_counts
    m = _model(hf_dirs, "roformer", "sdpa").cuda()
    torch.manual_seed(14)
    z = m.sample_prior(8)
    cls = m.tokenizer.token_to_id("[CLS]")
    steps = m.config.maxlen - 1
    with torch.no_grad():
        compiled = decoding.CachedDecoder(m, z[:4], compile_step=True)
        for batch, zb in enumerate((z[:4], z[4:])):
            if batch:
                compiled.reset(zb)
            eager = decoding.CachedDecoder(m, zb)
            prefix = torch.full((4, 1), cls, device="cuda")
            for t in range(steps):
                with torch._dynamo.config.patch(error_on_recompile=batch > 0 or t > 0):
                    got = compiled(prefix)
                want = eager(prefix)
                torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=f"batch {batch}, step {t}")
                prefix = torch.cat([prefix, want.argmax(-1, keepdim=True)], dim=1)
    assert counters["stats"]["unique_graphs"] == 1  # one dynamo graph: no graph break, no recompile
    assert counters["inductor"]["cudagraph_skips"] == 0, "Inductor ran the step without CUDA graphs"
    assert n["recorded"] == 1, f"one CUDA graph for both batches, got {n['recorded']} recordings"
    assert n["replayed"] >= steps, f"the second batch replays the graph: {n['replayed']} replays"

    # the same text through the API: two batches of 4 share one decoder (decode_ids resets it);
    # beam search's 2 inputs x 2 beams are 4 rows too: the same dynamo graph, reordered in place
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert m.generate(z, batch_size=4, compile_step=True) == m.generate(z, batch_size=4)
        assert m.generate(z[:2], beam_size=2, compile_step=True) == m.generate(z[:2], beam_size=2)
    assert counters["stats"]["unique_graphs"] == 1 and counters["inductor"]["cudagraph_skips"] == 0
    # each new decoder's buffers are recorded once (no recompile); its later batches replay
    assert n["recorded"] <= 3, n
