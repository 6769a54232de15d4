"""One attention function with explicit backends.

    eager  explicit masked softmax in fp32-safe form; the reference the others are tested against
    sdpa   F.scaled_dot_product_attention with the dense bool mask
    flex   FlexAttention with a BlockMask, compiled once at module level
    split  UniVAE's two masks decomposed into one attention call per half, so that no (S, S) mask
           is built and no masked block is computed: source queries see the source keys (key
           padding hidden); target queries see the target causally, plus key 0 (the source [CLS])
           in latent layers. A layout may also drop source query rows whose outputs nobody reads
           (`SplitLayout.src_queries`, UniVAE.layer_masks). Each call runs on SDPA, or on the eager
           formula under CPU bf16 training, where SDPA's backward is the slower one (measured).
    auto   flex on CUDA; split on CPU (`resolve`, measured)

eager and sdpa take a dense bool mask broadcastable to (B, H, Q, K); flex takes a BlockMask;
split takes a `SplitLayout` (it only knows UniVAE's independent/uniae layouts).
A query row with no allowed key returns zeros in every backend (FlexAttention's convention);
UniVAE's own masks never produce such a row, but a fully padded input to the plain encoder would.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

BACKENDS = ("eager", "sdpa", "flex", "split")


@dataclass
class SplitLayout:
    """What the split backend needs to know of a joined layout instead of a mask:
    the first src_len positions are the source (src_lengths (B,) real tokens each, None = no
    padding), the rest the target; sees_cls: target queries also see key 0 (masks.uniae).

    src_queries: how many source query rows (from row 0) the layer computes; None = all. Keys and
    values always cover every row. A layer under src_queries=k returns k + T rows (`keep`): the
    kept source rows, then the target, so the next layer's layout has src_len=k."""

    src_len: int
    src_lengths: torch.Tensor | None
    sees_cls: bool
    src_queries: int | None = None
    # the small masks the calls take, built on first use and shared by the layouts of one forward
    # (UniVAE.layer_masks passes one dict to all), so no layer rebuilds them
    masks: dict = field(default_factory=dict, repr=False, compare=False)

    def key_padding(self, device):
        """(B, 1, 1, src_len) bool, True on real source keys; None without padding."""
        if self.src_lengths is None:
            return None
        key = ("padding", self.src_len)
        if key not in self.masks:
            self.masks[key] = (torch.arange(self.src_len, device=device) < self.src_lengths[:, None])[:, None, None, :]
        return self.masks[key]

    def causal(self, T, device):
        """(T, T) causal, or (T, T + 1) with key 0 (the source [CLS]) first when sees_cls."""
        key = ("causal", T, self.sees_cls)
        if key not in self.masks:
            self.masks[key] = torch.ones(T, T + self.sees_cls, dtype=torch.bool, device=device).tril(int(self.sees_cls))
        return self.masks[key]

    def keep(self, x, dim):
        """The rows of x (along dim) whose outputs the layer computes: the first src_queries source
        rows and every target row."""
        if self.src_queries is None or self.src_queries == self.src_len:
            return x
        tail = x.narrow(dim, self.src_len, x.shape[dim] - self.src_len)
        if self.src_queries == 0:
            return tail
        return torch.cat([x.narrow(dim, 0, self.src_queries), tail], dim)


# Compiled lazily on first call; dynamic=False because training and decoding use fixed shapes.
# Each distinct shape (trimmed batch length, encode vs decode) is one specialisation; past dynamo's
# default limit of 8 it would silently fall back to the unfused, fully materialised path.
_flex_compiled = torch.compile(flex_attention, dynamic=False)
torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)


FLEX_CUDA_MIN_HEAD_DIM = 16  # torch's CUDA FlexAttention kernels refuse smaller heads (NotImplementedError)


def resolve(backend, device, head_dim=None):
    """'auto' -> the backend to use on `device`; others pass through after a check."""
    if backend == "auto":
        # CPU, measured with bench/attention.py and bench/train_step.py (docs/performance.md):
        # split does only the unmasked work and lets the training forward skip the source rows
        # nobody reads (UniVAE.layer_masks). CUDA: flex, where its kernels take the head size.
        if torch.device(device).type == "cuda":
            return "flex" if head_dim is None or head_dim >= FLEX_CUDA_MIN_HEAD_DIM else "sdpa"
        return "split"
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of auto, {', '.join(BACKENDS)}")
    return backend


def _cpu_bf16_autocast(device):
    return (
        device.type == "cpu" and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


def _kernel(q):
    """The kernel split runs its calls on: under CPU bf16 autocast with autograd the eager formula
    beats SDPA (whose CPU bf16 backward is slow, bench/attention.py); SDPA everywhere else."""
    return "eager" if _cpu_bf16_autocast(q.device) and torch.is_grad_enabled() else "sdpa"


STEP_EAGER_ROWS = 16


def step_backend(backend, rows, device):
    """The backend of a cached decoding step (one query per row over <= maxlen + 1 keys): eager or sdpa.

    Under CPU bf16 autocast the eager formula's two small matmuls beat SDPA's flash kernel for a
    batch of STEP_EAGER_ROWS rows or more; below that SDPA is the faster one (docs/performance.md
    has the timings). SDPA everywhere else; an eager model stays eager."""
    if backend == "eager":
        return "eager"
    return "eager" if _cpu_bf16_autocast(device) and rows >= STEP_EAGER_ROWS else "sdpa"


def attend(q, k, v, mask, backend, dropout_p=0.0):
    """q (B, H, Q, D), k and v (B, H, K, D) -> (B, H, Q, D).

    eager also takes an additive float mask (0 where allowed, the dtype's lowest where not) for rows
    that each see a key: a decoding step's cache rows (CachedDecoder), one add instead of the bool
    mask's fills and checks."""
    if backend == "eager":
        scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        if mask.is_floating_point():
            return F.dropout((scores + mask).softmax(dim=-1), p=dropout_p) @ v
        assert mask.dtype == torch.bool, "eager attention takes a dense bool or an additive float mask"
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
        # FlexAttention has no attention dropout; the flex backend trains without it.
        return _flex_compiled(q, k, v, block_mask=mask)
    if backend == "split":
        if isinstance(mask, SplitLayout):
            return _split_attend(q, k, v, mask, dropout_p)
        # Any other mask (a plain encoder's padding, a decode step's cache rows) is not a joined
        # layout; split then means its kernel with that dense mask.
        return attend(q, k, v, mask, _kernel(q), dropout_p)
    raise ValueError(f"unknown attention backend {backend!r}")


def _split_attend(q, k, v, layout, dropout_p):
    """masks.independent / masks.uniae as one call per half, source then target (see module doc).
    q holds the rows layout.keep leaves: the first src_queries source rows, then the target."""
    s = layout.src_len
    n_src = s if layout.src_queries is None else layout.src_queries
    kernel = _kernel(q)
    parts = []
    if n_src:  # source queries see the real source keys
        parts.append(_plain(q[:, :, :n_src], k[:, :, :s], v[:, :, :s], layout.key_padding(q.device), kernel, dropout_p))
    T = q.shape[2] - n_src
    if T == 0:  # a source-only run (UniVAE.posterior_params)
        return parts[0]
    q_t, k_t, v_t = q[:, :, n_src:], k[:, :, s:], v[:, :, s:]
    if layout.sees_cls:  # keys [cls; tgt]: target query i sees keys 0..i+1
        if s > 1:
            k_t, v_t = torch.cat([k[:, :, :1], k_t], dim=2), torch.cat([v[:, :, :1], v_t], dim=2)
        else:  # the source is the [CLS] alone: the keys are already [cls; tgt]
            k_t, v_t = k, v
    parts.append(_plain(q_t, k_t, v_t, layout.causal(T, q.device), kernel, dropout_p))
    return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]


def _plain(q, k, v, mask, kernel, dropout_p):
    """Softmax attention with a bool mask (or None) under which every query row sees a key."""
    if kernel == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return F.dropout(scores.softmax(dim=-1), p=dropout_p) @ v
