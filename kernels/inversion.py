"""Deterministic DDIM inversion and generation in sigma space, and statistics of inverted latents.

UnseenDiffusion (arXiv 2310.09213) observes that a diffusion model trained on one domain still
reconstructs images from unseen domains through deterministic (eta = 0) DDIM inversion followed by
DDIM generation, and that the inverted latents of an unseen domain form their own Gaussian cluster,
separable from the in-domain one. This module holds the comfy-free parts:

* :func:`ddim_invert` / :func:`ddim_generate`: the DDIM ODE step run down (generation) or up
  (inversion) a sigma schedule, on any *denoiser* ``D(x, sigma) -> x0``. Working with the x0
  prediction in sigma space makes one loop serve eps-, v- and EDM-parametrised models (ComfyUI's
  model wrappers all return x0) and, with ``parametrisation="flow"``, rectified-flow models.
* :func:`fit_gaussian`, :func:`mahalanobis`, :func:`log_likelihood`: the paper's Gaussian model of
  a set of inverted latents (per-dimension mean, one scalar variance).
* :func:`slerp`, :func:`pairwise_distance`, :func:`angle_deg`, :func:`angle_at`: the geometry the
  paper uses to move between latents and to filter them.
* :func:`domain_reference` / :func:`domain_score`: an in-domain / out-of-domain test whose
  thresholds are percentiles of leave-one-out scores of a reference set (nothing hard-coded).

Conventions. A *latent* batch is a float tensor ``[B, ...]`` (any trailing shape, e.g. ``[B, C, H, W]``);
statistics flatten everything after the batch axis into ``D`` features. A *schedule* is a 1-D
float tensor of sigmas in generation order (strictly decreasing, ``>= 0``), as ComfyUI builds them
(usually ending in ``0``). In the ``"ve"`` parametrisation a noisy point is ``x = x0 + sigma * eps``
(ComfyUI's convention for eps, v and EDM models); in ``"flow"`` it is
``x = (1 - sigma) * x0 + sigma * eps`` (ComfyUI's ``CONST`` models, sigma in ``[0, 1]``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from einops import rearrange

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``D(x, sigma) -> x0``: ``x`` is ``[B, ...]``, ``sigma`` is ``[B]`` (same value in every row here),
the result has the shape of ``x``. Must be deterministic for the inversion to be reversible."""

StepCallback = Callable[[int, torch.Tensor, torch.Tensor, float], None]
"""``callback(i, x, x0, sigma)`` after model evaluation ``i`` (``x`` the new point, ``x0`` the
prediction used, ``sigma`` the level just reached)."""

PARAMETRISATIONS = ("ve", "flow")


# ----------------------------------------------------------------------------------------------
# DDIM in sigma space
# ----------------------------------------------------------------------------------------------


def _signal_scale(sigma: float, parametrisation: str) -> float:
    """The coefficient of x0 in a noisy point: 1 (ve) or 1 - sigma (flow)."""
    return 1.0 if parametrisation == "ve" else 1.0 - sigma


def check_schedule(sigmas: torch.Tensor, parametrisation: str = "ve") -> list[float]:
    """Validate a generation-order schedule and return it as Python floats.

    Args:
        sigmas: ``[S + 1]`` float tensor, strictly decreasing, every value ``>= 0`` (and ``< 1`` in
            the flow parametrisation, where sigma = 1 carries no signal to invert to).
        parametrisation: ``"ve"`` or ``"flow"``.

    Raises:
        ValueError: naming the offending entry, when the schedule cannot be run.
    """
    if parametrisation not in PARAMETRISATIONS:
        raise ValueError(f"parametrisation={parametrisation!r} is not one of {PARAMETRISATIONS}.")
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(
            f"the sigma schedule must be a 1-D tensor with at least 2 entries (one step); got shape "
            f"{tuple(sigmas.shape)}. Use more steps or a higher level."
        )
    values = [float(s) for s in sigmas.detach().cpu().double()]
    if any(not math.isfinite(s) or s < 0 for s in values):
        raise ValueError(f"the sigma schedule must be finite and >= 0; got {values}.")
    for k in range(len(values) - 1):
        if not values[k] > values[k + 1]:
            raise ValueError(
                f"the sigma schedule must be strictly decreasing, but sigma[{k}]={values[k]:.6g} <= "
                f"sigma[{k + 1}]={values[k + 1]:.6g}: the model's schedule has fewer distinct noise "
                "levels than the steps asked for. Lower the steps or raise the level."
            )
    if parametrisation == "flow" and values[0] >= 1.0:
        raise ValueError(
            f"in the flow parametrisation the top sigma must be < 1 (sigma = 1 is pure noise and cannot "
            f"be inverted exactly); got {values[0]:.6g}. Lower the level."
        )
    return values


def ddim_step(
    x: torch.Tensor, x0: torch.Tensor, sigma: float, sigma_next: float, parametrisation: str = "ve"
) -> torch.Tensor:
    """One deterministic DDIM move from level ``sigma`` to ``sigma_next`` (either direction).

    With ``eps = (x - a(sigma) * x0) / sigma`` the move is ``x' = a(sigma_next) * x0 + sigma_next * eps``,
    where ``a = 1`` (ve) or ``1 - sigma`` (flow). For ve this is ``x' = x0 + sigma' (x - x0) / sigma``.

    Args:
        x: ``[B, ...]`` float, the point at level ``sigma`` (``sigma > 0``).
        x0: ``[B, ...]`` float, the clean prediction used for the move.
        sigma, sigma_next: noise levels (``sigma > 0``, ``sigma_next >= 0``).
    Returns:
        ``[B, ...]`` float, the point at ``sigma_next``.
    """
    if sigma <= 0:
        raise ValueError(f"ddim_step needs sigma > 0 to read the noise out of x; got {sigma}.")
    eps = (x - _signal_scale(sigma, parametrisation) * x0) / sigma
    return _signal_scale(sigma_next, parametrisation) * x0 + sigma_next * eps


def _sigma_batch(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)


def ddim_generate(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    parametrisation: str = "ve",
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Deterministic DDIM generation (eta = 0) down a schedule.

    Args:
        denoiser: ``D(x, sigma) -> x0`` (see :data:`Denoiser`).
        x: ``[B, ...]`` float, the noisy latent at level ``sigmas[0]`` (e.g. from :func:`ddim_invert`).
        sigmas: ``[S + 1]`` float, strictly decreasing generation-order schedule; the result is at
            level ``sigmas[-1]`` (clean when it is 0).
        parametrisation: ``"ve"`` or ``"flow"``.
        callback: called after each of the ``S`` model evaluations.
    Returns:
        ``[B, ...]``, same dtype as ``x``: the latent at ``sigmas[-1]``.
    """
    values = check_schedule(sigmas, parametrisation)
    for k in range(len(values) - 1):
        s, s_next = values[k], values[k + 1]
        x0 = denoiser(x, _sigma_batch(x, s))
        x = ddim_step(x, x0, s, s_next, parametrisation)
        if callback is not None:
            callback(k, x, x0, s_next)
    return x


def ddim_invert(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    sigma_floor: float | None = None,
    refine_iters: int = 0,
    parametrisation: str = "ve",
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Deterministic DDIM inversion: run the generation schedule backwards, from ``sigmas[-1]`` up to ``sigmas[0]``.

    Each upward move ``s -> s'`` reuses the DDIM formula with the denoiser's prediction at the
    *current* point (the paper's scheme). When the current level is 0 (a clean input) the noise
    cannot be read out of ``x``, so the prediction is taken treating ``x`` as a point at
    ``sigma_floor`` (the paper's first step at t = 0 does the same). When the next level *is*
    ``sigma_floor`` (schedules that end ``..., sigma_min, 0``) that move is the identity, so it is
    taken without a model evaluation: ``S - 1`` evaluations instead of ``S``.

    With ``refine_iters > 0`` each move is refined by fixed-point iteration so that the *generation*
    step from the new point lands back on the current one: ``y <- a(s')/a(s) (x - s eps(y)) + s' eps(y)``
    with ``eps(y)`` read from ``D(y, s')``. Each iteration costs one extra model evaluation per step
    and shrinks the reconstruction error whenever the iteration contracts (small steps, smooth model).

    Args:
        denoiser: ``D(x, sigma) -> x0`` (see :data:`Denoiser`).
        x: ``[B, ...]`` float, the latent at level ``sigmas[-1]`` (usually a clean latent, level 0).
        sigmas: ``[S + 1]`` float, strictly decreasing generation-order schedule.
        sigma_floor: level at which a clean input is evaluated; default the smallest positive entry
            of ``sigmas``. Ignored when ``sigmas[-1] > 0``.
        refine_iters: fixed-point iterations per step (0 = plain DDIM inversion, as in the paper).
        parametrisation: ``"ve"`` or ``"flow"``.
        callback: called after each upward move (``i`` counts moves, 0..S-1).
    Returns:
        ``[B, ...]``, same dtype as ``x``: the inverted latent at level ``sigmas[0]``.
    """
    values = check_schedule(sigmas, parametrisation)
    if refine_iters < 0:
        raise ValueError(f"refine_iters must be >= 0; got {refine_iters}.")
    up = values[::-1]
    if sigma_floor is None:
        sigma_floor = min(v for v in values if v > 0)
    if not sigma_floor > 0:
        raise ValueError(f"sigma_floor must be > 0; got {sigma_floor}.")
    for k in range(len(up) - 1):
        s, s_next = up[k], up[k + 1]
        s_eval = s if s > 0 else sigma_floor
        if s == 0 and math.isclose(s_next, s_eval, rel_tol=1e-5):
            # the schedule ends at the floor itself (karras, normal, ... end at sigma_min): the move
            # sigma_floor -> sigma_floor is the identity whatever the prediction, so skip its model call
            x0, y = x, x
        else:
            x0 = denoiser(x, _sigma_batch(x, s_eval))
            y = ddim_step(x, x0, s_eval, s_next, parametrisation)
        for _ in range(refine_iters):
            x0_y = denoiser(y, _sigma_batch(y, s_next))
            eps_y = (y - _signal_scale(s_next, parametrisation) * x0_y) / s_next
            # x0 consistent with reaching x from y: x = a(s) x0 + s eps(y)
            x0_hat = (x - s * eps_y) / _signal_scale(s, parametrisation)
            y = _signal_scale(s_next, parametrisation) * x0_hat + s_next * eps_y
            x0 = x0_hat
        x = y
        if callback is not None:
            callback(k, x, x0, s_next)
    return x


def level_schedule(full: torch.Tensor, steps: int, level: float) -> torch.Tensor:
    """The last ``steps + 1`` entries of a full schedule: ComfyUI's ``denoise`` truncation.

    ``full`` must have been computed for ``int(steps / level)`` steps (see
    :func:`schedule_steps_for_level`); this keeps the tail, so the top sigma sits at the fraction
    ``level`` of the model's schedule.

    Args:
        full: ``[N + 1]`` float, generation-order schedule, ``N >= steps``.
        steps: number of DDIM steps (``>= 1``).
        level: fraction of the schedule in ``(0, 1]``.
    Returns:
        ``[steps + 1]`` float, generation-order schedule.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}.")
    if not 0.0 < level <= 1.0:
        raise ValueError(f"level must be in (0, 1] (a fraction of the model's noise schedule); got {level}.")
    if full.numel() < steps + 1:
        raise ValueError(
            f"the model's schedule has only {full.numel() - 1} steps, fewer than the {steps} asked for; "
            "lower the steps."
        )
    return full[-(steps + 1) :].clone()


def schedule_steps_for_level(steps: int, level: float) -> int:
    """Total steps of the full schedule whose last ``steps`` cover the fraction ``level`` (as KSampler's denoise)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}.")
    if not 0.0 < level <= 1.0:
        raise ValueError(f"level must be in (0, 1] (a fraction of the model's noise schedule); got {level}.")
    return steps if level > 0.9999 else max(steps, int(steps / level))


def flow_top(levels: torch.Tensor | None) -> float:
    """Top sigma used instead of 1 on rectified-flow models: the model's last level below 1.

    At sigma 1 a flow point is pure noise and a leftover-noise latent (``x / (1 - sigma)``, what
    ComfyUI's KSamplerAdvanced returns) cannot hold it; one level lower it can, and generation from
    there differs from generation from 1 by one of the model's levels.

    Args:
        levels: the model's discrete sigmas (any shape, any float dtype), or None when it has none.
    Returns:
        The largest level below 1, else 0.999.
    """
    if isinstance(levels, torch.Tensor):
        below = levels.float()[levels.float() < 1.0]
        if below.numel():
            return float(below.max())
    return 0.999


def schedule_context(
    steps: int, level: float, scheduler: str, sigma_min: float, sigma_max: float, n_levels: int = 0
) -> str:
    """The words that start every schedule error: the settings and the model's sigma range."""
    return (
        f"steps={steps}, level={level}, scheduler={scheduler!r} on this model's schedule "
        f"(sigma {sigma_min:.4g}..{sigma_max:.4g}"
        + (f", {n_levels} discrete levels" if n_levels else "")
        + ")"
    )


def inversion_schedule(
    full: torch.Tensor,
    steps: int,
    level: float,
    parametrisation: str,
    *,
    levels: torch.Tensor | None = None,
    context: str = "the schedule",
) -> torch.Tensor:
    """The generation-order sigmas ``[steps + 1]`` of an inversion, from a full schedule.

    Keeps the tail of ``full`` (:func:`level_schedule`), replaces a flow model's top sigma 1 by
    :func:`flow_top` of its ``levels``, and checks the result (:func:`check_schedule`, ends at 0).

    Args:
        full: ``[N + 1]`` float, the scheduler's output for :func:`schedule_steps_for_level` steps.
        steps, level: as :func:`level_schedule`.
        parametrisation: ``"ve"`` or ``"flow"``.
        levels: the model's discrete sigmas (for :func:`flow_top`), or None.
        context: prefix of every error (:func:`schedule_context`).
    Raises:
        ValueError: ``"<context>: <what is wrong>"`` when the schedule cannot be inverted.
    """
    try:
        sigmas = level_schedule(full, int(steps), float(level))
        if parametrisation == "flow" and float(sigmas[0]) >= 1.0:
            sigmas[0] = flow_top(levels)
        check_schedule(sigmas, parametrisation)
    except ValueError as err:
        raise ValueError(f"{context}: {err}") from None
    if float(sigmas[-1]) != 0.0:
        raise ValueError(f"{context}: the schedule does not end at sigma 0; pick another scheduler.")
    return sigmas


def check_guidance(cfg: float, has_positive: bool, has_negative: bool) -> None:
    """Refuse a cfg other than 1 without both conditionings, saying what to connect."""
    if math.isclose(cfg, 1.0):
        return
    if not has_positive:
        raise ValueError(
            f"cfg={cfg} needs a positive and a negative conditioning; connect them or set cfg to 1.0."
        )
    if not has_negative:
        raise ValueError(f"cfg={cfg} needs a negative conditioning; connect one or set cfg to 1.0.")


def ddim_loop(
    run,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    direction: str,
    refine_iters: int,
    sigma_floor: float,
    parametrisation: str,
) -> torch.Tensor:
    """:func:`ddim_invert` (``direction="invert"``) or :func:`ddim_generate` as a sampler loop.

    ``run`` has ``denoise(x, sigma) -> x0`` (a :data:`Denoiser`) and ``report(dict)``, called after
    every model evaluation with ``{"x", "i", "sigma", "sigma_hat", "denoised"}`` (the step callback
    of k-diffusion samplers). ``sigmas`` is in the order the loop walks: ascending to invert,
    generation order to generate.
    """

    def step_done(i, xx, x0, sigma):
        run.report({"x": xx, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": x0})

    if direction == "invert":
        return ddim_invert(
            run.denoise,
            x,
            sigmas.flip(0),
            sigma_floor=sigma_floor,
            refine_iters=refine_iters,
            parametrisation=parametrisation,
            callback=step_done,
        )
    return ddim_generate(run.denoise, x, sigmas, parametrisation=parametrisation, callback=step_done)


# ----------------------------------------------------------------------------------------------
# Geometry and Gaussian statistics of latents
# ----------------------------------------------------------------------------------------------


def flatten(latents: torch.Tensor) -> torch.Tensor:
    """``[B, ...]`` -> ``[B, D]`` float64 (statistics are accumulated in double precision)."""
    if latents.ndim < 2:
        raise ValueError(
            f"latents must be a batch [B, ...] with at least 2 axes; got shape {tuple(latents.shape)}."
        )
    return rearrange(latents.detach().double(), "b ... -> b (...)")


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Spherical linear interpolation between latents, per batch row, over all trailing axes.

    ``slerp(a, b, t) = sin((1 - t) w) / sin(w) a + sin(t w) / sin(w) b`` with ``w`` the angle
    between ``a`` and ``b``; falls back to linear interpolation where ``sin(w)`` is negligible.
    When ``|a| = |b|`` every point has that norm.

    Args:
        a, b: ``[B, ...]`` float, same shape.
        t: one fraction or ``T`` fractions (``0`` gives ``a``, ``1`` gives ``b``; values outside
            ``[0, 1]`` extrapolate along the great circle).
    Returns:
        ``[B, ...]`` for a scalar ``t``; ``[T, B, ...]`` for a sequence. Dtype of ``a``.
    """
    if a.shape != b.shape:
        raise ValueError(
            f"slerp needs latents of the same shape; got {tuple(a.shape)} and {tuple(b.shape)}. "
            "Interpolate latents of the same model and size (crop or resize one first)."
        )
    scalar = not isinstance(t, (Sequence, torch.Tensor)) or (isinstance(t, torch.Tensor) and t.ndim == 0)
    ts = torch.as_tensor([float(t)] if scalar else [float(v) for v in t], dtype=torch.float64)
    fa, fb = flatten(a), flatten(b)
    na, nb = fa.norm(dim=1), fb.norm(dim=1)
    cos = ((fa * fb).sum(dim=1) / (na * nb).clamp_min(1e-300)).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)  # [B]
    sin_omega = torch.sin(omega)
    tt = ts[:, None]  # [T, 1]
    small = sin_omega.abs() < 1e-7
    wa = torch.where(small, 1.0 - tt, torch.sin((1.0 - tt) * omega) / torch.where(small, 1.0, sin_omega))
    wb = torch.where(small, tt, torch.sin(tt * omega) / torch.where(small, 1.0, sin_omega))
    out = wa[..., None] * fa[None] + wb[..., None] * fb[None]  # [T, B, D]
    out = out.reshape((len(ts),) + tuple(a.shape)).to(a.dtype)
    return out[0] if scalar else out


def slerp_fractions(t: float, count: int) -> list[float]:
    """The fractions of ``count`` slerp points: ``[t]`` for one, else ``count`` evenly spaced in ``(0, t]``."""
    if count < 1:
        raise ValueError(f"count must be >= 1; got {count}.")
    return [float(t)] if count == 1 else [float(t) * (k + 1) / count for k in range(count)]


def rms_matched_gaussian(a: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded standard-normal draw shaped like ``a`` ``[B, ...]``, each row scaled to the RMS of ``a``'s row.

    The draw comes from a CPU ``torch.Generator`` seeded with ``seed`` (float32), so it does not depend
    on the device; returns float32 on ``a``'s device."""
    g = torch.randn(a.shape, generator=torch.Generator().manual_seed(int(seed))).to(a.device)
    rms = a.flatten(1).pow(2).mean(dim=1).sqrt() / g.flatten(1).pow(2).mean(dim=1).sqrt()
    return g * rms.view(-1, *([1] * (a.ndim - 1)))


def pair_batches(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``a`` and ``b`` ``[B, ...]`` with equal batches: a batch of 1 is broadcast to the other's.

    Raises:
        ValueError: the shapes after the batch axis differ, or both batches are above 1 and differ.
    """
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"latent_a {tuple(a.shape)} and latent_b {tuple(b.shape)} differ in shape; slerp needs latents "
            "of the same model and image size (resize or crop one before inverting)."
        )
    if a.shape[0] != b.shape[0]:
        if b.shape[0] == 1:
            return a, b.expand_as(a)
        if a.shape[0] == 1:
            return a.expand_as(b), b
        raise ValueError(
            f"latent_a has batch {a.shape[0]} and latent_b batch {b.shape[0]}; use equal "
            "batches or a batch of 1 on one side."
        )
    return a, b


def slerp_path(a: torch.Tensor, b: torch.Tensor | None, t: float, count: int, seed: int) -> torch.Tensor:
    """The slerp points from ``a`` towards ``b`` as one batch ``[count * B, ...]`` (point-major).

    Args:
        a: ``[B, ...]`` start latents (t = 0); computed in float32.
        b: ``[B or 1, ...]`` end latents (t = 1), or None for :func:`rms_matched_gaussian` of ``a``.
        t, count: :func:`slerp_fractions`.
        seed: seed of the Gaussian end point when ``b`` is None.
    """
    a = a.float()
    b = rms_matched_gaussian(a, seed) if b is None else b.float().to(a.device)
    a, b = pair_batches(a, b)
    path = slerp(a, b, slerp_fractions(t, count))  # [T, B, ...]
    return path.reshape((-1,) + tuple(a.shape[1:]))


def check_domain_latents(latents: torch.Tensor) -> None:
    """Refuse what a Gaussian cannot be fitted to: a batch below 2, or NaN/inf values."""
    if latents.shape[0] < 2:
        raise ValueError(
            f"latents has a batch of {latents.shape[0]}; fitting a Gaussian needs at least 2 inverted "
            "latents. Invert several images of the new domain (batch them with ImageBatch first)."
        )
    if not torch.isfinite(latents).all():
        raise ValueError("latents contains NaN or infinite values; invert the images again.")


def pairwise_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between every row of ``a`` ``[N, ...]`` and of ``b`` ``[M, ...]`` -> ``[N, M]`` float64."""
    fa, fb = flatten(a), flatten(b)
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"latent sizes differ: {tuple(a.shape[1:])} vs {tuple(b.shape[1:])}.")
    return torch.cdist(fa, fb)


def angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angles (degrees, ``[0, 180]``) at the origin between every row of ``a`` ``[N, ...]`` and ``b`` ``[M, ...]`` -> ``[N, M]``."""
    fa, fb = flatten(a), flatten(b)
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"latent sizes differ: {tuple(a.shape[1:])} vs {tuple(b.shape[1:])}.")
    cos = (fa @ fb.T) / (fa.norm(dim=1)[:, None] * fb.norm(dim=1)[None, :]).clamp_min(1e-300)
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


def angle_at(vertex: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Angle (degrees) at ``vertex`` in the triangle ``(p, vertex, q)``, row by row; all ``[B, ...]`` -> ``[B]``."""
    fv, fp, fq = flatten(vertex), flatten(p), flatten(q)
    u, w = fp - fv, fq - fv
    cos = (u * w).sum(dim=1) / (u.norm(dim=1) * w.norm(dim=1)).clamp_min(1e-300)
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


@dataclass(frozen=True)
class GaussianFit:
    """Isotropic Gaussian with a per-dimension mean: ``N(mean, var * I)``.

    Attributes:
        mean: ``[D]`` float64.
        var: scalar variance (float, > 0).
        count: number of latents it was fitted on.
    """

    mean: torch.Tensor
    var: float
    count: int

    @property
    def dim(self) -> int:
        return int(self.mean.numel())


def fit_gaussian(latents: torch.Tensor) -> GaussianFit:
    """Fit the paper's model to ``N >= 2`` latents ``[N, ...]``: per-dim mean, one scalar variance.

    The variance is the unbiased pooled estimate ``sum |z - mean|^2 / ((N - 1) D)``.
    """
    z = flatten(latents)
    n, d = z.shape
    if n < 2:
        raise ValueError(f"fitting a Gaussian needs at least 2 latents; got {n}. Invert more images.")
    mean = z.mean(dim=0)
    var = float(((z - mean) ** 2).sum() / ((n - 1) * d))
    if not var > 0:
        raise ValueError("the latents are all identical (zero variance); cannot fit a Gaussian to them.")
    return GaussianFit(mean=mean, var=var, count=n)


def sample_domain_gaussian(
    latents: torch.Tensor, count: int, seed: int, *, per_dimension: bool = False
) -> torch.Tensor:
    """Draw ``count`` latents from the Gaussian fitted to ``N >= 2`` inverted latents ``[N, ...]``.

    The paper's unseen-domain sampling: per-dimension mean and (default) the scalar variance of
    :func:`fit_gaussian`; with ``per_dimension`` each value gets its own unbiased standard deviation.
    The normal draws come from a CPU ``torch.Generator`` seeded with ``seed`` in float64, so the result
    does not depend on the device. Returns ``[count, ...]`` in the dtype of ``latents``.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1; got {count}.")
    fit = fit_gaussian(latents)
    z = flatten(latents)
    std = z.std(dim=0, unbiased=True) if per_dimension else torch.full_like(fit.mean, math.sqrt(fit.var))
    gen = torch.Generator().manual_seed(int(seed) % (2**63))
    noise = torch.randn((count, fit.dim), generator=gen, dtype=torch.float64)
    out = fit.mean + std * noise
    return out.reshape((count,) + tuple(latents.shape[1:])).to(latents.dtype)


def mahalanobis(latents: torch.Tensor, fit: GaussianFit) -> torch.Tensor:
    """Normalised distance ``|z - mean| / sqrt(var * D)`` per latent ``[N, ...]`` -> ``[N]`` float64.

    About ``sqrt(1 + 1/count)`` for a fresh sample of the fitted distribution, whatever ``D``.
    """
    z = flatten(latents)
    if z.shape[1] != fit.dim:
        raise ValueError(
            f"latent size {z.shape[1]} does not match the reference fit ({fit.dim} values): the latents come "
            "from a different model or image size."
        )
    return (z - fit.mean).norm(dim=1) / math.sqrt(fit.var * fit.dim)


def log_likelihood(latents: torch.Tensor, fit: GaussianFit) -> torch.Tensor:
    """Log-density per dimension under the fit (nats / D), ``[N, ...]`` -> ``[N]`` float64."""
    m = mahalanobis(latents, fit)
    return -0.5 * (m**2 + math.log(2 * math.pi * fit.var))


def _loo_mahalanobis(z: torch.Tensor) -> torch.Tensor:
    """Leave-one-out normalised distances of ``[N, D]`` rows (each scored against the fit of the others)."""
    n, d = z.shape
    mean = z.mean(dim=0)
    r2 = ((z - mean) ** 2).sum(dim=1)  # |z_i - mean|^2
    # removing z_i: z_i - mean_{-i} = n / (n - 1) (z_i - mean); pooled sum of squares of the others
    # S_{-i} = S - n / (n - 1) |z_i - mean|^2, with n - 2 degrees of freedom per dimension
    ss_others = r2.sum() - r2 * n / (n - 1)
    var_others = ss_others / ((n - 2) * d)
    return torch.sqrt(r2) * (n / (n - 1)) / torch.sqrt(var_others * d)


# ----------------------------------------------------------------------------------------------
# In-domain / out-of-domain score with data-derived thresholds
# ----------------------------------------------------------------------------------------------

FEATURES = ("distance", "mean_pair_distance", "mean_angle")
"""Per-latent features: ``distance`` = :func:`mahalanobis` to the reference fit; ``mean_pair_distance``
= mean Euclidean distance to the reference latents divided by ``sqrt(D)``; ``mean_angle`` = mean angle
(degrees) at the origin to the reference latents (the paper's filters, with thresholds from data)."""


@dataclass(frozen=True)
class DomainReference:
    """Statistics of an in-domain reference set of inverted latents.

    Attributes:
        fit: the Gaussian fitted to all reference latents.
        latents: ``[N, D]`` float64, the flattened reference latents.
        loo: feature name -> ``[N]`` float64 leave-one-out feature values of the reference latents
            (each scored against the others, so they are distributed as a fresh sample's would be).
        percentile: the percentile (0-100) that sets the thresholds.
        thresholds: feature name -> ``(low, high)`` band: ``distance`` is one-sided (low = -inf,
            high = its ``percentile``-th LOO value); the others are two-sided, from the
            ``(100 - percentile) / 2`` and ``(100 + percentile) / 2`` percentiles.
    """

    fit: GaussianFit
    latents: torch.Tensor
    loo: dict[str, torch.Tensor]
    percentile: float
    thresholds: dict[str, tuple[float, float]]


def _features(z: torch.Tensor, fit: GaussianFit, ref: torch.Tensor) -> dict[str, torch.Tensor]:
    d = z.shape[1]
    dist = torch.cdist(z, ref)
    cos = (z @ ref.T) / (z.norm(dim=1)[:, None] * ref.norm(dim=1)[None, :]).clamp_min(1e-300)
    ang = torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))
    return {
        "distance": (z - fit.mean).norm(dim=1) / math.sqrt(fit.var * d),
        "mean_pair_distance": dist.mean(dim=1) / math.sqrt(d),
        "mean_angle": ang.mean(dim=1),
    }


def _quantile(values: torch.Tensor, q: float) -> float:
    return float(torch.quantile(values, q / 100.0))


def domain_reference(latents: torch.Tensor, percentile: float = 95.0) -> DomainReference:
    """Build the reference statistics from ``N >= 3`` in-domain inverted latents ``[N, ...]``.

    Thresholds are percentiles of the reference set's own leave-one-out features, so a fresh
    in-domain latent is accepted with probability about ``percentile / 100`` per feature.
    """
    if not 50.0 <= percentile < 100.0:
        raise ValueError(f"percentile must be in [50, 100); got {percentile}.")
    z = flatten(latents)
    n = z.shape[0]
    if n < 3:
        raise ValueError(
            f"the reference set needs at least 3 latents for leave-one-out thresholds; got {n}. "
            "Invert more in-domain images."
        )
    fit = fit_gaussian(latents)
    pair = torch.cdist(z, z)
    cos = (z @ z.T) / (z.norm(dim=1)[:, None] * z.norm(dim=1)[None, :]).clamp_min(1e-300)
    ang = torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))
    off = ~torch.eye(n, dtype=torch.bool)
    loo = {
        "distance": _loo_mahalanobis(z),
        "mean_pair_distance": (pair * off).sum(dim=1) / (n - 1) / math.sqrt(z.shape[1]),
        "mean_angle": (ang * off).sum(dim=1) / (n - 1),
    }
    lo, hi = (100.0 - percentile) / 2.0, (100.0 + percentile) / 2.0
    thresholds = {"distance": (-math.inf, _quantile(loo["distance"], percentile))}
    for name in ("mean_pair_distance", "mean_angle"):
        thresholds[name] = (_quantile(loo[name], lo), _quantile(loo[name], hi))
    return DomainReference(fit=fit, latents=z, loo=loo, percentile=percentile, thresholds=thresholds)


@dataclass(frozen=True)
class DomainScore:
    """Result of :func:`domain_score` for ``M`` latents.

    Attributes:
        features: feature name -> ``[M]`` float64 values.
        p_value: ``[M]`` float64, fraction of reference LOO distances ``>=`` the latent's distance
            (with the +1 correction, so never 0): small means unlike the reference domain.
        in_domain: ``[M]`` bool, every feature inside its band.
    """

    features: dict[str, torch.Tensor]
    p_value: torch.Tensor
    in_domain: torch.Tensor


def check_same_shape(latents: torch.Tensor, reference: torch.Tensor) -> None:
    """Refuse latents ``[M, ...]`` and reference latents ``[N, ...]`` whose shapes after the batch differ."""
    if tuple(latents.shape[1:]) != tuple(reference.shape[1:]):
        raise ValueError(
            f"latents {tuple(latents.shape)} and reference {tuple(reference.shape)} differ in shape; invert "
            "both sets with the same model at the same image size."
        )


def domain_score(latents: torch.Tensor, reference: DomainReference) -> DomainScore:
    """Score ``M`` inverted latents ``[M, ...]`` against a :class:`DomainReference`."""
    z = flatten(latents)
    if z.shape[1] != reference.fit.dim:
        raise ValueError(
            f"latent size {z.shape[1]} ({tuple(latents.shape[1:])}) does not match the reference set's "
            f"{reference.fit.dim} values: invert both sets with the same model at the same image size."
        )
    feats = _features(z, reference.fit, reference.latents)
    ok = torch.ones(z.shape[0], dtype=torch.bool)
    for name, (lo, hi) in reference.thresholds.items():
        ok &= (feats[name] >= lo) & (feats[name] <= hi)
    ref_d = reference.loo["distance"]
    p = ((ref_d[None, :] >= feats["distance"][:, None]).sum(dim=1) + 1).double() / (ref_d.numel() + 1)
    return DomainScore(features=feats, p_value=p, in_domain=ok)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio (dB) between two tensors of the same shape with values in ``[0, data_range]``."""
    if a.shape != b.shape:
        raise ValueError(f"psnr needs tensors of the same shape; got {tuple(a.shape)} and {tuple(b.shape)}.")
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)
