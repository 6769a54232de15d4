"""One attention function with explicit backends.

    eager  explicit masked softmax in fp32-safe form; the reference the others are tested against
    sdpa   F.scaled_dot_product_attention with the dense bool mask
    flex   FlexAttention with a BlockMask, compiled once at module level
    split  UniVAE's two masks decomposed into plain attention calls that need no dense mask:
           source: bidirectional SDPA with key padding; target, lower layers: is_causal;
           target, latent layers: queries [q_cls; q_tgt], keys [k_cls; k_tgt], is_causal, row 0 dropped.
           Only unmasked work is done, on the fused/flash kernels.
    auto   flex on CUDA; on CPU eager for bf16 training, split otherwise (`resolve`, measured)

eager and sdpa take a dense bool mask broadcastable to (B, H, Q, K); flex takes a BlockMask;
split takes a `SplitLayout` (it only knows UniVAE's independent/uniae layouts).
A query row with no allowed key returns zeros in every backend (FlexAttention's convention);
UniVAE's own masks never produce such a row, but a fully padded input to the plain encoder would.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

BACKENDS = ("eager", "sdpa", "flex", "split")


@dataclass
class SplitLayout:
    """What the split backend needs to know of a joined layout instead of a mask:
    the first src_len positions are the source (src_lengths (B,) real tokens each, None = no
    padding), the rest the target; sees_cls: target queries also see key 0 (masks.uniae)."""
    src_len: int
    src_lengths: torch.Tensor | None
    sees_cls: bool

# Compiled lazily on first call; dynamic=False because training and decoding use fixed shapes.
# Each distinct shape (trimmed batch length, encode vs decode) is one specialisation; past dynamo's
# default limit of 8 it would silently fall back to the unfused, fully materialised path.
_flex_compiled = torch.compile(flex_attention, dynamic=False)
torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)


def resolve(backend, device):
    """'auto' -> the backend to use on `device`; others pass through after a check."""
    if backend == "auto":
        if torch.device(device).type == "cuda":
            return "flex"
        # CPU, measured with bench/attention.py and bench/train_step.py (README, "Performance"):
        # under bf16 autocast with autograd, eager beats sdpa 1.1-1.7x (sdpa's CPU bf16 backward is
        # slow); otherwise split is fastest and needs no mask at all.
        bf16_training = (torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
                         and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return "eager" if bf16_training else "split"
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
    if backend == "split":
        if isinstance(mask, SplitLayout):
            return _split_attend(q, k, v, mask, dropout_p)
        # Any other mask (a plain encoder's padding, a decode step's cache rows) is not a joined
        # layout; split then means sdpa with that dense mask.
        return attend(q, k, v, mask, "sdpa", dropout_p)
    raise ValueError(f"unknown attention backend {backend!r}")


def _split_attend(q, k, v, layout, dropout_p):
    """masks.independent / masks.uniae as two attention calls, source then target (see module doc)."""
    s = layout.src_len
    key_padding = None
    if layout.src_lengths is not None:  # (B, 1, 1, src_len): hide source padding keys
        key_padding = (torch.arange(s, device=q.device) < layout.src_lengths[:, None])[:, None, None, :]
    src = F.scaled_dot_product_attention(q[:, :, :s], k[:, :, :s], v[:, :, :s], attn_mask=key_padding, dropout_p=dropout_p)
    q_t, k_t, v_t = q[:, :, s:], k[:, :, s:], v[:, :, s:]
    T = q_t.shape[2]
    if T == 0:  # a source-only run (UniVAE.posterior_params)
        return src
    if layout.sees_cls:
        # keys [cls; tgt]: target query i sees keys 0..i+1. As a square causal call over queries
        # [q_cls; q_tgt] (row 0's output dropped) this is plain is_causal: fused kernels, and unlike
        # causal_lower_right (a tensor subclass) it traces under torch.compile and dispatch modes.
        q_t = torch.cat([q[:, :, :1], q_t], dim=2)
        k_t, v_t = torch.cat([k[:, :, :1], k_t], dim=2), torch.cat([v[:, :, :1], v_t], dim=2)
        tgt = F.scaled_dot_product_attention(q_t, k_t, v_t, is_causal=True, dropout_p=dropout_p)[:, :, 1:]
    else:
        tgt = F.scaled_dot_product_attention(q_t, k_t, v_t, is_causal=True, dropout_p=dropout_p)
    return torch.cat([src, tgt], dim=2)
