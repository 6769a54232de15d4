"""summed_cross_entropy against F.cross_entropy: the same value and gradient, with less kept."""

import pytest
import torch
import torch.nn.functional as F

from univae.cross_entropy import rows_per_chunk, summed_cross_entropy


def _both(logits, labels):
    """(value, gradient) of F.cross_entropy(reduction="sum") and of summed_cross_entropy."""
    out = []
    for fn in (lambda x: F.cross_entropy(x, labels, reduction="sum"), lambda x: summed_cross_entropy(x * 1, labels)):
        x = logits.clone().requires_grad_()
        loss = fn(x)
        (2.5 * loss).backward()  # a scale on the incoming gradient, as a mean over tokens gives
        out.append((loss.detach(), x.grad))
    return out


def test_value_and_gradient_match_the_reference_over_several_chunks():
    g = torch.Generator().manual_seed(0)
    V = 3001
    N = 2 * rows_per_chunk(torch.empty(0, V)) + 7  # a ragged last chunk
    logits = torch.randn(N, V, generator=g, dtype=torch.float64) * 4
    labels = torch.randint(V, (N,), generator=g)
    labels[::5] = -100
    (ref, ref_grad), (ours, grad) = _both(logits, labels)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)
    assert grad[::5].abs().max() == 0  # ignored rows get no gradient


def test_bf16_logits_give_float32_cross_entropy_and_its_gradient_rounded_once():
    """bf16 logits (as autocast's vocab projection gives them) are upcast a chunk at a time: the value
    is F.cross_entropy's on logits.float(), the gradient its float32 gradient rounded to bf16."""
    g = torch.Generator().manual_seed(1)
    V = 4550
    N = 3 * rows_per_chunk(torch.empty(0, V)) + 5
    logits = (torch.randn(N, V, generator=g) * 4).bfloat16()
    labels = torch.randint(V, (N,), generator=g)
    labels[::3] = -100
    ref_x = logits.clone().requires_grad_()
    ref = F.cross_entropy(ref_x.float(), labels, reduction="sum")
    (ref / 700).backward()
    x = logits.clone().requires_grad_()
    ours = summed_cross_entropy(x, labels)
    (ours / 700).backward()
    assert ours.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)
    # one rounding of nearly the same float32 number: equal, or one bf16 step apart
    torch.testing.assert_close(x.grad.float(), ref_x.grad.float(), rtol=2**-7, atol=1e-12)


def test_every_row_ignored_gives_zero_and_no_gradient():
    logits, labels = torch.randn(4, 9), torch.full((4,), -100)
    (ref, ref_grad), (ours, grad) = _both(logits, labels)
    assert ours == ref == 0 and grad.abs().max() == 0 and ref_grad.abs().max() == 0


def test_large_logits_stay_finite():
    logits = torch.tensor([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([1, 2])
    (ref, ref_grad), (ours, grad) = _both(logits, labels)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(grad, ref_grad)


def test_logits_are_left_as_they_were():
    x = torch.randn(3, 5, requires_grad=True)
    logits = x * 2
    before = logits.detach().clone()
    (summed_cross_entropy(logits, torch.tensor([0, 1, 2])) + logits.pow(2).sum()).backward()
    assert torch.equal(logits.detach(), before)  # UniVAEOutput returns them, read after backward
    torch.testing.assert_close(x.grad, 2 * (torch.softmax(before, -1) - torch.eye(3, 5)) + 8 * x.detach())


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"\(N, V\)"):
        summed_cross_entropy(torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long))
