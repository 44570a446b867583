"""Noise-level grids and the samplers the kernels share (plain PyTorch, nothing from ComfyUI).

- :func:`karras_sigmas`: the Karras et al. (EDM) grid ``(s_max^(1/rho) + r (s_min^(1/rho) -
  s_max^(1/rho)))^rho`` for a ramp ``r`` from 0 to 1. Two reference implementations of it are in
  use and they differ in more than the trailing zero, so the caller names the one it follows
  (``convention``) and gets that implementation's values bit for bit:

  - ``"edm"`` (the EDM / Relay Diffusion reference code): float64 on the CPU, ramp
    ``i / (steps - 1)``, ``steps`` levels and no trailing zero; one step is ``[sigma_max]``.
    Used by :func:`ultrares.kernels.relay.relay_sigmas`.
  - ``"k-diffusion"`` (k-diffusion's ``get_sigmas_karras``, which ComfyUI's ``karras`` scheduler
    is): float32 on ``device``, ramp ``torch.linspace(0, 1, steps)``, then a trailing 0, so
    ``steps + 1`` entries. Used with the HDiT sampler below.

  (The ramps differ in the last bits: ``linspace`` is not ``arange / (steps - 1)``.)
- :func:`sd_sigmas`: Stable Diffusion's 1000 discrete noise levels (``scaled_linear`` betas), what
  the LinFusion distillation samples its training noise from.
- :func:`sample_dpmpp_2m`: DPM-Solver++(2M), deterministic, with optional class-conditional CFG,
  for a denoiser ``D(x, sigma, **kw) -> x0`` (k-diffusion's ``sample_dpmpp_2m``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["KARRAS_CONVENTIONS", "karras_sigmas", "sample_dpmpp_2m", "sd_sigmas"]

KARRAS_CONVENTIONS = ("edm", "k-diffusion")


def karras_sigmas(
    steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0, *, convention: str, device=None
) -> torch.Tensor:
    """The Karras noise grid from ``sigma_max`` down to ``sigma_min`` (both > 0, min < max).

    ``convention="edm"``: ``[steps]`` float64 (CPU, then moved to ``device`` if one is given), no
    trailing zero. ``convention="k-diffusion"``: ``[steps + 1]`` float32 computed on ``device``,
    ending in 0. See the module docstring for how the two differ. Raises ``ValueError`` for
    ``steps < 1``, a bad sigma range or an unknown convention."""
    if convention not in KARRAS_CONVENTIONS:
        raise ValueError(f"convention must be one of {KARRAS_CONVENTIONS}, got {convention!r}.")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}.")
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    if convention == "k-diffusion":
        ramp = torch.linspace(0, 1, steps, device=device)
        sigmas = (hi + ramp * (lo - hi)) ** rho
        return torch.cat([sigmas, sigmas.new_zeros(1)])
    if steps == 1:
        grid = torch.tensor([sigma_max], dtype=torch.float64)
    else:
        i = torch.arange(steps, dtype=torch.float64)
        grid = (hi + i / (steps - 1) * (lo - hi)) ** rho
    return grid if device is None else grid.to(device)


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Callable[..., torch.Tensor],
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    class_cond: torch.Tensor | None = None,
    cfg_scale: float = 1.0,
    uncond_class: int | None = None,
    callback=None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (deterministic). ``denoiser(x [B, C, H, W], sigma [B], class_cond=...)`` returns
    the x0 estimate (e.g. :class:`ultrares.kernels.hdit.Denoiser`). ``noise`` ``[B, C, H, W]`` standard
    normal; ``sigmas`` descending and ending in 0 (:func:`karras_sigmas` with
    ``convention="k-diffusion"``); ``class_cond`` ``[B]`` int64 or None. With ``cfg_scale != 1`` the
    batch is also denoised with ``uncond_class`` and combined as ``u + (c - u) * cfg_scale``.
    ``callback(i, denoised)`` is called once per step. Returns the denoised sample ``[B, C, H, W]``
    (model space, about [-1, 1])."""

    def d_fn(x, s):
        sig = s.expand(x.shape[0])
        if class_cond is None or cfg_scale == 1.0:
            kw = {} if class_cond is None else {"class_cond": class_cond}
            return denoiser(x, sig, **kw)
        unc = torch.full_like(class_cond, uncond_class)
        both = denoiser(torch.cat([x, x]), torch.cat([sig, sig]), class_cond=torch.cat([class_cond, unc]))
        c, u = both.chunk(2)
        return u + (c - u) * cfg_scale

    x = noise * sigmas[0]
    old = None
    for i in range(len(sigmas) - 1):
        den = d_fn(x, sigmas[i])
        if callback is not None:
            callback(i, den)
        if sigmas[i + 1] == 0:
            x = den
            break
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        if old is None:
            d = den
        else:
            h_last = t - (-sigmas[i - 1].log())
            r = h_last / h
            d = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old
        x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * d
        old = den
    return x


def sd_sigmas(timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """SD's discrete noise levels (``scaled_linear`` betas): ``[timesteps]`` float32, increasing."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float()
