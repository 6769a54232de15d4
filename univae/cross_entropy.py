"""Summed cross-entropy over a vocab projection's logits, without the (N, V) float32 copies.

Under bf16 autocast the logits come out in bf16. F.cross_entropy on them would need them in
float32 first (a full copy, and its backward converts a full float32 gradient back), then saves
its log-softmax (N x V) for the backward pass, which allocates the gradient of that log-softmax
and the gradient of the logits: beside the logits, up to four more N x V tensors, 37 MB each in
float32 for a batch of 64 sentences of 32 characters and a 4,550-token vocab: the largest tensors
of a training step.

summed_cross_entropy works through the logits a few rows at a time, each chunk upcast to float32
on its own (a temporary that stays in the core's cache): the forward keeps the per-row
log-sum-exp (N floats) beside the logits, and the backward writes the gradient, in the logits'
dtype, into one new buffer:

    d loss / d logits[i] = grad * (softmax(logits[i]) - onehot(labels[i]))   (0 for ignored rows)
                         = grad * (exp(logits[i] - lse[i]) - onehot(labels[i]))

The logits are left as they are (UniVAEOutput returns them). The arithmetic is the float32 one of
upcasting the whole tensor first, so value and gradient are those of F.cross_entropy on
`logits.float()`, the gradient rounded once to the logits' dtype.
"""

import torch


def rows_per_chunk(logits):
    """Rows per pass: on CPU about 256k elements (a float32 chunk of ~1 MB, an L2 cache); on a GPU,
    where each pass is a kernel launch, about 16M."""
    elements = 2**18 if logits.device.type == "cpu" else 2**24
    return max(1, elements // max(1, logits.shape[1]))


def _upcast(rows):
    """A float32 (float64 stays) copy of some rows, free to be overwritten in place."""
    return rows.to(torch.promote_types(rows.dtype, torch.float32), copy=True)


class _SummedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, ignore_index):
        counted = labels != ignore_index
        safe = torch.where(counted, labels, 0)
        lse = torch.cat([torch.logsumexp(_upcast(rows), dim=-1) for rows in logits.split(rows_per_chunk(logits))])
        picked = logits.gather(1, safe[:, None])[:, 0].to(lse.dtype)
        ctx.save_for_backward(logits, lse, safe, counted)
        return ((lse - picked) * counted).sum()

    @staticmethod
    def backward(ctx, grad):
        logits, lse, safe, counted = ctx.saved_tensors
        out = torch.empty_like(logits)
        scale = (counted * grad)[:, None]
        minus_one = torch.full_like(scale, -1.0)
        n = rows_per_chunk(logits)
        for i in range(0, logits.shape[0], n):
            rows = slice(i, i + n)
            g = _upcast(logits[rows]).sub_(lse[rows, None]).exp_()  # softmax
            g.scatter_add_(1, safe[rows, None], minus_one[rows])
            out[rows] = g.mul_(scale[rows])
        return out, None, None


def summed_cross_entropy(logits, labels, ignore_index=-100):
    """sum over rows of -log softmax(logits)[label], rows whose label is ignore_index left out:
    logits (N, V) of any float dtype, labels (N,) int -> a float32 (float64 for float64 logits)
    scalar. The value and gradient of F.cross_entropy(logits.float(), labels,
    ignore_index=ignore_index, reduction="sum"), in a fraction of the memory (module docstring)."""
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (N, V) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    return _SummedCrossEntropy.apply(logits, labels, ignore_index)
