"""Frechet distance between two feature sets, and nearest-neighbour distances between them.

The Frechet distance (FD) of two feature sets is the 2-Wasserstein distance of the Gaussians with
their means and covariances (Heusel et al. 2017's FID when the features are Inception's; here they
are DINOv2's, as in Stein et al. 2023's FD_DINOv2):

    FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

All statistics are in float64. ``tr((S1 S2)^(1/2))`` is computed two ways:

- ``"eigh"`` (the default): ``S1^(1/2) S2 S1^(1/2)`` is symmetric positive semi-definite and has the
  eigenvalues of ``S1 S2``, so the trace is the sum of the square roots of its eigenvalues
  (``eigh``, round-off negatives clipped to 0). No complex numbers arise, and a rank-deficient
  covariance (fewer samples than dimensions) is fine.
- ``"sqrtm"``: ``scipy.linalg.sqrtm(S1 @ S2)`` as pytorch-fid does: when the result is not finite,
  ``eps * I`` is added to both covariances and it is retried; an imaginary part larger than
  ``imag_tol`` (relative to the largest real entry) is an error, a smaller one is dropped.

Non-finite features are refused (``ValueError``). Plain NumPy/SciPy/PyTorch; nothing here imports
ComfyUI.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "FD_METHODS",
    "feature_stats",
    "frechet_distance",
    "frechet_distance_from_stats",
    "nearest_neighbour",
    "subset_frechet",
]

FD_METHODS = ("eigh", "sqrtm")


def _as_features(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be features [N, D], got shape {a.shape}")
    if a.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows for a covariance, got {a.shape[0]}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds non-finite values (NaN or inf)")
    return a


def feature_stats(x) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of features ``[N, D]``."""
    a = _as_features(x, "features")
    return a.mean(axis=0), np.cov(a, rowvar=False, ddof=1).reshape(a.shape[1], a.shape[1])


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _trace_sqrt_eigh(s1: np.ndarray, s2: np.ndarray) -> float:
    r = _psd_sqrt(s1)
    m = r @ s2 @ r
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def _trace_sqrt_sqrtm(s1: np.ndarray, s2: np.ndarray, eps: float, imag_tol: float) -> float:
    from scipy import linalg

    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        off = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + off) @ (s2 + off))
        if not np.isfinite(covmean).all():
            raise ValueError("sqrtm of the covariance product is not finite, even with an eps offset")
    if np.iscomplexobj(covmean):
        scale = max(float(np.abs(covmean.real).max()), 1e-300)
        if np.abs(covmean.imag).max() > imag_tol * scale:
            raise ValueError(
                f"sqrtm has a large imaginary part ({np.abs(covmean.imag).max():.3g}); use method='eigh'"
            )
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance_from_stats(
    mu1, sigma1, mu2, sigma2, method: str = "eigh", eps: float = 1e-6, imag_tol: float = 1e-3
) -> float:
    """FD of two Gaussians ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (see the module docstring)."""
    if method not in FD_METHODS:
        raise ValueError(f"method={method!r}: use one of {FD_METHODS}")
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu {mu1.shape} {mu2.shape}, sigma {s1.shape} {s2.shape}")
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", s1), ("sigma2", s2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} holds non-finite values (NaN or inf)")
    tr = _trace_sqrt_eigh(s1, s2) if method == "eigh" else _trace_sqrt_sqrtm(s1, s2, eps, imag_tol)
    diff = mu1 - mu2
    fd = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr)
    return max(fd, 0.0)  # round-off can leave a tiny negative for identical statistics


def frechet_distance(x, y, method: str = "eigh") -> float:
    """FD between feature sets ``x`` ``[N, D]`` and ``y`` ``[M, D]`` (N, M >= 2)."""
    return frechet_distance_from_stats(*feature_stats(x), *feature_stats(y), method=method)


def subset_frechet(x, y, n: int, repeats: int, seed: int = 0, method: str = "eigh") -> np.ndarray:
    """FD between ``n`` rows of ``x`` drawn without replacement and all of ``y``, ``repeats`` times
    (NumPy generator seeded with ``seed``): the spread of FD at a fixed, small sample size."""
    a = _as_features(x, "x")
    if not 2 <= n <= a.shape[0]:
        raise ValueError(f"n={n} must lie in [2, {a.shape[0]}]")
    stats_y = feature_stats(y)
    rng = np.random.default_rng(seed)
    out = [
        frechet_distance_from_stats(
            *feature_stats(a[rng.choice(a.shape[0], n, replace=False)]), *stats_y, method=method
        )
        for _ in range(repeats)
    ]
    return np.asarray(out)


def nearest_neighbour(
    query, ref, metric: str = "cosine", chunk: int = 1024, exclude_self: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``query`` ``[N, D]``: the distance to its nearest row of ``ref`` ``[M, D]`` and
    that row's index (float64 ``[N]``, int64 ``[N]``). ``metric``: ``"cosine"`` (1 - cosine
    similarity) or ``"l2"`` (Euclidean). ``exclude_self``: ``query`` is ``ref`` and a row may not be
    its own neighbour (leave-one-out)."""
    if metric not in ("cosine", "l2"):
        raise ValueError(f"metric={metric!r}: use 'cosine' or 'l2'")
    q = torch.as_tensor(_as_features(query, "query"))
    r = torch.as_tensor(_as_features(ref, "ref"))
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"query has {q.shape[1]} dimensions, ref {r.shape[1]}")
    if exclude_self and q.shape != r.shape:
        raise ValueError("exclude_self needs query and ref to be the same set")
    if metric == "cosine":
        q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)
        r = r / r.norm(dim=1, keepdim=True).clamp_min(1e-12)
    dists, idxs = [], []
    for i in range(0, q.shape[0], chunk):
        qc = q[i : i + chunk]
        d = 1.0 - qc @ r.T if metric == "cosine" else torch.cdist(qc, r)
        if exclude_self:
            rows = torch.arange(qc.shape[0])
            d[rows, rows + i] = float("inf")
        best = d.min(dim=1)
        dists.append(best.values.clamp_min(0.0))
        idxs.append(best.indices)
    return torch.cat(dists), torch.cat(idxs)
