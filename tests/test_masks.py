import pytest
import torch

import masks

# DESIGN.md, "The masks", src=3, tgt=3, literally.
INDEPENDENT_6x6 = torch.tensor(
    [
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1, 1],
    ],
    dtype=torch.bool,
)
UNIAE_6x6 = torch.tensor(
    [
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 0, 0, 1, 0, 0],
        [1, 0, 0, 1, 1, 0],
        [1, 0, 0, 1, 1, 1],
    ],
    dtype=torch.bool,
)


def test_design_matrices_literally():
    assert torch.equal(masks.materialize(masks.independent(3), 6, 6), INDEPENDENT_6x6[None])
    assert torch.equal(masks.materialize(masks.uniae(3), 6, 6), UNIAE_6x6[None])


def test_source_padding_hides_padding_keys_per_example():
    lengths = torch.tensor([3, 2, 1])
    m = masks.materialize(masks.uniae(3, lengths), 6, 6, batch=3)
    for b, n in enumerate(lengths.tolist()):
        expected = UNIAE_6x6.clone()
        expected[:, n:3] = False  # source keys past the length, seen by no query
        assert torch.equal(m[b], expected), b
    # independent: same padding, no key 0 for targets
    m = masks.materialize(masks.independent(3, lengths), 6, 6, batch=3)
    expected = INDEPENDENT_6x6.clone()
    expected[:, 1:3] = False
    assert torch.equal(m[2], expected)


def test_composition_matches_elementwise_logic():
    a, b = masks.source_block(3), masks.target_causal(3)
    ma, mb = masks.materialize(a, 6, 6), masks.materialize(b, 6, 6)
    assert torch.equal(masks.materialize(masks.or_masks(a, b), 6, 6), ma | mb)
    assert torch.equal(masks.materialize(masks.and_masks(a, b), 6, 6), ma & mb)
    assert not (ma & mb).any()  # the halves never overlap
    assert torch.equal(
        masks.materialize(masks.or_masks(masks.independent(3), masks.target_sees_cls(3)), 6, 6), UNIAE_6x6[None]
    )


def test_materialize_matches_torch_create_mask():
    from torch.nn.attention.flex_attention import create_mask

    lengths = torch.tensor([5, 2])
    for factory in (masks.independent, masks.uniae):
        mod = factory(5, lengths)
        ref = create_mask(mod, 2, 1, 12, 12, device="cpu")[:, 0]
        assert torch.equal(masks.materialize(mod, 12, 12, batch=2), ref)


def test_factories_check_arguments():
    with pytest.raises(ValueError, match="src_len"):
        masks.uniae(0)
    with pytest.raises(ValueError, match="src_lengths"):
        masks.independent(3, torch.tensor([4]))
    with pytest.raises(ValueError, match="src_lengths"):
        masks.independent(3, torch.tensor([0]))


def test_block_mask_densifies_to_the_same_matrix():
    lengths = torch.tensor([7, 3])
    mod = masks.uniae(16, lengths)
    bm = masks.block_mask(mod, 2, 32, 32, "cpu")
    assert bm.BLOCK_SIZE[0] <= 16  # fits the layout: blocks never straddle source and target
    dense = bm.to_dense().bool()  # block granularity: every allowed entry lies in a kept block
    full = masks.materialize(mod, 32, 32, batch=2)
    bs = bm.BLOCK_SIZE[0]
    blocks = full.view(2, 32 // bs, bs, 32 // bs, bs).any(-1).any(2)
    assert torch.equal(dense[:, 0], blocks)
