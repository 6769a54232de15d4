"""Summed cross-entropy that keeps two (N, V) buffers alive instead of four.

F.cross_entropy saves its log-softmax (N x V floats) for the backward pass, which then allocates
the gradient of that log-softmax and the gradient of the logits: beside the logits themselves,
three more N x V tensors, 43 MB each for a batch of 64 sentences of 32 characters and the bundled
5,512-token vocab. They are the largest tensors of a training step, and their size changes with
every batch's trimmed length, so the C allocator's heap grows to fit the largest mix it has seen.

summed_cross_entropy saves the per-row log-sum-exp (N floats) beside the logits instead, and its
backward builds the gradient in one new buffer:

    d loss / d logits[i] = grad * (softmax(logits[i]) - onehot(labels[i]))   (0 for ignored rows)
                         = grad * (exp(logits[i] - lse[i]) - onehot(labels[i]))

The logits are left as they are (UniVAEOutput returns them). Numerically it is the log-sum-exp
form of the same sum.
"""

import torch

ROWS_PER_CHUNK = 256  # rows per log-sum-exp pass: its temporary (rows x V) stays a few MB


class _SummedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, ignore_index):
        counted = labels != ignore_index
        safe = torch.where(counted, labels, 0)
        lse = torch.cat([torch.logsumexp(rows, dim=-1) for rows in logits.split(ROWS_PER_CHUNK)])
        picked = logits.gather(1, safe[:, None])[:, 0]
        ctx.save_for_backward(logits, lse, safe, counted)
        return ((lse - picked) * counted).sum()

    @staticmethod
    def backward(ctx, grad):
        logits, lse, safe, counted = ctx.saved_tensors
        g = (logits - lse[:, None]).exp_()  # softmax
        g.scatter_add_(1, safe[:, None], torch.full_like(lse[:, None], -1.0))
        return g.mul_((counted * grad)[:, None]), None, None


def summed_cross_entropy(logits, labels, ignore_index=-100):
    """sum over rows of -log softmax(logits)[label], rows whose label is ignore_index left out:
    logits (N, V) float, labels (N,) int -> a scalar. The same value and gradient as
    F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum"), with less memory
    (module docstring)."""
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (N, V) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    return _SummedCrossEntropy.apply(logits, labels, ignore_index)
