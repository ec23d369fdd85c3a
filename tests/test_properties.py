"""Property-based tests of the margin math (hypothesis)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_mmr import minimal_margin_scores, mmr_penalty


@st.composite
def heads(draw):
    n = draw(st.integers(1, 8))
    c = draw(st.integers(2, 6))
    d = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    h = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    W = torch.randn(c, d, generator=g, dtype=torch.float64)
    b = torch.randn(c, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    k = draw(st.integers(1, c - 1))
    return h, W, b, y, k, g


@settings(max_examples=60, deadline=None)
@given(heads(), st.floats(-1e3, 1e3))
def test_mms_is_invariant_to_a_constant_added_to_all_logits(head, shift):
    h, W, b, _, _, _ = head
    z = h @ W.T + b
    torch.testing.assert_close(
        minimal_margin_scores(z + shift, W), minimal_margin_scores(z, W), rtol=1e-9, atol=1e-9 * (1 + abs(shift))
    )


@settings(max_examples=60, deadline=None)
@given(heads(), st.floats(0.01, 100.0))
def test_penalty_scales_with_r_squared(head, factor):
    h, W, b, y, k, _ = head
    z = h @ W.T + b
    base = mmr_penalty(h, W, y, logits=z, top_k=k)
    scaled = mmr_penalty(h * factor, W, y, logits=z, top_k=k)  # same ranking, R multiplied by factor
    torch.testing.assert_close(scaled, base * factor**2, rtol=1e-9, atol=1e-300)


@settings(max_examples=60, deadline=None)
@given(heads())
def test_permuting_the_batch_permutes_scores_and_keeps_the_penalty(head):
    h, W, b, y, k, g = head
    z = h @ W.T + b
    perm = torch.randperm(h.shape[0], generator=g)
    torch.testing.assert_close(minimal_margin_scores(z[perm], W), minimal_margin_scores(z, W)[perm])
    torch.testing.assert_close(mmr_penalty(h[perm], W, y[perm], z[perm], k), mmr_penalty(h, W, y, z, k))


@settings(max_examples=60, deadline=None)
@given(heads())
def test_mms_is_non_negative_and_zero_exactly_on_a_tie(head):
    h, W, b, _, _, _ = head
    z = h @ W.T + b
    mms = minimal_margin_scores(z, W)
    assert (mms >= 0).all() and torch.isfinite(mms).all()
    top2 = z.topk(2, dim=1).values
    tied = top2[:, 0] == top2[:, 1]
    assert torch.equal(mms == 0, tied)
    # Force a tie between the two best classes of the first example: its score becomes exactly zero.
    z_tied = z.clone()
    first, second = z[0].topk(2).indices
    z_tied[0, second] = z_tied[0, first]
    assert minimal_margin_scores(z_tied, W)[0] == 0
