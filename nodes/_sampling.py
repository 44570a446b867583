"""The sampling glue shared by node files: run a comfy-free loop through ComfyUI's guider.

A technique whose sampler is a plain loop over a denoiser ``D(x, sigma) -> x0`` (``kernels/relay.py``,
``kernels/inversion.py``, anything new) reaches ComfyUI through two calls:

- :func:`loop_sampler` wraps the loop in a ``comfy.samplers.KSAMPLER`` (a SAMPLER for
  SamplerCustom / SamplerCustomAdvanced, or for :func:`guided_sample`). Inside, the loop gets a
  :class:`LoopRun`: the denoiser (ComfyUI's x0 prediction with conditioning, cfg, patches and
  wrappers, checking for an interrupt before every model call), ``report`` for ComfyUI's step
  callback (preview and progress), the noise seed and the model's ``model_sampling``.
- :func:`guided_sample` runs such a SAMPLER with a ``CFGGuider`` built from the node's conditioning,
  with ComfyUI's preview callback and progress bar, and returns the result on the intermediate device.

Also here, once for every node file: the latent checks (:func:`image_samples`, :func:`check_image_tensor`,
:func:`check_channels`), :func:`model_family`, the model's noise space (:func:`check_sigma_space`), whether
a wrapper decides what the model sees (:func:`model_sees_full_latent`), and a model's trained relay
settings over the node's (:func:`with_trained_relay`, read by ``kernels.hdit_format.trained_relay``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import comfy.model_management
import comfy.patcher_extension
import comfy.samplers
import comfy.utils
import latent_preview
import torch

from ..kernels import hdit_format
from ..kernels import relay as R
from ._common import require_image_latent

# --------------------------------------------------------------------------------------------
# Model and latent checks

KNOWN_FAMILIES = ("SDXLRefiner", "SDXL", "SD20", "SD15")
"""Families :func:`model_family` names by their base class (fine-tunes and variants subclass them)."""


def model_family(model, *, exact: bool = False) -> str:
    """The model's family from its ComfyUI model config: ``"SD15"``, ``"SD20"``, ``"SDXL"``... (the
    first of :data:`KNOWN_FAMILIES` in the config's class hierarchy, else its own class name such as
    ``"Flux"`` or ``"SD3"``). ``exact=True`` gives the config's own class name always (what the
    inversion record stores: a variant such as ``SD15_instructpix2pix`` stays apart from ``SD15``)."""
    names = [c.__name__ for c in type(model.model.model_config).__mro__]
    if not exact:
        for known in KNOWN_FAMILIES:
            if known in names:
                return known
    return names[0]


def check_image_tensor(samples: torch.Tensor, who: str, name: str = "latent") -> torch.Tensor:
    """``samples`` after refusing anything but an image latent ``(B, C, H, W)`` (a nested multi-part
    latent, video, audio) with a message naming the node ``who``, the input ``name`` and what it got."""
    if getattr(samples, "is_nested", False):
        raise ValueError(
            f"{who}: {name} is a nested (multi-part) latent; {who} works on image latents (B, C, H, W) "
            "only. Use it with image models only."
        )
    require_image_latent(samples, who)
    return samples


def image_samples(latent: dict, who: str, name: str = "latent") -> torch.Tensor:
    """The samples of a LATENT dict after refusing typed (audio, 3D...) and non-image latents
    (:func:`check_image_tensor`)."""
    kind = latent.get("type")
    if kind is not None:
        raise ValueError(
            f"{who}: {name} is a {kind!r} latent; {who} works on image latents (B, C, H, W) only."
        )
    return check_image_tensor(latent["samples"], who, name)


CHANNEL_FIX = "Connect a latent made for this model (its VAE or its empty-latent node)."


def check_channels(
    model, samples: torch.Tensor, name: str, who: str | None = None, fix: str = CHANNEL_FIX
) -> None:
    """Refuse a latent without a channel axis, or whose channel count is not the model's
    (``latent_format.latent_channels``): it was made for another model or VAE. ``fix`` ends the message."""
    if samples.ndim < 4:  # (B, C, ...) with spatial axes: what every model ComfyUI samples takes
        require_image_latent(samples, who or "this node")
    want = getattr(model.get_model_object("latent_format"), "latent_channels", None)
    if want is not None and samples.shape[1] != want:
        prefix = f"{who}: " if who else ""
        raise ValueError(
            f"{prefix}{name} has {samples.shape[1]} channels but this model ({model_family(model, exact=True)}) works "
            f"on {want}-channel latents: it comes from another model or VAE. {fix}"
        )


def check_sigma_space(model_sampling, who: str) -> bool:
    """The model's noise space: False for ``x0 + sigma * noise`` (EPS, V_PREDICTION, EDM), True for flow
    matching ``(1 - t) x0 + t * noise`` (CONST: SD3, Flux); refuses any other noising with a message.

    Read from the model's own ``noise_scaling`` (x0 = 2, noise = 1, sigma = 0.5 gives 2.5 or 1.5)."""
    probe = model_sampling.noise_scaling(
        torch.tensor(0.5), torch.ones(1), torch.full((1,), 2.0), max_denoise=False
    )
    if torch.allclose(probe.float().cpu(), torch.tensor([2.5])):
        return False
    if torch.allclose(probe.float().cpu(), torch.tensor([1.5])):
        return True
    raise ValueError(
        f"{who}: this model ({type(model_sampling).__name__}) noises neither as x0 + sigma * noise (SD1.x/SD2.x/SDXL, "
        "EDM models such as HDiT) nor as (1 - t) x0 + t * noise (flow matching: SD3, Flux), the two noisings the relay "
        "sampler supports. Use one of those models for relay stage two."
    )


_SIZE_CHANGING_WRAPPERS = (
    comfy.patcher_extension.WrappersMP.OUTER_SAMPLE,
    comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE,
    comfy.patcher_extension.WrappersMP.PREDICT_NOISE,
    comfy.patcher_extension.WrappersMP.CALC_COND_BATCH,
    comfy.patcher_extension.WrappersMP.APPLY_MODEL,
    comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
)


def model_sees_full_latent(model) -> bool:
    """False when a wrapper decides what the model (a ModelPatcher) evaluates (e.g. Tiled Diffusion
    runs it on tiles): then an estimate from the latent's size does not apply."""
    if model.model_options.get("model_function_wrapper") is not None:
        return False
    wrappers = dict(getattr(model, "wrappers", {}) or {})
    nested = model.model_options.get("transformer_options", {}).get("wrappers", {})
    return not any(
        any(wrappers.get(k, {}).values()) or any(nested.get(k, {}).values()) for k in _SIZE_CHANGING_WRAPPERS
    )


def with_trained_relay(settings: R.RelaySettings, model, who: str) -> R.RelaySettings:
    """``settings`` with the trained blur/noise settings of a relay-trained ``model`` (unchanged for
    others; ``model`` a ModelPatcher or BaseModel, read by ``kernels.hdit_format.trained_relay``); a model
    trained with blurring refuses another block size, naming the node ``who``."""
    trained = hdit_format.trained_relay(model)
    if trained is None:
        return settings
    try:
        return trained.apply(settings)
    except ValueError as e:
        raise ValueError(
            f"{who}: {e}, or set relay_settings to 'inputs' to run with the values set on the node."
        ) from None


# --------------------------------------------------------------------------------------------
# The loop inside a KSAMPLER


@dataclass(frozen=True)
class LoopRun:
    """What a comfy-free sampling loop gets from ComfyUI (see :func:`loop_sampler`).

    - ``denoise(x, sigma) -> x0``: ComfyUI's x0 prediction (conditioning, cfg, patches, wrappers);
      ``x`` any float dtype (cast to the sampler's), ``sigma`` a scalar or ``[B]`` tensor; the result
      has the sampler's dtype. It raises ComfyUI's interrupt before the model call.
    - ``report(info)``: ComfyUI's step callback, ``info = {"x", "i", "sigma", "sigma_hat", "denoised"}``.
    - ``seed``: ComfyUI's noise seed (0 when none was given), for a loop's own step noise.
    - ``model_sampling``: the model's ``model_sampling`` (None when the model wrapper hides it).
    - ``base_model``: the ``BaseModel`` being sampled (None when the model wrapper hides it), for
      settings a model carries (e.g. the relay settings of a relay-trained HDiT).
    """

    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    report: Callable[[dict], None]
    seed: int
    model_sampling: Any
    base_model: Any = None


Loop = Callable[..., torch.Tensor]
"""``loop(run: LoopRun, x, sigmas, **options) -> x``: ``x`` the noised latent at ``sigmas[0]``."""


def _sampler_function(
    model, x, sigmas, extra_args=None, callback=None, disable=None, *, loop: Loop, **options
):
    """KSAMPLER function (k-diffusion signature) running ``loop``; ``model`` is ComfyUI's x0 predictor."""
    extra_args = {} if extra_args is None else extra_args
    dtype = x.dtype
    s_in = x.new_ones([x.shape[0]])

    def denoise(v, sigma):
        comfy.model_management.throw_exception_if_processing_interrupted()
        return model(v.to(dtype), sigma.to(device=x.device, dtype=dtype) * s_in, **extra_args)

    def report(info):
        if callback is not None:
            callback({**info, "x": info["x"].to(dtype), "denoised": info["denoised"].to(dtype)})

    seed = extra_args.get("seed")
    inner = getattr(getattr(model, "inner_model", None), "inner_model", None)
    run = LoopRun(
        denoise=denoise,
        report=report,
        seed=0 if seed is None else int(seed),
        model_sampling=getattr(inner, "model_sampling", None),
        base_model=inner,
    )
    with torch.no_grad():
        return loop(run, x, sigmas, **options).to(dtype)


def loop_sampler(loop: Loop, **options) -> comfy.samplers.KSAMPLER:
    """A ComfyUI SAMPLER whose sampling is ``loop(run, x, sigmas, **options)`` (see :class:`LoopRun`)."""
    return comfy.samplers.KSAMPLER(_sampler_function, extra_options={"loop": loop, **options})


# --------------------------------------------------------------------------------------------
# The guided run


def guided_sample(
    model,
    latent_image: torch.Tensor,
    sampler,
    sigmas: torch.Tensor,
    *,
    positive,
    negative=None,
    cfg: float = 1.0,
    noise: torch.Tensor | None = None,
    denoise_mask=None,
    seed: int = 0,
) -> torch.Tensor:
    """Run ``sampler`` over ``sigmas`` on ``latent_image`` through a ``CFGGuider`` of ``model``.

    ``positive`` (and ``negative``, left out when None) are ComfyUI conditionings; ``cfg`` is set as
    given. ``noise`` defaults to zeros (a deterministic start from ``latent_image`` itself). ComfyUI's
    preview callback and progress bar follow the steps. Returns the latent on the intermediate device."""
    guider = comfy.samplers.CFGGuider(model)
    conds = {"positive": positive}
    if negative is not None:
        conds["negative"] = negative
    guider.inner_set_conds(conds)
    guider.set_cfg(cfg)
    callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1)
    with torch.no_grad():
        out = guider.sample(
            torch.zeros_like(latent_image) if noise is None else noise,
            latent_image,
            sampler,
            sigmas,
            denoise_mask=denoise_mask,
            callback=callback,
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
            seed=seed,
        )
    return out.to(comfy.model_management.intermediate_device())
