"""Attention masks for UniVAE as FlexAttention-style `mask_mod(b, h, q_idx, kv_idx) -> bool`.

True means "query q_idx may attend to key kv_idx". The joined sequence holds the source in its
first `src_len` positions and the target after it (DESIGN.md, "The sequence"). Each factory checks
its arguments and returns a pure function; the same function gives the dense bool matrix for the
eager and SDPA backends (`materialize`) and the BlockMask for FlexAttention (`block_mask`).

Every mask_mod is written with broadcasting tensor ops only (no Python branching on values), so it
can be called on a whole index grid at once, under vmap, and inside FlexAttention's kernels.
"""

import torch
from torch.nn.attention.flex_attention import and_masks, create_block_mask, or_masks

__all__ = [
    "and_masks",
    "or_masks",
    "source_block",
    "target_causal",
    "target_sees_cls",
    "source_padding",
    "independent",
    "uniae",
    "materialize",
    "block_mask",
    "default_block_size",
]


def _check_src_len(src_len):
    if not isinstance(src_len, int) or src_len < 1:
        raise ValueError(f"src_len must be a positive int, got {src_len!r}")


def source_block(src_len):
    """Source queries see every source key; nothing else."""
    _check_src_len(src_len)

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx < src_len) & (kv_idx < src_len)

    return mask_mod


def target_causal(src_len):
    """Target queries see target keys at or before themselves; nothing else."""
    _check_src_len(src_len)

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= src_len) & (kv_idx >= src_len) & (kv_idx <= q_idx)

    return mask_mod


def target_sees_cls(src_len):
    """Target queries see key 0, the source [CLS] that carries the latent in upper layers."""
    _check_src_len(src_len)

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= src_len) & (kv_idx == 0)

    return mask_mod


def source_padding(src_len, src_lengths):
    """Hide source keys at or past each example's length (LongTensor [B]); target keys untouched.

    Target padding needs no key mask: target attention is causal, so padding keys only ever sit
    after the real tokens and are seen by padding queries alone, whose outputs the loss ignores.
    """
    _check_src_len(src_len)
    if src_lengths.dim() != 1 or src_lengths.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"src_lengths must be an integer tensor of shape [B], got {src_lengths.dtype} {tuple(src_lengths.shape)}"
        )
    # Reading values back is a host sync (a device sync on CUDA, a graph break under torch.compile)
    # on every forward: check them only where that is free.
    if src_lengths.device.type == "cpu" and not torch.compiler.is_compiling():
        if bool((src_lengths < 1).any()) or bool((src_lengths > src_len).any()):
            raise ValueError(f"src_lengths must lie in [1, {src_len}], got {src_lengths.tolist()}")

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx >= src_len) | (kv_idx < src_lengths[b])

    return mask_mod


def independent(src_len, src_lengths=None):
    """Lower layers: source <-> source fully, target causal within target, nothing across.

    q\\k  s0 s1 s2 t0 t1 t2
    s0    1  1  1  0  0  0
    s1    1  1  1  0  0  0
    s2    1  1  1  0  0  0
    t0    0  0  0  1  0  0
    t1    0  0  0  1  1  0
    t2    0  0  0  1  1  1
    """
    mask_mod = or_masks(source_block(src_len), target_causal(src_len))
    if src_lengths is not None:
        mask_mod = and_masks(mask_mod, source_padding(src_len, src_lengths))
    return mask_mod


def uniae(src_len, src_lengths=None):
    """Upper layers: `independent`, plus every target query sees key 0 (the source [CLS]).

    q\\k  s0 s1 s2 t0 t1 t2
    s0    1  1  1  0  0  0
    s1    1  1  1  0  0  0
    s2    1  1  1  0  0  0
    t0    1  0  0  1  0  0
    t1    1  0  0  1  1  0
    t2    1  0  0  1  1  1
    """
    # Key 0 is never padding (every sentence starts with [CLS]), so the padding mask can stay inside.
    return or_masks(independent(src_len, src_lengths), target_sees_cls(src_len))


def materialize(mask_mod, q_len, kv_len, batch=1, device=None):
    """Dense BoolTensor [batch, q_len, kv_len] of `mask_mod` on the full index grid.

    Broadcasting instead of torch's vmap-based `create_mask`: one call over the grid, which is
    what the eager and SDPA backends pay every forward.
    """
    b = torch.arange(batch, device=device).view(batch, 1, 1)
    h = torch.zeros((), dtype=torch.long, device=device)
    q_idx = torch.arange(q_len, device=device).view(1, q_len, 1)
    kv_idx = torch.arange(kv_len, device=device).view(1, 1, kv_len)
    return mask_mod(b, h, q_idx, kv_idx).expand(batch, q_len, kv_len)


def default_block_size(q_len, kv_len, device):
    """block_mask's block size. CUDA: 128, because FlexAttention's CUDA kernels tile queries and
    keys by up to 128 and refuse a BlockMask whose blocks their tiles do not divide (torch 2.13:
    NoValidChoicesError; the Hopper bf16 backward tiles by 64, and for q_len < 128 the forward's
    flex-decoding kernel tiles queries by next_power_of_2(q_len)); docs/performance.md, "CUDA
    path", says what has run on a GPU. CPU: the largest power of two, at least 16, that fits the source half."""
    if torch.device(device).type == "cuda":
        return 128
    block_size = 16
    while block_size * 2 <= min(q_len, kv_len) // 2 and block_size < 128:
        block_size *= 2
    return block_size


def block_mask(mask_mod, batch, q_len, kv_len, device, block_size=None):
    """FlexAttention BlockMask for `mask_mod`; `batch=None` when the mask does not depend on b.

    FlexAttention's default 128-token blocks are longer than the whole joined sequence at maxlen
    32, so nothing would ever be skipped; by default (`default_block_size`) use the largest power
    of two, at least 16, that divides into the source half, so masked source/target blocks are
    really skipped -- on CPU. On CUDA the default is torch's 128.
    """
    if block_size is None:
        block_size = default_block_size(q_len, kv_len, device)
    return create_block_mask(mask_mod, batch, None, q_len, kv_len, device=device, BLOCK_SIZE=block_size)
