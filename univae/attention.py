"""One attention function with explicit backends.

    eager  explicit masked softmax in fp32-safe form; the reference the others are tested against
    sdpa   F.scaled_dot_product_attention with the dense bool mask
    flex   FlexAttention with a BlockMask, compiled once at module level
    auto   flex on CUDA, sdpa elsewhere (`resolve`)

eager and sdpa take a dense bool mask broadcastable to (B, H, Q, K); flex takes a BlockMask.
A query row with no allowed key returns zeros in every backend (FlexAttention's convention);
UniVAE's own masks never produce such a row, but a fully padded input to the plain encoder would.
"""
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

BACKENDS = ("eager", "sdpa", "flex")

# Compiled lazily on first call; dynamic=False because training and decoding use fixed shapes.
_flex_compiled = torch.compile(flex_attention, dynamic=False)


def resolve(backend, device):
    """'auto' -> the backend to use on `device`; others pass through after a check."""
    if backend == "auto":
        return "flex" if torch.device(device).type == "cuda" else "sdpa"
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of auto, {', '.join(BACKENDS)}")
    return backend


def attend(q, k, v, mask, backend, dropout_p=0.0):
    """q (B, H, Q, D), k and v (B, H, K, D) -> (B, H, Q, D)."""
    if backend == "eager":
        assert mask.dtype == torch.bool, "eager attention takes a dense bool mask"
        scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        # A finite fill keeps softmax's backward NaN-free on rows with no allowed key; those rows are zeroed below.
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        probs = scores.softmax(dim=-1).masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
        probs = F.dropout(probs, p=dropout_p)
        return probs @ v
    if backend == "sdpa":
        assert mask.dtype == torch.bool, "sdpa attention takes a dense bool mask"
        # torch >= 2.5 returns zeros for rows with no allowed key (tested in tests/test_attention.py).
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    if backend == "flex":
        assert isinstance(mask, BlockMask), "flex attention takes a BlockMask"
        if q.device.type == "cpu" and any(t.requires_grad for t in (q, k, v)):
            if torch.is_grad_enabled():
                raise RuntimeError(
                    "attn='flex' cannot run with autograd on CPU: torch's CPU FlexAttention has no backward. "
                    "Train with --attn sdpa (or auto) on CPU; flex is for CUDA, or CPU inference under torch.no_grad()."
                )
            # Under no_grad nothing will be differentiated, but torch's CPU kernel still refuses inputs
            # that merely carry requires_grad (e.g. activations of a model's parameters).
            q, k, v = q.detach(), k.detach(), v.detach()
        # FlexAttention has no attention dropout; the flex backend trains without it (documented in README).
        return _flex_compiled(q, k, v, block_mask=mask)
    raise ValueError(f"unknown attention backend {backend!r}")
