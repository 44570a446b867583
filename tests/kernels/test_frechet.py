"""kernels/frechet.py: Frechet distance against closed forms and an independent scipy computation,
its invariances, the non-finite cases, and the nearest-neighbour helper against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg
from ultrares.kernels import frechet as FR


def _rand_cov(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / (rank or d) + (0 if rank else 0.1) * np.eye(d)


@pytest.mark.parametrize("method", FR.FD_METHODS)
def test_one_dimensional_closed_form(method):
    # FD of N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2
    fd = FR.frechet_distance_from_stats([1.5], [[4.0]], [-0.5], [[0.25]], method=method)
    assert fd == pytest.approx(2.0**2 + (2.0 - 0.5) ** 2, rel=1e-12)


@pytest.mark.parametrize("method", FR.FD_METHODS)
def test_commuting_covariances_closed_form(method):
    # diagonal covariances commute: tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (sqrt(a) - sqrt(b))^2
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3, 12), rng.uniform(0.1, 3, 12)
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    want = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    # rotate both by the same orthogonal matrix: the closed form is unchanged
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    got = FR.frechet_distance_from_stats(
        q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T, method=method
    )
    assert got == pytest.approx(want, rel=1e-9)


def test_general_covariances_match_scipy_sqrtm_directly():
    rng = np.random.default_rng(1)
    s1, s2 = _rand_cov(rng, 20), _rand_cov(rng, 20)
    mu1, mu2 = rng.standard_normal(20), rng.standard_normal(20)
    ref = float(
        ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)
    )
    for method in FR.FD_METHODS:
        assert FR.frechet_distance_from_stats(mu1, s1, mu2, s2, method=method) == pytest.approx(ref, rel=1e-9)


def test_feature_sets_use_sample_statistics():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((300, 8)), rng.standard_normal((200, 8)) * 1.5 + 0.3
    mu1, mu2 = x.mean(0), y.mean(0)
    c1, c2 = np.cov(x.T), np.cov(y.T)
    ref = float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * linalg.sqrtm(c1 @ c2).real))
    assert FR.frechet_distance(x, y) == pytest.approx(ref, rel=1e-9)
    assert FR.frechet_distance(torch.from_numpy(x).float(), y) == pytest.approx(ref, rel=1e-5)


def test_invariances():
    rng = np.random.default_rng(3)
    x, y = (
        rng.standard_normal((150, 10)),
        rng.standard_normal((120, 10)) @ rng.standard_normal((10, 10)) * 0.5,
    )
    fd = FR.frechet_distance(x, y)
    assert FR.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert FR.frechet_distance(y, x) == pytest.approx(fd, rel=1e-9)  # symmetric
    shift = rng.standard_normal(10) * 5
    assert FR.frechet_distance(x + shift, y + shift) == pytest.approx(fd, rel=1e-9)  # translation
    q, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    assert FR.frechet_distance(x @ q, y @ q) == pytest.approx(fd, rel=1e-9)  # rotation
    assert FR.frechet_distance(3 * x, 3 * y) == pytest.approx(9 * fd, rel=1e-9)  # scale^2
    assert FR.frechet_distance(x[::-1], y) == pytest.approx(fd, rel=1e-12)  # row order


def test_fewer_samples_than_dimensions_stays_finite_and_agrees():
    # rank-deficient covariances (N < D), as with 170 held-out images and 384-D features
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((30, 64)), rng.standard_normal((40, 64)) + 0.2
    fd_e = FR.frechet_distance(x, y, method="eigh")
    assert np.isfinite(fd_e) and fd_e > 0
    fd_s = FR.frechet_distance(x, y, method="sqrtm")
    assert fd_s == pytest.approx(fd_e, rel=1e-4)
    s = _rand_cov(rng, 16, rank=3)
    assert FR.frechet_distance_from_stats(np.zeros(16), s, np.zeros(16), s) == pytest.approx(0.0, abs=1e-9)


def test_non_finite_and_bad_shapes_are_refused():
    x = np.zeros((10, 3))
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        FR.frechet_distance(bad, x)
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        FR.frechet_distance(x, bad)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        FR.frechet_distance(np.zeros(5), x)
    with pytest.raises(ValueError, match="at least 2"):
        FR.frechet_distance(np.zeros((1, 3)), x)
    with pytest.raises(ValueError, match="shape mismatch"):
        FR.frechet_distance_from_stats(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="method"):
        FR.frechet_distance(x, x, method="svd")


def test_subset_frechet_is_seeded_and_bounded():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((100, 4)), rng.standard_normal((50, 4))
    a = FR.subset_frechet(x, y, 30, 5, seed=7)
    assert a.shape == (5,) and np.array_equal(a, FR.subset_frechet(x, y, 30, 5, seed=7))
    assert FR.subset_frechet(x, y, 100, 1)[0] == pytest.approx(FR.frechet_distance(x, y), rel=1e-12)
    with pytest.raises(ValueError, match="n="):
        FR.subset_frechet(x, y, 101, 1)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_nearest_neighbour_matches_brute_force(metric):
    g = torch.Generator().manual_seed(0)
    q, r = (
        torch.randn(37, 6, generator=g, dtype=torch.float64),
        torch.randn(53, 6, generator=g, dtype=torch.float64),
    )
    d, i = FR.nearest_neighbour(q, r, metric=metric, chunk=10)
    for k in range(37):
        if metric == "cosine":
            all_d = 1 - torch.nn.functional.cosine_similarity(q[k : k + 1], r, dim=1)
        else:
            all_d = (r - q[k]).norm(dim=1)
        assert i[k] == all_d.argmin() and d[k] == pytest.approx(all_d.min().item(), abs=1e-12)


def test_nearest_neighbour_leave_one_out_and_exact_copies():
    g = torch.Generator().manual_seed(1)
    r = torch.randn(20, 5, generator=g, dtype=torch.float64)
    d, i = FR.nearest_neighbour(r, r, metric="l2")
    assert torch.equal(i, torch.arange(20)) and torch.all(d == 0)  # a copy is at distance 0
    d, i = FR.nearest_neighbour(r, r, metric="l2", exclude_self=True, chunk=7)
    assert torch.all(i != torch.arange(20)) and torch.all(d > 0)
    with pytest.raises(ValueError, match="metric"):
        FR.nearest_neighbour(r, r, metric="dot")
