"""Every backend against the eager reference, on UniVAE's masks with source padding."""

import pytest
import torch

import masks
from univae.attention import attend
from univae.transformer import build_mask

SRC, B, H, D = 16, 3, 2, 8
LENGTHS = torch.tensor([16, 9, 1])


def _qkv(seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, 2 * SRC, D, generator=g).requires_grad_(requires_grad) for _ in range(3)]


@pytest.mark.parametrize("factory", [masks.independent, masks.uniae])
def test_sdpa_matches_eager_forward_and_grad(factory):
    dense = build_mask(factory(SRC, LENGTHS), B, 2 * SRC, 2 * SRC, "eager", "cpu")
    outs, grads = [], []
    for backend in ("eager", "sdpa"):
        q, k, v = _qkv(requires_grad=True)
        out = attend(q, k, v, dense, backend)
        (out * torch.linspace(-1, 1, D)).sum().backward()
        outs.append(out.detach())
        grads.append([t.grad for t in (q, k, v)])
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("factory", [masks.independent, masks.uniae])
def test_flex_forward_matches_eager(factory):
    mod = factory(SRC, LENGTHS)
    q, k, v = _qkv()
    ref = attend(q, k, v, build_mask(mod, B, 2 * SRC, 2 * SRC, "eager", "cpu"), "eager")
    with torch.no_grad():
        got = attend(q, k, v, build_mask(mod, B, 2 * SRC, 2 * SRC, "flex", "cpu"), "flex")
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


# flex forward + backward on CUDA: tests/test_cuda.py


def test_flex_with_grad_on_cpu_is_a_clear_error():
    q, k, v = _qkv(requires_grad=True)
    bm = build_mask(masks.uniae(SRC), None, 2 * SRC, 2 * SRC, "flex", "cpu")
    with pytest.raises(RuntimeError, match="--attn sdpa"):
        attend(q, k, v, bm, "flex")


def test_row_with_no_allowed_key_is_zero_in_every_backend():
    q, k, v = _qkv(requires_grad=True)
    mask = torch.ones(B, 1, 2 * SRC, 2 * SRC, dtype=torch.bool)
    mask[1, :, 5] = False
    for backend in ("eager", "sdpa"):
        out = attend(q, k, v, mask, backend)
        assert torch.equal(out[1, :, 5], torch.zeros(H, D)), backend
        q.grad = None
        out.sum().backward()
        assert torch.isfinite(q.grad).all(), backend

    def mod(b, h, q_idx, kv_idx):
        return ~((b == 1) & (q_idx == 5))

    with torch.no_grad():
        out = attend(q, k, v, masks.block_mask(mod, B, 2 * SRC, 2 * SRC, "cpu"), "flex")
    assert torch.equal(out[1, :, 5], torch.zeros(H, D))


@pytest.mark.parametrize("factory,sees_cls", [(masks.independent, False), (masks.uniae, True)])
@pytest.mark.parametrize("lengths", [LENGTHS, None])
def test_split_matches_eager_forward_and_grad(factory, sees_cls, lengths):
    from univae.attention import SplitLayout

    dense = build_mask(factory(SRC, lengths), B if lengths is not None else 1, 2 * SRC, 2 * SRC, "eager", "cpu")
    results = []
    for backend, mask in (("eager", dense), ("split", SplitLayout(SRC, lengths, sees_cls))):
        q, k, v = _qkv(seed=1, requires_grad=True)
        out = attend(q, k, v, mask, backend)
        out.square().sum().backward()
        results.append((out.detach(), [t.grad for t in (q, k, v)]))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_auto_resolves_by_device_and_head_size():
    """auto: split on CPU; flex on CUDA unless the head is below flex's CUDA minimum (then sdpa).
    resolve only reads the device type, so CUDA is asked about without one."""
    from univae.attention import FLEX_CUDA_MIN_HEAD_DIM, resolve

    assert resolve("auto", "cpu") == resolve("auto", "cpu", head_dim=8) == "split"
    assert resolve("auto", "cuda", head_dim=FLEX_CUDA_MIN_HEAD_DIM) == resolve("auto", "cuda") == "flex"
    assert resolve("auto", "cuda", head_dim=FLEX_CUDA_MIN_HEAD_DIM - 8) == "sdpa"
    assert resolve("eager", "cuda", head_dim=8) == "eager"
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve("fast", "cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eager_additive_mask_matches_the_bool_mask(dtype):
    """The decoding step's additive float rows (0 / the lowest float) give eager attention's output
    under the bool mask, rows of one query as a cached step has them, in fp32 and under bf16 autocast."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 3, n, 8, generator=g) for n in (1, 9, 9))
    allowed = torch.rand(4, 1, 1, 9, generator=g) < 0.5
    allowed[..., 0] = True  # every row sees a key
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo().min)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        want, got = attend(q, k, v, allowed, "eager"), attend(q, k, v, additive, "eager")
    torch.testing.assert_close(got, want, rtol=0, atol=0)
