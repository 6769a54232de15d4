"""Performance properties that regress silently, checked by counting (calls, graphs, FLOPs), never
by timing, so they hold on a loaded machine:

    masks are built once per forward, one per kind, and the same object reaches every layer
    one fused QKV matmul per layer
    torch.compile does not recompile for a new batch of the same shape, and the step is one graph
    (no host syncs: a graph break on CPU is a device sync on CUDA)
    the cached decoder builds no mask per step, and its per-step FLOPs stay flat along the sequence
    train.py's allocator setting keeps a step's big tensors in the heap (glibc)
"""

import ctypes
import ctypes.util
import os
import re
import subprocess
import sys

import pytest
import torch
import torch._dynamo
from conftest import random_joined
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import masks
import univae.attention
import univae.model
import univae.transformer
from univae import decoding
from univae.attention import SplitLayout
from univae.config import preset
from univae.model import UniVAE
from univae.training import peak_rss_mb


def _model(attn, **overrides):
    torch.manual_seed(0)
    return UniVAE(preset("debug", attn=attn, **overrides))


class _Calls:
    """Wraps masks.materialize / masks.block_mask (looked up at call time by the library) to count calls."""

    def __init__(self, monkeypatch):
        self.n = {"materialize": 0, "block_mask": 0}
        for name in self.n:
            real = getattr(masks, name)

            def counted(*a, _real=real, _name=name, **k):
                self.n[_name] += 1
                return _real(*a, **k)

            monkeypatch.setattr(masks, name, counted)


def _masks_seen_by_layers(monkeypatch):
    """Record the mask object each Layer.forward hands to attend."""
    seen = []
    real = univae.transformer.attend

    def spy(q, k, v, mask, backend, **kw):
        seen.append(mask)
        return real(q, k, v, mask, backend, **kw)

    monkeypatch.setattr(univae.transformer, "attend", spy)
    return seen


# ----------------------------------------------------------------------------- masks once per forward


@pytest.mark.parametrize(
    "attn, builder", [("eager", "materialize"), ("sdpa", "materialize"), ("flex", "block_mask"), ("split", None)]
)
def test_masks_are_built_once_per_forward_one_per_kind(monkeypatch, attn, builder):
    # flex without compiling: this counts calls, and compiling flex on CPU costs ~20 s
    monkeypatch.setattr(univae.attention, "_flex_compiled", univae.attention.flex_attention)
    model = _model(attn).eval()
    calls = _Calls(monkeypatch)
    seen = _masks_seen_by_layers(monkeypatch)
    ids, tt = random_joined(model, seed=0)
    with torch.no_grad():  # flex has no CPU backward
        model(ids, tt)
    expected = {"materialize": 0, "block_mask": 0}
    if builder:
        expected[builder] = 2  # independent + uniae
    assert calls.n == expected
    L, latent = model.config.num_hidden_layers, set(model.config.latent_layers)
    assert len(seen) == L
    if attn == "split":  # no mask at all: one layout per layer, the top two skipping unread source rows
        m = model.config.maxlen
        assert all(isinstance(s, SplitLayout) and s.sees_cls == (l in latent) for l, s in enumerate(seen))
        assert [(s.src_len, s.src_queries) for s in seen] == [(m, None)] * (L - 2) + [(m, 1), (1, 0)]
        # one set of small masks for the whole forward: source key padding once, one causal mask per kind
        assert all(s.masks is seen[0].masks for s in seen)
        assert sorted(k[0] for k in seen[0].masks) == ["causal"] * 2 + ["padding"]
        return
    # exactly two mask objects, shared: every lower layer gets one, every latent layer the other
    assert len({id(m) for m in seen}) == 2
    assert len({id(m) for l, m in enumerate(seen) if l in latent}) == 1


def test_cached_decoder_builds_no_mask_per_step(monkeypatch):
    model = _model("sdpa").eval()
    calls = _Calls(monkeypatch)
    z = model.sample_prior(2)
    with torch.no_grad():
        decoder = decoding.CachedDecoder(model, z)
        assert calls.n["materialize"] == 2  # the two (maxlen + 1)^2 masks, once
        prefix = torch.randint(5, model.config.vocab_size, (2, 4))
        for t in range(4):
            decoder(prefix[:, : t + 1])
    assert calls.n == {"materialize": 2, "block_mask": 0}


# ----------------------------------------------------------------------------- one fused QKV matmul


class _Matmuls(TorchDispatchMode):
    OPS = {
        torch.ops.aten.mm.default,
        torch.ops.aten.addmm.default,
        torch.ops.aten.bmm.default,
        torch.ops.aten.baddbmm.default,
    }

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func in self.OPS
        return func(*args, **(kwargs or {}))


def test_layer_issues_one_fused_qkv_matmul():
    model = _model("sdpa")
    layer = model.transformer.layers[0]
    x = torch.randn(2, 8, model.config.hidden_size)
    mask = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    with torch.no_grad(), _Matmuls() as mm:
        layer(x, mask, "sdpa")
    assert mm.n == 4  # qkv, attn_out, ffn_in, ffn_out (attention itself is one fused SDPA op)


# ----------------------------------------------------------------------------- torch.compile


def _train_step(net):
    def step(ids, tt):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(ids, tt)
        out.loss.backward()

    return step


@pytest.mark.parametrize("attn", ["sdpa", "split", "eager"])
def test_compiled_training_step_does_not_recompile_for_a_new_batch_of_the_same_shape(attn):
    """Recompiles are decided by dynamo's guards whatever backend compiles the graph; aot_eager also
    traces the backward (AOTAutograd) but skips Inductor's C++ codegen, keeping this test ~15 s."""
    torch._dynamo.reset()
    model = _model(attn).train()
    step = _train_step(torch.compile(model, backend="aot_eager"))
    step(*random_joined(model, seed=0, lengths=[14, 9, 3, 12]))
    with torch._dynamo.config.patch(error_on_recompile=True):  # other tokens, other source padding, same shape
        step(*random_joined(model, seed=1, lengths=[5, 14, 8, 2]))
    torch._dynamo.reset()


@pytest.mark.parametrize("attn", ["sdpa", "split"])
def test_training_forward_is_one_graph_without_host_syncs(attn):
    """No graph break: no host sync (masks' argument checks are skipped under compile) and no
    tensor subclass dynamo cannot build in the split backend."""
    torch._dynamo.reset()
    model = _model(attn).train()
    ids, tt = random_joined(model, seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explanation = torch._dynamo.explain(model)(ids, tt)
    torch._dynamo.reset()
    reasons = [str(r.reason).splitlines()[0] for r in explanation.break_reasons]
    assert explanation.graph_break_count == 0, reasons
    assert explanation.graph_count == 1


# ----------------------------------------------------------------------------- cached decoding


def _sdpa_cpu(q, k, v, *args, out_shape=None, **kwargs):
    return flop_counter.sdpa_flop_count(q, k, v)


def _flops(fn):
    """FLOPs of fn(), SDPA's CPU kernel included (torch only has formulas for the CUDA kernels)."""
    cpu_sdpa = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu}
    with FlopCounterMode(display=False, custom_mapping=cpu_sdpa) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("attn", ["eager", "sdpa", "split"])
def test_cached_decoder_flops_per_step_stay_flat(attn):
    """The cache is preallocated (maxlen + 1 slots) and each step is one token: the last step may
    cost at most 1.3x the first (it costs exactly the same today), and far less than re-running."""
    model = _model(attn).eval()
    c = model.config
    z = model.sample_prior(3)
    prefix = torch.randint(5, c.vocab_size, (3, c.maxlen))
    with torch.no_grad():
        decoder = decoding.CachedDecoder(model, z)
        per_step = [_flops(lambda: decoder(prefix[:, : t + 1])) for t in range(c.maxlen)]
        uncached_last = _flops(lambda: model.decode_logits(z, prefix))
    assert per_step[0] > 0
    assert per_step[-1] <= 1.3 * per_step[0], per_step
    # re-running the target for the last step costs ~maxlen steps' worth
    assert per_step[-1] * c.maxlen / 2 < uncached_last


MALLINFO = """
import ctypes, ctypes.util, sys
import torch
from univae.training import keep_freed_memory

class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = Info
if sys.argv[1] == "keep":
    assert keep_freed_memory()
x = torch.ones(48 << 20, dtype=torch.uint8)  # over glibc's largest automatic mmap threshold (32 MB)
mapped = libc.mallinfo2().hblkhd
del x
print(mapped >> 20, libc.mallinfo2().fordblks >> 20)
"""


@pytest.mark.skipif(not hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallinfo2"), reason="needs glibc >= 2.33")
def test_keep_freed_memory_serves_big_tensors_from_the_heap_and_keeps_them():
    """train.py's allocator setting: a step's 48 MB tensor comes from the heap, not a fresh mmap, and
    its memory stays in the heap once freed (by default: mmapped, and unmapped on free)."""

    def run(mode):  # in a fresh process: the setting is process-wide
        out = subprocess.run(
            [sys.executable, "-c", MALLINFO, mode],
            capture_output=True,
            text=True,
            check=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        ).stdout
        return [int(v) for v in out.split()]

    mapped, _ = run("default")
    assert mapped >= 48
    mapped, free_after = run("keep")
    assert mapped < 48 and free_after >= 48


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's own count")
def test_peak_rss_mb_is_the_kernels_high_water_mark_in_megabytes():
    """train.py's peak_rss_mb column against the kernel's own peak (VmHWM, kB), after touching 300 MB."""
    x = torch.ones(300 << 20, dtype=torch.uint8)
    with open("/proc/self/status") as f:
        hwm = int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) / 1024
    assert peak_rss_mb() == pytest.approx(hwm, abs=8) and hwm > 300
    del x
