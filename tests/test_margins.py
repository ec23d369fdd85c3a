"""The margin math against brute-force loops, gradcheck, and degenerate inputs."""

import pytest
import torch

from hf_mmr import minimal_margin_scores, mmr_penalty, squared_radius
from hf_mmr.margins import MARGIN_EPS, margin_summary


def brute_force_penalty(h, W, y, z, k):
    """MMR = mean_i mean_{j in J_i} R^2 ||w_{y_i} - w_j||^2, looping over examples and classes."""
    R = max(float(torch.linalg.norm(row)) for row in h)
    total = 0.0
    for i in range(h.shape[0]):
        wrong = sorted((c for c in range(W.shape[0]) if c != int(y[i])), key=lambda c: -float(z[i, c]))[:k]
        total += sum(R**2 * float(((W[y[i]] - W[j]) ** 2).sum()) for j in wrong) / k
    return total / h.shape[0]


def brute_force_mms(z, W):
    """MMS_i = min_{j != p_i} (z_p - z_j) / ||w_p - w_j||, looping over examples and classes."""
    scores = []
    for i in range(z.shape[0]):
        p = int(torch.argmax(z[i]))
        scores.append(
            min(float((z[i, p] - z[i, j]) / torch.linalg.norm(W[p] - W[j])) for j in range(W.shape[0]) if j != p)
        )
    return torch.tensor(scores, dtype=torch.float64)


def brute_force_margin_penalty(h, W, z, k, R=None):
    """MMR = R / mean_i m_i, m_i the mean of the k smallest (z_p - z_j) / ||w_p - w_j||, in scalar ops.

    Written with one autograd-tracked scalar at a time, so that its gradient is an independent
    reference for the vectorized one.
    """
    if R is None:
        R = max(torch.sqrt(sum(h[i, a] ** 2 for a in range(h.shape[1]))) for i in range(h.shape[0]))
    margins = []
    for i in range(h.shape[0]):
        p = max(range(W.shape[0]), key=lambda c: float(z[i, c].detach()))
        distances = []
        for j in range(W.shape[0]):
            if j != p:
                gap = torch.sqrt(sum((W[p, a] - W[j, a]) ** 2 for a in range(W.shape[1])))
                distances.append((z[i, p] - z[i, j]) / gap)
        nearest = sorted(distances, key=float)[:k]
        margins.append(sum(nearest) / k)
    return R / (sum(margins) / len(margins))


def random_head(n, c, d, seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=torch.float64)
    W = torch.randn(c, d, generator=g, dtype=torch.float64)
    b = torch.randn(c, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    return h, W, b, y


@pytest.mark.parametrize("c", [2, 3, 5, 10])
def test_penalty_matches_brute_force_for_every_k(c):
    h, W, b, y = random_head(9, c, 6, seed=c)
    z = h @ W.T + b
    for k in range(1, c):
        got = mmr_penalty(h, W, y, logits=z, top_k=k)
        assert got.item() == pytest.approx(brute_force_penalty(h, W, y, z, k), rel=1e-10)


def test_penalty_with_k1_is_squared_radius_times_gap_to_strongest_wrong_class():
    h, W, b, y = random_head(7, 4, 5, seed=0)
    z = h @ W.T + b
    R = h.norm(dim=1).max()
    wrong = z.clone()
    wrong[torch.arange(7), y] = -float("inf")
    j = wrong.argmax(dim=1)
    expected = ((R * (W[y] - W[j]).norm(dim=1)) ** 2).mean()
    assert mmr_penalty(h, W, y, logits=z).item() == pytest.approx(expected.item(), rel=1e-12)


def test_penalty_defaults_to_bias_free_logits_and_explicit_radius():
    h, W, _, y = random_head(6, 3, 4, seed=1)
    assert mmr_penalty(h, W, y).item() == pytest.approx(brute_force_penalty(h, W, y, h @ W.T, 1), rel=1e-12)
    ratio = mmr_penalty(h, W, y, radius=2.0) / mmr_penalty(h, W, y, radius=1.0)
    assert ratio.item() == pytest.approx(4.0)


@pytest.mark.parametrize("c", [2, 3, 5, 10])
def test_mms_matches_brute_force(c):
    h, W, b, _ = random_head(11, c, 6, seed=10 + c)
    z = h @ W.T + b
    torch.testing.assert_close(minimal_margin_scores(z, W), brute_force_mms(z, W), rtol=1e-10, atol=1e-12)


def test_mms_is_the_euclidean_distance_to_the_decision_boundary():
    h, W, b, _ = random_head(5, 2, 3, seed=3)
    z = h @ W.T + b
    mms = minimal_margin_scores(z, W)
    # Moving each h along the normal of the boundary by MMS (plus a hair) flips the prediction.
    p = z.argmax(dim=1)
    normal = (W[1 - p] - W[p]) / (W[1 - p] - W[p]).norm(dim=1, keepdim=True)
    moved = h + normal * (mms[:, None] * (1 + 1e-6))
    assert torch.all((moved @ W.T + b).argmax(dim=1) != p)
    just_short = h + normal * (mms[:, None] * (1 - 1e-6))
    assert torch.all((just_short @ W.T + b).argmax(dim=1) == p)


@pytest.mark.parametrize("c,k", [(2, 1), (3, 2), (5, 3)])
def test_penalty_gradcheck(c, k):
    h, W, b, y = random_head(4, c, 3, seed=20 + c)
    h.requires_grad_(True)
    W.requires_grad_(True)
    # Logits from fresh values so that the ranking (a non-differentiable choice) stays fixed.
    z = (h @ W.T + b).detach()
    assert torch.autograd.gradcheck(lambda h, W: mmr_penalty(h, W, y, logits=z, top_k=k), (h, W))


@pytest.mark.parametrize("c", [2, 4])
def test_mms_gradcheck(c):
    h, W, b, _ = random_head(5, c, 3, seed=30 + c)
    z = (h @ W.T + b).requires_grad_(True)
    W.requires_grad_(True)
    assert torch.autograd.gradcheck(minimal_margin_scores, (z, W))


def test_equal_class_rows_and_zero_features_stay_finite():
    W = torch.ones(3, 4, requires_grad=True)  # every pairwise distance is zero
    h = torch.zeros(5, 4, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 1])
    z = h @ W.T + torch.tensor([0.0, 1.0, 2.0])
    penalty = mmr_penalty(h, W, y, logits=z)
    mms = minimal_margin_scores(z, W)
    assert penalty.item() == 0.0
    assert torch.isfinite(mms).all()
    (penalty + mms.sum()).backward()
    assert torch.isfinite(h.grad).all() and torch.isfinite(W.grad).all()


def test_zero_features_give_zero_radius_and_finite_gradient():
    h = torch.zeros(3, 4, requires_grad=True)
    r2 = squared_radius(h)
    r2.backward()
    assert r2.item() == 0.0 and torch.equal(h.grad, torch.zeros_like(h))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_math_runs_in_float32_under_autocast(dtype):
    h, W, _, y = (t.float() if t.is_floating_point() else t for t in random_head(8, 3, 16, seed=5))
    h = h * 1e3  # R^2 ~ 1e7: overflows float16 (max 65504) if computed in it
    for form in ("weights", "margin"):
        with torch.autocast("cpu", dtype=dtype):
            penalty = mmr_penalty(h.to(dtype), W.to(dtype), y, form=form)
            mms = minimal_margin_scores((h @ W.T).to(dtype), W.to(dtype))
        assert penalty.dtype == torch.float32 and mms.dtype == torch.float32
        assert torch.isfinite(penalty) and torch.isfinite(mms).all()
        reference = mmr_penalty(h.to(dtype).float(), W.to(dtype).float(), y, form=form)
        assert penalty.item() == pytest.approx(reference.item(), rel=1e-6)


def test_top_k_out_of_range_is_a_clear_error():
    h, W, _, y = random_head(3, 3, 2, seed=0)
    for k in (0, 3):
        with pytest.raises(ValueError, match="top_k"):
            mmr_penalty(h, W, y, top_k=k)


@pytest.mark.parametrize("c", [2, 3, 5])
def test_margin_form_matches_brute_force_in_value_and_gradient_for_every_k(c):
    for k in range(1, c):
        h, W, b, y = random_head(7, c, 4, seed=100 + 10 * c + k)
        h.requires_grad_(True)
        W.requires_grad_(True)
        got = mmr_penalty(h, W, y, logits=h @ W.T + b, top_k=k, form="margin")
        expected = brute_force_margin_penalty(h, W, h @ W.T + b, k)
        assert got.item() == pytest.approx(expected.item(), rel=1e-6)
        grad_got = torch.autograd.grad(got, (h, W))
        grad_expected = torch.autograd.grad(expected, (h, W))
        for a, e in zip(grad_got, grad_expected):
            torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-12)


def test_margin_form_ignores_labels_and_is_radius_over_mean_mms():
    h, W, b, y = random_head(9, 4, 5, seed=3)
    z = h @ W.T + b
    expected = h.norm(dim=1).max() / minimal_margin_scores(z, W).mean()
    other_labels = (y + 1) % 4
    for labels in (y, other_labels):
        got = mmr_penalty(h, W, labels, logits=z, form="margin")
        assert got.item() == pytest.approx(expected.item(), rel=1e-12)


def test_margin_form_is_scale_free_and_takes_the_given_radius():
    h, W, _, y = random_head(6, 3, 4, seed=4)
    base = mmr_penalty(h, W, y, form="margin")
    # Scaling the features scales R and every margin alike: the ratio does not move.
    assert mmr_penalty(h * 7.0, W, y, form="margin").item() == pytest.approx(base.item(), rel=1e-10)
    # Scaling the head scales the logits and the row distances alike: no change either.
    assert mmr_penalty(h, W * 3.0, y, form="margin").item() == pytest.approx(base.item(), rel=1e-10)
    given = mmr_penalty(h, W, y, form="margin", radius=2.0) / mmr_penalty(h, W, y, form="margin", radius=1.0)
    assert given.item() == pytest.approx(2.0)
    # A detached radius stops its gradient: the features then get only the margins' gradient.
    h.requires_grad_(True)
    radius = h.norm(dim=1).max()
    (with_radius,) = torch.autograd.grad(mmr_penalty(h, W, y, form="margin", radius=radius), h)
    (without,) = torch.autograd.grad(mmr_penalty(h, W, y, form="margin", radius=radius.detach()), h)
    assert not torch.allclose(with_radius, without)
    nonmax = h.norm(dim=1).argsort()[:-1]  # rows that do not hold the radius
    assert torch.allclose(with_radius[nonmax], without[nonmax])


@pytest.mark.parametrize("c,k", [(2, 1), (3, 2), (5, 1), (5, 3)])
def test_margin_form_gradcheck(c, k):
    h, W, b, y = random_head(4, c, 3, seed=40 + c + k)
    h.requires_grad_(True)
    W.requires_grad_(True)
    bias = b.detach()
    assert torch.autograd.gradcheck(
        lambda h, W: mmr_penalty(h, W, y, logits=h @ W.T + bias, top_k=k, form="margin"), (h, W)
    )


def test_margin_form_stays_finite_when_every_example_sits_on_a_boundary():
    W = torch.eye(3, requires_grad=True)
    h = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]], requires_grad=True)  # two tied logits each
    y = torch.tensor([0, 1])
    penalty = mmr_penalty(h, W, y, form="margin")
    radius = h.detach().norm(dim=1).max()
    assert penalty.item() == pytest.approx((radius / MARGIN_EPS).item(), rel=1e-5)
    penalty.backward()
    assert torch.isfinite(h.grad).all() and torch.isfinite(W.grad).all()
    # Equal class rows and zero features: no division by zero anywhere.
    W_equal = torch.ones(3, 4, requires_grad=True)
    zero = torch.zeros(5, 4, requires_grad=True)
    degenerate = mmr_penalty(zero, W_equal, torch.zeros(5, dtype=torch.long), form="margin", top_k=2)
    degenerate.backward()
    assert torch.isfinite(degenerate) and torch.isfinite(zero.grad).all() and torch.isfinite(W_equal.grad).all()


@pytest.mark.parametrize("form", ["weights", "margin"])
def test_penalty_sums_over_processes_like_one_global_batch(form):
    """Two halves whose sums are added up, as an all-reduce would, give the penalty of the whole batch."""
    h, W, b, y = random_head(10, 4, 5, seed=8)
    z = h @ W.T + b
    whole = mmr_penalty(h, W, y, z, top_k=2, form=form)
    radius = h.norm(dim=1).max()
    halves = [slice(0, 3), slice(3, 10)]  # unequal shares, as the last batch of an epoch may have
    per_half = [
        mmr_penalty(h[s], W, y[s], z[s], top_k=2, radius=radius, form=form, sum_over_processes=lambda t: t)
        for s in halves
    ]
    # Each process's stand-in sums only its own half; the real all-reduce returns the sum of both.
    totals = []

    def record(t):
        totals.append(t)
        return t

    for s in halves:
        mmr_penalty(h[s], W, y[s], z[s], top_k=2, radius=radius, form=form, sum_over_processes=record)
    combined = totals[0] + totals[1]
    mean = combined[0] / combined[1]
    expected = radius / mean if form == "margin" else radius**2 * mean
    assert expected.item() == pytest.approx(whole.item(), rel=1e-12)
    assert per_half[0].item() != pytest.approx(whole.item(), rel=1e-3)  # a local mean is not the global one


def test_margin_summary_is_median_mms_and_its_ratio_to_the_largest_norm():
    scores = torch.tensor([0.5, 0.1, 0.3, 2.0, 0.2])
    norms = torch.tensor([1.0, 4.0, 2.0, 3.0, 1.0])
    assert margin_summary(scores, norms) == pytest.approx({"mms_median": 0.3, "relative_margin_median": 0.075})
