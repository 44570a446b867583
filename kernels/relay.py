"""Relay Diffusion (Teng et al., arXiv 2309.03350): block noise, block-DCT blurring, the
sigma <-> u schedule coupling, the relay sampler and the blurring training objective.

Plain PyTorch; nothing here imports ComfyUI. The sampler is written against a generic denoiser
``D(x, sigma) -> x0`` in one of two noise spaces, so it runs the same for an EDM pixel model, a
k-diffusion wrapper, or ComfyUI's sampling wrapper:

- EDM / k-diffusion (``flow=False``): ``x = x0 + sigma * n``, sigma in (0, inf);
- flow matching (``flow=True``, ComfyUI's CONST sampling of SD3 / Flux): ``x = (1 - t) x0 + t n``,
  sigma == t in (0, 1]. The blur coupling then uses the EDM sigma of the same signal-to-noise
  ratio, ``t / (1 - t)``.

Precision and randomness: every tensor on the compute device is float32 (float64 only when the
caller passes float64 data, e.g. on the CPU in tests), so the sampler runs on MPS and DirectML;
float64 is used only for small CPU-side tables (DCT matrix, blur factors, sigma <-> u coupling)
that are cast to float32 before they reach the device. Noise is never drawn from torch's global
RNG: it comes from a CPU ``torch.Generator`` (seeded by the caller, or by ``seed``) and is moved to
the device, so results are reproducible and the same on every device.

Conventions (all functions):

- images / latents are ``(..., H, W)`` tensors (usually ``(B, C, H, W)``), any value range;
- ``p`` is the block (patch) size of the DCT and of the block noise; the paper ties it to the
  up-scale factor between the two stages (4 for 64 -> 256);
- sigma is the EDM noise level (standard deviation of the added noise), ``u`` in [0, 1] the
  "time" that drives both the noise level and the blur strength.

Behaviour that follows the official code rather than the paper's prose:

- block noise is a *circular* ``p x p`` box-sum of i.i.d. noise divided by ``p`` (unit variance
  per pixel, correlated across neighbouring pixels, wrapping at the borders), not noise that is
  constant on each block;
- the blur keeps a floor ``min_scale`` (0.001) on every DCT coefficient;
- the sampler draws fresh noise for the Heun-corrected step (the noise of the Euler proposal is
  discarded) and returns ``D(x)`` at the final step.

The official sampler runs in float64; here it runs in float32 (the difference after a full
stage two on a toy model is below 1e-5, see ``tests/kernels/test_relay.py``).

One deliberate difference: :func:`relay_training_loss` clamps ``u`` so that ``sigma >=
truncate_sigma`` exactly (the official code multiplies by ``prob_length`` where the mapping
divides by it, which makes its clamp slightly off).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from . import schedules

__all__ = [
    "BLOCK_SIZES",
    "RELAY_STATE_TENSORS",
    "RelaySettings",
    "STEPS",
    "TrainedRelay",
    "UPSCALE_FACTORS",
    "alpha_for_sigma",
    "alpha_table",
    "blocks_to_image",
    "blur_sigma_of_u",
    "block_dct",
    "cpu_randn",
    "edm_sigma",
    "block_idct",
    "block_noise",
    "check_block_divisible",
    "churn_window_problem",
    "dct_blur",
    "dct_matrix",
    "image_to_blocks",
    "relay_config",
    "relay_memory_bytes",
    "relay_noise",
    "relay_sample",
    "relay_schedule",
    "relay_sigmas",
    "relay_start",
    "relay_training_loss",
    "sigma_of_u",
    "step_seed",
    "truncation_problem",
    "u_of_sigma",
    "upsample_nearest",
]

# EDM training distribution of log-sigma; the relay schedule coupling is defined through it.
P_MEAN = -1.2
P_STD = 1.2

# The ranges of the relay's quantities (the nodes' schemas read them; nowhere else types them):
BLOCK_SIZES = (1, 16)
"""Block size p (``RelaySettings.patch``; the nodes' ``block_size``): 1 is no block structure (plain Heun)."""
UPSCALE_FACTORS = (2, 8)
"""The up-scale factor of a relay up-scale: the block size p of its stage two, restricted to an actual
up-scale (>= 2) whose output size stays within memory reach (<= 8)."""
STEPS = (2, 10000)
"""Nominal steps of the stage-two Karras grid (before truncation)."""


@dataclass(frozen=True)
class RelaySettings:
    """Hyper-parameters of the relay sampler (defaults: the official ImageNet-256 settings
    except ``blur_sigma_max``, which is 0 so that a model not trained for blurring works).

    - ``patch``: block size p of the DCT and of the block noise (= up-scale factor).
    - ``blur_sigma_max``: B_max, the blur strength at u = 1 (3.0 ImageNet, 2.0 CelebA; 0 = off).
    - ``prob_length``: L, the fraction of the EDM log-normal sigma distribution mapped onto
      u in [0, 1] (0.93 ImageNet, 0.89 CelebA).
    - ``s_block``: weight of the block-noise component added to the i.i.d. noise.
    - ``s_noise``: stochasticity of the relay step, in [0, 1] (0 = deterministic Heun).
    - ``s_churn``, ``s_tmin``, ``s_tmax``, ``s_churn_noise``: EDM "churn" (Karras et al.,
      Algorithm 2), applied before each step exactly as k-diffusion's ``sample_heun`` does.
    - ``min_scale``: floor of the blur coefficients.
    - ``p_mean``, ``p_std``: the EDM log-normal sigma distribution used by the coupling.
    """

    patch: int = 4
    blur_sigma_max: float = 0.0
    prob_length: float = 0.93
    s_block: float = 0.15
    s_noise: float = 0.2
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_churn_noise: float = 1.0
    min_scale: float = 0.001
    p_mean: float = P_MEAN
    p_std: float = P_STD

    def __post_init__(self) -> None:
        for name in (
            "blur_sigma_max",
            "prob_length",
            "s_block",
            "s_noise",
            "s_churn",
            "s_tmin",
            "s_churn_noise",
            "min_scale",
            "p_mean",
            "p_std",
        ):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}.")
        if math.isnan(self.s_tmax):
            raise ValueError("s_tmax must be a number (inf allowed), got nan.")
        lo, hi = BLOCK_SIZES
        if int(self.patch) != self.patch or not lo <= self.patch <= hi:
            raise ValueError(
                f"patch (the block size, = up-scale factor) must be a positive integer in {lo}..{hi}, got {self.patch}."
            )
        if not 0.0 <= self.s_noise <= 1.0:
            raise ValueError(
                f"s_noise must be in [0, 1] (it is the share of fresh noise per step), got {self.s_noise}."
            )
        if not 0.0 < self.prob_length <= 1.0:
            raise ValueError(f"prob_length (L) must be in (0, 1], got {self.prob_length}.")
        for name in ("blur_sigma_max", "s_block", "s_churn", "s_churn_noise", "min_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if problem := churn_window_problem(self.s_tmin, self.s_tmax):
            raise ValueError(problem)


def churn_window_problem(s_tmin: float | None, s_tmax: float | None) -> str | None:
    """The one check of the churn window ``[s_tmin, s_tmax]`` (``None``: not known yet): a message
    when it is empty, else None."""
    if s_tmin is not None and s_tmax is not None and s_tmin > s_tmax:
        return f"s_tmin ({s_tmin}) must not exceed s_tmax ({s_tmax}): churn would never apply."
    return None


# --------------------------------------------------------------------------------------------
# Layout helpers, block noise, nearest upsampling


def check_block_divisible(shape: torch.Size | tuple[int, ...], p: int, what: str = "input") -> None:
    """Raise ``ValueError`` unless the last two sizes of ``shape`` are multiples of ``p``."""
    h, w = int(shape[-2]), int(shape[-1])
    if h % p or w % p:
        raise ValueError(
            f"{what} is {h}x{w}, which the block size {p} does not divide: the relay blocks "
            f"(up-scale factor) must tile the image exactly. Resize to a multiple of {p} "
            f"(e.g. {h - h % p or p}x{w - w % p or p}) or use a block size that divides both sides."
        )


def image_to_blocks(x: torch.Tensor, p: int) -> torch.Tensor:
    """``(..., H, W)`` -> ``(..., H/p, W/p, p, p)``: each trailing ``p x p`` is one block."""
    check_block_divisible(x.shape, p)
    return rearrange(x, "... (bh p1) (bw p2) -> ... bh bw p1 p2", p1=p, p2=p)


def blocks_to_image(b: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`image_to_blocks`: ``(..., H/p, W/p, p, p)`` -> ``(..., H, W)``."""
    return rearrange(b, "... bh bw p1 p2 -> ... (bh p1) (bw p2)")


def block_noise(eps: torch.Tensor, p: int) -> torch.Tensor:
    """Block noise from i.i.d. unit noise ``eps`` (..., H, W), any float dtype.

    ``out[i, j] = sum_{a, b < p} eps[i - a, j - b] / p`` with indices taken modulo (H, W): the sum
    of ``p * p`` circular shifts divided by ``p``. Every pixel has unit variance; pixels closer than
    ``p`` are correlated with coefficient ``(p - |di|) (p - |dj|) / p^2``. Same shape/dtype as eps.
    """
    if p == 1:
        return eps.clone()
    lead = eps.shape[:-2]
    flat = rearrange(eps, "... h w -> (...) 1 h w")
    # pad p-1 rows/cols at the top/left with the wrapped-around bottom/right (circular shift sum)
    padded = F.pad(flat, (p - 1, 0, p - 1, 0), mode="circular")
    summed = F.avg_pool2d(padded, kernel_size=p, stride=1) * (p * p)
    return summed.reshape(*lead, *eps.shape[-2:]) / p


def relay_noise(eps: torch.Tensor, eps_block: torch.Tensor | None, p: int, s_block: float) -> torch.Tensor:
    """The relay's noise ``eps + s_block * block_noise(eps_block, p)`` (``eps`` itself when s_block is 0;
    ``eps_block`` is then not needed and may be None). ``eps``, ``eps_block``: i.i.d. unit noise
    (..., H, W) with H, W multiples of ``p`` (refused otherwise). Shape and dtype of ``eps``."""
    check_block_divisible(eps.shape, p, "the noise")
    if s_block > 0:
        return eps + s_block * block_noise(eps_block, p)
    return eps


def upsample_nearest(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour up-sampling by an integer factor: ``(..., H, W)`` -> ``(..., fH, fW)``."""
    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor}.")
    return repeat(x, "... h w -> ... (h f1) (w f2)", f1=int(factor), f2=int(factor))


# --------------------------------------------------------------------------------------------
# Orthonormal block DCT


def dct_matrix(p: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``C`` (p, p): ``C[k, n] = s_k cos(pi (2n + 1) k / (2p))``,
    ``s_0 = sqrt(1/p)``, ``s_k = sqrt(2/p)``; ``C @ C.T = I``. Built in float64 on the CPU, then
    cast to ``dtype`` and moved to ``device`` (no float64 tensor is made on the device unless asked)."""
    n = torch.arange(p, dtype=torch.float64)
    k = n[:, None]
    c = torch.cos(math.pi * (2 * n[None, :] + 1) * k / (2 * p)) * math.sqrt(2.0 / p)
    c[0] = c[0] / math.sqrt(2.0)
    return c.to(dtype=dtype, device=device)


def _dct_blocks(blocks: torch.Tensor, p: int) -> torch.Tensor:
    c = dct_matrix(p, blocks.dtype, blocks.device)
    return torch.einsum("ki,...ij,lj->...kl", c, blocks, c)


def _idct_blocks(coeffs: torch.Tensor, p: int) -> torch.Tensor:
    c = dct_matrix(p, coeffs.dtype, coeffs.device)
    return torch.einsum("ki,...kl,lj->...ij", c, coeffs, c)


def block_dct(x: torch.Tensor, p: int) -> torch.Tensor:
    """Orthonormal 2-D DCT-II of every ``p x p`` block of ``x`` (..., H, W); H, W multiples of p.

    Returns the coefficients in the same layout as ``x`` (block (i, j)'s coefficient (ky, kx) sits
    at pixel (i p + ky, j p + kx)), same dtype. ``block_idct(block_dct(x)) == x``.
    """
    return blocks_to_image(_dct_blocks(image_to_blocks(x, p), p))


def block_idct(u: torch.Tensor, p: int) -> torch.Tensor:
    """Inverse of :func:`block_dct` (orthonormal DCT-III per block). Same shape/dtype as ``u``."""
    return blocks_to_image(_idct_blocks(image_to_blocks(u, p), p))


# --------------------------------------------------------------------------------------------
# Blur coefficients and the sigma <-> u coupling


def _cpu64(v: torch.Tensor | float) -> torch.Tensor:
    """A CPU float64 copy of a scalar / small table (the only place float64 is used)."""
    if isinstance(v, torch.Tensor):
        return v.detach().to(device="cpu", dtype=torch.float64)
    return torch.as_tensor(v, dtype=torch.float64)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Compute dtype for data of ``dtype``: float32, or float64 when the caller passes float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def u_of_sigma(
    sigma: torch.Tensor | float, prob_length: float, p_mean: float = P_MEAN, p_std: float = P_STD
) -> torch.Tensor:
    """``u = Phi((ln sigma - P_mean) / P_std) / L`` (CPU float64 tensor, shape of ``sigma``; sigma > 0,
    ``inf`` gives ``1 / L``)."""
    s = _cpu64(sigma)
    return torch.special.ndtr((torch.log(s) - p_mean) / p_std) / prob_length


def sigma_of_u(
    u: torch.Tensor | float, prob_length: float, p_mean: float = P_MEAN, p_std: float = P_STD
) -> torch.Tensor:
    """``sigma = exp(P_std * Phi^-1(u L) + P_mean)`` (CPU float64, shape of ``u``; 0 < u L < 1)."""
    uu = _cpu64(u)
    return torch.exp(p_std * torch.special.ndtri(uu * prob_length) + p_mean)


def blur_sigma_of_u(u: torch.Tensor | float, blur_sigma_max: float) -> torch.Tensor:
    """``sigma_b = B_max sin^2(pi u / 2)`` (CPU float64, shape of ``u``)."""
    uu = _cpu64(u)
    return blur_sigma_max * torch.sin(uu * math.pi / 2) ** 2


def alpha_table(blur_sigma: torch.Tensor | float, p: int, min_scale: float = 0.001) -> torch.Tensor:
    """Per-coefficient blur factors for block size ``p``.

    ``alpha[ky, kx] = exp(-(f_ky^2 + f_kx^2) sigma_b^2 / 2) (1 - min_scale) + min_scale`` with
    ``f_k = pi k / p``. ``blur_sigma`` of shape S (e.g. () or (B,)) gives a CPU float64 table
    ``S + (p, p)``; values in (min_scale, 1], exactly 1 everywhere when sigma_b = 0.
    """
    sb = _cpu64(blur_sigma)
    f = math.pi * torch.arange(p, dtype=torch.float64) / p
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    sb = sb[..., None, None]
    return torch.exp(-f2 * sb**2 / 2) * (1 - min_scale) + min_scale


def edm_sigma(sigma: torch.Tensor | float, flow: bool = False) -> torch.Tensor:
    """The EDM noise level of the same signal-to-noise ratio (CPU float64): ``sigma`` itself, or for a
    flow-matching ``t`` (``x = (1 - t) x0 + t n``, i.e. ``x / (1 - t) = x0 + t / (1 - t) n``) ``t / (1 - t)``
    (``inf`` at t = 1)."""
    s = _cpu64(sigma)
    if not flow:
        return s
    return torch.where(s < 1, s / (1 - s).clamp_min(1e-300), torch.full_like(s, math.inf))


def alpha_for_sigma(sigma: torch.Tensor | float, settings: RelaySettings, flow: bool = False) -> torch.Tensor:
    """Blur factors (CPU float64, ``shape(sigma) + (p, p)``) of the forward process at noise level sigma
    (a flow-matching ``t`` when ``flow``: the coupling is evaluated at :func:`edm_sigma`)."""
    u = u_of_sigma(edm_sigma(sigma, flow), settings.prob_length, settings.p_mean, settings.p_std)
    return alpha_table(blur_sigma_of_u(u, settings.blur_sigma_max), settings.patch, settings.min_scale)


def dct_blur(
    x: torch.Tensor, blur_sigma: torch.Tensor | float, p: int, min_scale: float = 0.001
) -> torch.Tensor:
    """Blur each ``p x p`` block of ``x`` (B, ..., H, W) by scaling its DCT coefficients with
    :func:`alpha_table`. ``blur_sigma``: scalar or (B,). Same shape and dtype as ``x``; computed in
    float32 (float64 when x is float64)."""
    work = _work_dtype(x.dtype)
    alpha = alpha_table(blur_sigma, p, min_scale).to(device=x.device, dtype=work)  # (p,p) or (B,p,p)
    if alpha.ndim == 3:  # one sigma_b per sample: broadcast over every axis but the batch
        alpha = alpha.reshape(alpha.shape[0], *([1] * (x.ndim - 1)), p, p)
    blocks = _dct_blocks(image_to_blocks(x.to(work), p), p)
    return blocks_to_image(_idct_blocks(blocks * alpha, p)).to(x.dtype)


# --------------------------------------------------------------------------------------------
# Noise-level grids


def relay_sigmas(
    steps: int, sigma_min: float, sigma_max: float, rho: float, truncation_sigma: float
) -> torch.Tensor:
    """Stage-two schedule: the Karras grid of ``steps`` nominal levels (EDM convention, see
    :func:`ultrares.kernels.schedules.karras_sigmas`) with every level ``>= truncation_sigma``
    dropped, plus a trailing 0 (float64, 1-D, strictly decreasing). Raises ``ValueError`` when no
    level is left (truncation at or below sigma_min)."""
    grid = schedules.karras_sigmas(steps, sigma_min, sigma_max, rho, convention="edm")
    kept = grid[grid < truncation_sigma]
    if kept.numel() == 0:
        raise ValueError(
            f"truncation_sigma {truncation_sigma:g} is at or below the lowest noise level {float(grid[-1]):g} "
            f"of the {steps}-step grid, so stage two would have no step. Raise truncation_sigma or steps."
        )
    return torch.cat([kept, kept.new_zeros(1)])


def truncation_problem(
    truncation_sigma: float | None, sigma_min: float | None, sigma_max: float | None
) -> str | None:
    """The one check of a truncation sigma against a sigma range, at queue time (a node's inputs) and
    at run time (:func:`relay_schedule`, on the range in use): ``sigma_min < sigma_max`` and
    ``sigma_min < truncation_sigma <= sigma_max``. ``None`` or 0 is a value not known yet (the model's
    own, at queue time); a message saying which value to change, else None."""
    trunc, lo, hi = truncation_sigma, sigma_min, sigma_max
    if lo and hi and lo >= hi:
        return f"sigma_min ({lo:g}) must be below sigma_max ({hi:g}) (or 0 for the model's own)."
    if lo and trunc is not None and not lo < trunc:
        return (
            f"truncation_sigma {trunc:g} must be above the lowest sigma {lo:g} "
            "(this model's sigma_min unless overridden)."
        )
    if hi and trunc is not None and trunc > hi:
        return (
            f"truncation_sigma {trunc:g} is above the model's sigma_max {hi:g}: "
            "nothing would be truncated (that is generation from noise). Lower it below sigma_max."
        )
    return None


def relay_schedule(
    steps: int,
    truncation_sigma: float,
    rho: float,
    model_range: tuple[float, float],
    sigma_min: float = 0.0,
    sigma_max: float = 0.0,
) -> torch.Tensor:
    """:func:`relay_sigmas` over a model's noise range ``model_range = (sigma_min, sigma_max)``, or over
    the ``sigma_min`` / ``sigma_max`` given (0: the model's own), which must lie inside it; float32.
    Raises ``ValueError`` saying which value to change."""
    lo, hi = float(model_range[0]), float(model_range[1])
    s_min = sigma_min if sigma_min > 0 else lo
    s_max = sigma_max if sigma_max > 0 else hi
    if s_min < lo * 0.999 or s_max > hi * 1.001:
        raise ValueError(
            f"sigma range [{s_min:g}, {s_max:g}] is outside this model's range [{lo:g}, {hi:g}]. "
            "Set sigma_min/sigma_max to 0 to use the model's own range."
        )
    if problem := truncation_problem(truncation_sigma, s_min, s_max):
        raise ValueError(problem)
    return relay_sigmas(int(steps), s_min, s_max, float(rho), float(truncation_sigma)).to(torch.float32)


def check_schedule_in_range(sigmas: torch.Tensor, model_range: tuple[float, float]) -> None:
    """Refuse a schedule (1-D, >= 2 entries) that leaves a model's noise range ``(sigma_min, sigma_max)``
    (a trailing 0 aside), with a message saying how to fix it."""
    lo, hi = float(model_range[0]), float(model_range[1])
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(
            f"sigmas must be a 1-D schedule with at least 2 entries, got shape {tuple(sigmas.shape)}."
        )
    top = float(sigmas[0])
    if top > hi * 1.001:
        raise ValueError(
            f"the schedule starts at sigma {top:g}, above this model's sigma_max {hi:g}. "
            "Use UltraResRelaySigmas (it reads the model's range) or lower the first sigma."
        )
    positive = sigmas[sigmas > 0]
    if positive.numel() and float(positive.min()) < lo * 0.999:
        raise ValueError(
            f"the schedule goes down to sigma {float(positive.min()):g}, below this model's "
            f"sigma_min {lo:g}. End the schedule at sigma_min (then 0)."
        )


# --------------------------------------------------------------------------------------------
# Memory


RELAY_STATE_TENSORS = 16
"""Latent-sized float32 tensors alive at the peak of a relay step: the sampler's state, DCT
coefficients, both slopes, the proposal, two denoised outputs and the noise (:func:`relay_sample`,
about 10), plus the sampling host's copies around the sampler (the up-sampled latent, the noise,
the noised input, the output and the denoise mask: about 6)."""


def relay_memory_bytes(out_shape, activation_bytes: int) -> tuple[int, int]:
    """(model activation bytes, relay state bytes) of relay stage two on a latent of ``out_shape``
    (B, C, H, W): ``activation_bytes`` as given (the host's estimate for the model; 0 = unknown) and
    :data:`RELAY_STATE_TENSORS` float32 tensors of ``out_shape``."""
    b, c, h, w = (int(v) for v in out_shape)
    return int(activation_bytes), RELAY_STATE_TENSORS * b * c * h * w * 4


def memory_refusal(
    in_shape, factor: int, activations: int, state: int, have: int, device: str, ratio: int
) -> str:
    """The message refusing a x``factor`` relay up-scale of a latent of ``in_shape`` (B, C, H, W) whose
    estimate (``activations + state`` bytes) exceeds the ``have`` bytes of ``device``; ``ratio``:
    pixels per latent pixel."""
    b, c, h, w = (int(v) for v in in_shape)
    oh, ow = h * factor, w * factor
    gib = 1024**3
    parts = (
        f"model activations {activations / gib:.1f} GiB by ComfyUI's own estimate + " if activations else ""
    )
    return (
        f"up-scaling a {w}x{h} latent (batch {b}) by {factor} to {ow}x{oh} ({ow * ratio}x"
        f"{oh * ratio} px) needs at least {(activations + state) / gib:.1f} GiB ({parts}relay sampler state "
        f"{state / gib:.1f} GiB), but {device} has about {have / gib:.1f} GiB available. Use a smaller factor "
        "or batch, relay in two smaller steps, or patch the model with Tiled Diffusion (UltraResTiledDiffusion) "
        "so it samples in tiles."
    )


# --------------------------------------------------------------------------------------------
# Sampler


Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
RandnFn = Callable[[torch.Size], torch.Tensor]

_SEED_MULT = 6364136223846793005  # Knuth's MMIX LCG: odd multiplier, so the map is a bijection mod 2^64
_SEED_INC = 1442695040888963407


def step_seed(seed: int) -> int:
    """Seed of the per-step noise stream derived from a run's ``seed``:
    ``(seed * 6364136223846793005 + 1442695040888963407) mod 2^64``.

    A bijection on 64-bit seeds (different seeds never share a stream) that never returns ``seed`` or
    ``seed + 1``, the seeds ComfyUI-style callers use for the starting noise and its block component,
    so the step noise is not a replay of the starting noise."""
    return (int(seed) * _SEED_MULT + _SEED_INC) % 2**64


def cpu_randn(generator: torch.Generator) -> RandnFn:
    """``randn(shape)``: i.i.d. unit float32 noise drawn on the CPU from ``generator`` (a CPU
    generator), the same numbers on every device once moved there."""
    return lambda shape: torch.randn(tuple(shape), generator=generator, dtype=torch.float32)


def _seeded(seed: int) -> RandnFn:
    return cpu_randn(torch.Generator().manual_seed(int(seed) % 2**64))


def relay_start(
    x_up: torch.Tensor,
    sigma: float,
    p: int,
    s_block: float,
    randn: RandnFn | None = None,
    *,
    seed: int = 0,
    flow: bool = False,
) -> torch.Tensor:
    """Stage-two starting point: ``x_up + sigma n`` (EDM) or ``(1 - t) x_up + t n`` (``flow``, t = sigma),
    with ``n = eps + s_block * block_noise(eps')``.

    ``x_up`` (..., H, W): the nearest-upsampled stage-one result (H, W multiples of p). ``randn``
    draws i.i.d. unit noise of a given shape (default: a CPU generator seeded with ``seed``, see
    :func:`cpu_randn`). Returns the dtype of x_up. eps is drawn first, then eps' (only when s_block > 0).
    """
    randn = randn or _seeded(seed)
    eps = randn(x_up.shape).to(x_up)
    noise = relay_noise(eps, randn(x_up.shape).to(x_up) if s_block > 0 else None, p, s_block)
    scale = 1.0 - float(sigma) if flow else 1.0
    return scale * x_up + float(sigma) * noise


@torch.no_grad()
def relay_sample(
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    settings: RelaySettings,
    randn: RandnFn | None = None,
    callback: Callable[[dict], None] | None = None,
    *,
    seed: int = 0,
    flow: bool = False,
) -> torch.Tensor:
    """Relay sampler: stochastic Heun in block-DCT space.

    - ``denoise(x, sigma)``: the denoiser D; gets ``x`` (compute dtype, shape of ``x``) and ``sigma``
      (0-d CPU float64 tensor), returns the x0 estimate (any float dtype, shape of ``x``).
    - ``x``: (..., H, W), H and W multiples of ``settings.patch``; the state at ``sigmas[0]``
      (e.g. from :func:`relay_start`: the up-sampled image plus noise at the truncation sigma).
    - ``sigmas``: 1-D, strictly decreasing, >= 0 (<= 1 with ``flow``); a trailing 0 makes the last
      step return D(x).
    - ``randn(shape)``: i.i.d. unit noise (CPU or device; moved to x's device). Default: a CPU
      generator seeded with :func:`step_seed` ``(seed)``; the global RNG is never used. Drawn only
      when needed, in this order per step: churn noise when the churn gamma > 0, step noise when
      s_noise > 0; each noise is one draw, plus a second for the block component when s_block > 0.
    - ``flow``: the model is flow matching (``x = (1 - t) x0 + t n``, sigma == t).
    - ``callback``: called once per step with ``{"x", "i", "sigma", "sigma_hat", "denoised"}``.

    Compute dtype: float32 (float64 only when x is float64). With ``c_t = 1`` (EDM) or ``1 - t``
    (flow), per step (t = t_hat after churn, s = t_next, a_t / a_s the blur factors at t / s,
    g = sqrt(1 - s_noise^2) s / t, u = DCT(x), u0 = DCT(D(x, t))):
    ``x' = IDCT(c_s a_s u0 + g (u - c_t a_t u0)) + s_noise s (eps + s_block eps_blk)``, i.e. the
    estimated noise ``(u - c_t a_t u0) / t`` is carried to level s. Written as
    ``coef_u u + coef_d (u - u0) / t``; the Heun correction re-evaluates D at x' and averages the
    two slopes ``(u - u0) / t`` under the same coefficients. Churn (Karras et al. Algorithm 2)
    raises t to ``t_hat = t (1 + gamma)`` by ``x <- (c_hat / c_t) x + sqrt(t_hat^2 - (c_hat t / c_t)^2) n``
    (the usual ``x + sqrt(t_hat^2 - t^2) n`` for EDM; t_hat <= 1 for flow). With
    blur_sigma_max = 0, s_block = 0 and s_noise = 0 this is exactly k-diffusion's ``sample_heun``
    (churn included for EDM; for flow without churn). Returns the compute dtype, shape of ``x``.
    """
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(
            f"sigmas must be a 1-D schedule with at least 2 entries, got shape {tuple(sigmas.shape)}."
        )
    p = settings.patch
    check_block_divisible(x.shape, p, "the latent being sampled")
    work = _work_dtype(x.dtype)
    dev = x.device
    randn = randn or _seeded(step_seed(seed))
    sig = _cpu64(sigmas)
    if not bool(torch.isfinite(sig).all()):
        raise ValueError(f"sigmas must be finite, got {sig.tolist()}.")
    if bool((sig[1:] >= sig[:-1]).any()) or bool((sig < 0).any()):
        raise ValueError(f"sigmas must be strictly decreasing and >= 0, got {sig.tolist()}.")
    if flow and float(sig[0]) > 1.0:
        raise ValueError(
            f"a flow-matching schedule lives in [0, 1] (sigma is the time t), got sigmas[0] = {float(sig[0]):g}."
        )

    def draw() -> torch.Tensor:
        return randn(x.shape).to(device=dev, dtype=work)

    def fresh_noise() -> torch.Tensor:
        eps = draw()
        return relay_noise(eps, draw() if settings.s_block > 0 else None, p, settings.s_block)

    def scale(t: float) -> float:  # c_t: signal scale of the noising
        return 1.0 - t if flow else 1.0

    def to_dct(v: torch.Tensor) -> torch.Tensor:
        return _dct_blocks(image_to_blocks(v, p), p)

    def from_dct(c: torch.Tensor) -> torch.Tensor:
        return blocks_to_image(_idct_blocks(c, p))

    def den(v: torch.Tensor, s: float) -> torch.Tensor:
        return denoise(v, torch.tensor(s, dtype=torch.float64)).to(device=dev, dtype=work)

    steps = sig.numel() - 1
    xc = x.detach().to(work)
    for i in range(steps):
        t_cur, t_next = float(sig[i]), float(sig[i + 1])
        churn = (
            min(settings.s_churn / steps, 2**0.5 - 1) if settings.s_tmin <= t_cur <= settings.s_tmax else 0.0
        )
        t = t_cur * (churn + 1)
        if flow:
            t = min(t, 1.0) if t_cur < 1.0 else t_cur
        if t > t_cur:
            ratio = scale(t) / scale(t_cur)
            add = max(t**2 - (ratio * t_cur) ** 2, 0.0) ** 0.5
            xc = ratio * xc + fresh_noise() * settings.s_churn_noise * add
        d0 = den(xc, t)
        if callback is not None:
            callback({"x": xc, "i": i, "sigma": sig[i], "sigma_hat": t, "denoised": d0})
        if t_next == 0:
            xc = d0  # final step: the denoised estimate
            continue
        # coefficients: (p, p) tables computed in float64 on the CPU, then cast once
        a_t, a_s = alpha_for_sigma(t, settings, flow), alpha_for_sigma(t_next, settings, flow)
        g = (1 - settings.s_noise**2) ** 0.5 * t_next / t
        coef_d64 = t * (g * scale(t) * a_t - scale(t_next) * a_s)
        coef_u = (g - coef_d64 / t).to(device=dev, dtype=work)
        coef_d = coef_d64.to(device=dev, dtype=work)
        u = to_dct(xc)
        slope = (u - to_dct(d0)) / t
        x_prop = from_dct(coef_u * u + coef_d * slope)
        if settings.s_noise > 0:
            x_prop = x_prop + settings.s_noise * t_next * fresh_noise()
        d1 = den(x_prop, t_next)
        slope2 = (to_dct(x_prop) - to_dct(d1)) / t_next
        xc = from_dct(coef_u * u + coef_d * (slope + slope2) / 2)
        if settings.s_noise > 0:
            xc = xc + settings.s_noise * t_next * fresh_noise()
    return xc


# --------------------------------------------------------------------------------------------
# Training objective


def relay_training_loss(
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    settings: RelaySettings,
    *,
    block_scale: float = 0.15,
    sigma_data: float = 0.5,
    truncate_sigma: float = 7.5e-3,
    max_weight: float = 1e5,
    u: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    noise_block: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Relay (blurring) diffusion objective for a stage-two model; per-element loss.

    - ``denoise(x, sigma)``: the network as an EDM denoiser; gets ``x`` (B, C, H, W, dtype of
      images) and ``sigma`` (B,) in the images' dtype, returns the x0 estimate (B, C, H, W).
    - ``images``: (B, C, H, W) sharp training images (EDM scaling, std ~ sigma_data), H, W
      multiples of ``settings.patch``.
    - ``u`` (B,) in [0, 1), ``noise`` / ``noise_block`` (B, C, H, W) unit normal: optional, drawn
      from ``generator`` when omitted (u first, then noise, then noise_block).

    ``u`` is clamped so that sigma >= truncate_sigma; sigma = exp(P_std Phi^-1(u L) + P_mean);
    sigma_b = B_max sin^2(pi u / 2); input = DCT-blur(y, sigma_b) + sigma (eps + block_scale
    eps_blk); target = the *sharp* y; weight = (sigma^2 + sd^2) / (sigma sd)^2, clamped at
    ``max_weight``. Returns ``weight * (D(input, sigma) - y)^2``, shape and dtype of images
    (reduce it as the training loop wants, e.g. ``.mean()``).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}.")
    b = images.shape[0]
    dev = images.device
    # the (B,) schedule values are computed in float64 on the CPU and cast to the images' dtype
    if u is None:
        u = torch.rand(b, generator=generator, dtype=torch.float64)
    u = _cpu64(u)
    u_min = u_of_sigma(truncate_sigma, settings.prob_length, settings.p_mean, settings.p_std)
    u = torch.maximum(u, u_min)
    sigma = sigma_of_u(u, settings.prob_length, settings.p_mean, settings.p_std)
    blur = blur_sigma_of_u(u, settings.blur_sigma_max)
    weight = ((sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2).clamp(max=max_weight)
    sigma_d = sigma.to(device=dev, dtype=images.dtype)
    weight = weight.to(device=dev, dtype=images.dtype)

    if noise is None:
        noise = torch.randn(images.shape, generator=generator, dtype=images.dtype).to(dev)
    n = noise
    if block_scale > 0:
        if noise_block is None:
            noise_block = torch.randn(images.shape, generator=generator, dtype=images.dtype).to(dev)
        n = n + block_scale * block_noise(noise_block, settings.patch)
    sig4 = sigma_d.view(b, 1, 1, 1)
    y_blur = dct_blur(images, blur, settings.patch, settings.min_scale)
    pred = denoise(y_blur + sig4 * n, sigma_d)
    return weight.view(b, 1, 1, 1) * (pred - images) ** 2


# --------------------------------------------------------------------------------------------
# Relay settings stored with a trained model


RELAY_CONFIG_KEYS = {
    "patch": int,
    "blur_sigma_max": float,
    "prob_length": float,
    "s_block": float,
    "s_noise": float,
    "truncation_sigma": float,
    "rho": float,
    "steps": int,
    "low_res": list,
    "train": dict,
}
"""Keys of a model config's ``"relay"`` section (k-diffusion config JSON, also in the checkpoint's
safetensors metadata): the sampler settings the model was trained for (``patch`` .. ``s_noise`` as
in :class:`RelaySettings`), the sampling defaults (``truncation_sigma``, ``rho``, nominal ``steps``),
the stage-one size ``low_res`` [H, W], and the training objective's ``train`` keywords of
:func:`relay_training_loss` (``block_scale``, ``truncate_sigma``, ``max_weight``)."""


@dataclass(frozen=True)
class TrainedRelay:
    """The relay settings a model was trained for (its config's ``"relay"`` section, :func:`relay_config`):
    the sampler ``settings`` (its ``patch``, ``blur_sigma_max``, ``prob_length``, ``s_block``, ``s_noise``;
    the rest at :class:`RelaySettings`' defaults), the sampling defaults ``truncation_sigma``, ``rho``,
    nominal ``steps``, the stage-one size ``low_res`` (H, W) or None, and the training keywords ``train``."""

    settings: RelaySettings
    truncation_sigma: float = 0.9
    rho: float = 7.0
    steps: int = 40
    low_res: tuple[int, int] | None = None
    train: dict = field(default_factory=dict)

    def apply(self, settings: RelaySettings) -> RelaySettings:
        """``settings`` with the trained blur and noise settings (``blur_sigma_max``, ``prob_length``,
        ``s_block``, ``s_noise``). A model trained with blurring (B_max > 0) only works at its trained
        block size: another ``settings.patch`` raises ``ValueError`` saying which to set."""
        t = self.settings
        if t.blur_sigma_max > 0 and settings.patch != t.patch:
            raise ValueError(
                f"this model was trained for relay stage two with block size {t.patch} (a x{t.patch} up-scale), "
                f"but the factor / block size here is {settings.patch}. Set it to {t.patch}"
            )
        return replace(
            settings,
            blur_sigma_max=t.blur_sigma_max,
            prob_length=t.prob_length,
            s_block=t.s_block,
            s_noise=t.s_noise,
        )


def relay_config(raw: dict) -> TrainedRelay | None:
    """The validated ``"relay"`` section of a model config (``None`` when there is none) as a
    :class:`TrainedRelay`. Raises ``ValueError`` naming the bad key."""
    sec = raw.get("relay") if isinstance(raw, dict) else None
    if sec is None:
        return None
    if not isinstance(sec, dict):
        raise ValueError(f"config 'relay' must be an object, got {type(sec).__name__}")
    unknown = set(sec) - set(RELAY_CONFIG_KEYS)
    if unknown:
        raise ValueError(
            f"config 'relay' has unknown keys {sorted(unknown)}; known: {sorted(RELAY_CONFIG_KEYS)}"
        )
    for k, v in sec.items():
        kind = RELAY_CONFIG_KEYS[k]
        ok = isinstance(v, kind) or (kind is float and isinstance(v, int))
        if isinstance(v, bool) or not ok:
            raise ValueError(f"config relay.{k} must be {kind.__name__}, got {v!r}")
        if kind in (int, float) and not math.isfinite(v):
            raise ValueError(f"config relay.{k} must be finite, got {v!r}")
    fields = {k: sec[k] for k in ("patch", "blur_sigma_max", "prob_length", "s_block", "s_noise") if k in sec}
    settings = RelaySettings(**fields)
    trunc, rho, steps = (
        float(sec.get("truncation_sigma", 0.9)),
        float(sec.get("rho", 7.0)),
        int(sec.get("steps", 40)),
    )
    if not 0 < trunc or rho <= 0 or not STEPS[0] <= steps <= STEPS[1]:
        raise ValueError(
            f"config relay: truncation_sigma {trunc} must be > 0, rho {rho} > 0, steps {steps} in {STEPS[0]}..{STEPS[1]}"
        )
    low = sec.get("low_res")
    if low is not None:
        if len(low) != 2 or not all(isinstance(v, int) and 1 <= v <= 65536 for v in low):
            raise ValueError(f"config relay.low_res must be [height, width] in pixels, got {low!r}")
        low = (int(low[0]), int(low[1]))
    train = dict(sec.get("train", {}))
    bad = set(train) - {"block_scale", "truncate_sigma", "max_weight"}
    if bad:
        raise ValueError(f"config relay.train has unknown keys {sorted(bad)}")
    for k, v in train.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"config relay.train.{k} must be a finite number, got {v!r}")
    return TrainedRelay(settings, trunc, rho, steps, low, {k: float(v) for k, v in train.items()})
