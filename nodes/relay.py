"""Relay Diffusion as ComfyUI custom-sampling nodes (thin adapters over ``kernels/relay.py``).

- ``UltraResBlockNoise`` (NOISE): i.i.d. noise plus the relay block component.
- ``UltraResRelaySigmas`` (SIGMAS): the model's Karras grid truncated at the truncation sigma.
- ``UltraResRelaySampler`` (SAMPLER): the relay sampler for SamplerCustom / SamplerCustomAdvanced.
- ``UltraResRelayUpscale``: all of it in one node (nearest up-sampling, block noise, relay sampling with CFG).

The sampler runs in ComfyUI's sigma space on the denoised outputs of its model wrapper: on models that
noise as ``x0 + sigma * noise`` (SD1.x/2.x/SDXL, EDM models such as HDiT) and on flow matching (SD3,
Flux: ``(1 - t) x0 + t * noise``); others are refused. Step noise comes from a CPU generator seeded
from ComfyUI's noise seed (``kernels.relay.step_seed``), never the global RNG. Inputs are declared
once, in the schemas (:class:`._inputs.CheckedNode` checks them at queue and run time).
"""

from __future__ import annotations

import comfy.sample
import comfy.samplers
import torch
from comfy_api.latest import io

from ..kernels import relay as R
from ._common import available_memory, frugal_activation_bytes, latent_downscale_ratio, seed_input
from ._compat import schema_extras
from ._inputs import CheckedNode
from ._sampling import (
    LoopRun,
    check_channels,
    check_image_tensor,
    check_sigma_space,
    guided_sample,
    image_samples,
    loop_sampler,
    model_sees_full_latent,
    with_trained_relay,
)

CATEGORY = "UltraRes/relay"


# --------------------------------------------------------------------------------------------
# Shared input definitions (one place for ranges and tooltips)


TIPS = {
    "block_size": "Block size p of the block noise and of the per-block DCT blur: the up-scale factor between "
    "the two stages, in latent pixels (2 for 512->1024). Must divide the latent's height and width.",
    "s_block": "Weight of the block-noise component added to the i.i.d. noise (0.15 in the paper; 0 = plain noise).",
    "blur_sigma_max": "B_max: blur strength of the forward process at u = 1. Use the value the model was trained "
    "with (3.0 ImageNet, 2.0 CelebA); 0 for ordinary models (training-free relay hires fix).",
    "prob_length": "L: the share of the EDM log-normal noise distribution mapped onto u in [0, 1] "
    "(0.93 ImageNet, 0.89 CelebA). Only matters when blur_sigma_max > 0.",
    "s_noise": "Stochasticity of each relay step: the share of the next noise level that is fresh noise "
    "(0.2 in the paper; 0 = deterministic Heun).",
    "s_churn": "EDM churn (Karras et al. Algorithm 2) before each step, as in the heun sampler; 0 = off.",
    "s_churn_noise": "Scale of the churn noise (S_noise in EDM, 1.003 in the paper's stage one).",
    "steps": "Nominal steps of the full Karras grid; only the levels below truncation_sigma are run "
    "(the effective step count is shown nowhere else: about 40-50% of this for SD models).",
    "truncation_sigma": "Stage two starts at the first grid level below this sigma (0.9 in the paper for EDM pixel "
    "models; 0.9-2.0 suits SD latents). For flow models (SD3, Flux) it is the time t in (0, 1), "
    "e.g. 0.6. Higher = more freedom to add detail, more steps.",
    "rho": "Karras grid exponent (7 usual; the paper's ImageNet stage two uses 100). For flow models "
    "(SD3, Flux) use 1: a grid linear in t (with 7 nearly every level sits at small t).",
    "sigma_min": "Lowest grid level; 0 = the model's sigma_min.",
    "sigma_max": "Highest grid level (before truncation); 0 = the model's sigma_max.",
    "cfg": "Classifier-free guidance scale (ignored without negative conditioning). Flux: "
    "1 (its guidance comes from FluxGuidance on the positive conditioning).",
    "factor": "Integer up-scale factor; also the block size of the noise and of the DCT blur.",
    "relay_settings": "model: a relay-trained model (e.g. ultrares-emoji-relay256) brings the blur_sigma_max, "
    "prob_length, s_block and s_noise it was trained with, and these inputs are ignored; models without relay "
    "settings use the inputs. inputs: always use the values set here.",
}


def _float(name: str, default: float, lo: float, hi: float, step: float, tip: str | None = None, **kw):
    return io.Float.Input(name, default=default, min=lo, max=hi, step=step, tooltip=tip or TIPS[name], **kw)


def _block_size_input() -> io.Int.Input:
    lo, hi = R.BLOCK_SIZES
    return io.Int.Input("block_size", default=2, min=lo, max=hi, tooltip=TIPS["block_size"])


def _s_block_input() -> io.Float.Input:
    return _float("s_block", 0.15, 0.0, 2.0, 0.01)


def _relay_sampler_inputs() -> list:
    return [
        _float("blur_sigma_max", 0.0, 0.0, 10.0, 0.05),
        _float("prob_length", 0.93, 0.01, 1.0, 0.01),
        _s_block_input(),
        _float("s_noise", 0.2, 0.0, 1.0, 0.01),
        _float("s_churn", 0.0, 0.0, 100.0, 0.1),
        _float("s_tmin", 0.0, 0.0, 1000.0, 0.01, "Churn only at sigma >= s_tmin."),
        _float("s_tmax", 1000.0, 0.0, 1000.0, 0.01, "Churn only at sigma <= s_tmax."),
        _float("s_churn_noise", 1.0, 0.0, 2.0, 0.001),
    ]


def _relay_schedule_inputs() -> list:
    lo, hi = R.STEPS
    return [
        io.Int.Input("steps", default=30, min=lo, max=hi, tooltip=TIPS["steps"]),
        _float("truncation_sigma", 0.9, 0.001, 1000.0, 0.01),
        _float("rho", 7.0, 0.1, 200.0, 0.1),
    ]


SAMPLER_FIELDS = tuple(i.id for i in _relay_sampler_inputs())
"""The :class:`kernels.relay.RelaySettings` fields the relay nodes take as inputs (besides the block size)."""

SETTINGS_SOURCES = ("model", "inputs")


def _settings_source_input() -> io.Combo.Input:
    tip = TIPS["relay_settings"]
    return io.Combo.Input(
        "relay_settings", options=list(SETTINGS_SOURCES), default="model", optional=True, tooltip=tip
    )


def relay_settings(v, patch: int) -> R.RelaySettings:
    """The :class:`kernels.relay.RelaySettings` of a node's checked inputs ``v`` with block size ``patch``."""
    return R.RelaySettings(patch=int(patch), **{f: v[f] for f in SAMPLER_FIELDS})


class _RelaySamplerNode(CheckedNode):
    """A node taking the relay sampler settings (:func:`_relay_sampler_inputs`) and their rule."""

    @classmethod
    def rules(cls, v) -> bool | str:
        if v.s_tmin is not None and v.s_tmax is not None and v.s_tmin > v.s_tmax:
            return f"s_tmin ({v.s_tmin}) must not exceed s_tmax ({v.s_tmax}): churn would never apply."
        return True


def _model_range(model_sampling) -> tuple[float, float]:
    return float(model_sampling.sigma_min), float(model_sampling.sigma_max)


def _prefixed(who: str, fn, *args, **kw):
    """``fn(*args, **kw)`` with a kernel's ``ValueError`` prefixed by the node's name ``who``."""
    try:
        return fn(*args, **kw)
    except ValueError as e:
        raise ValueError(f"{who}: {e}") from None


# --------------------------------------------------------------------------------------------
# NOISE


class BlockNoise:
    """NOISE object: ``eps + s_block * block_noise(eps')`` for a latent dict.

    eps is exactly ComfyUI's RandomNoise(seed) draw (same batch_index handling); eps' is drawn
    from seed + 1 before it, so the global RNG ends in the same state as after RandomNoise(seed).
    """

    def __init__(self, seed: int, block_size: int, s_block: float):
        self.seed, self.block_size, self.s_block = int(seed), int(block_size), float(s_block)

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        samples = image_samples(input_latent, "UltraResBlockNoise", "latent_image")
        inds = input_latent.get("batch_index")
        second = comfy.sample.prepare_noise(samples, self.seed + 1, inds) if self.s_block > 0 else None
        eps = comfy.sample.prepare_noise(samples, self.seed, inds)
        return _prefixed("UltraResBlockNoise", R.relay_noise, eps, second, self.block_size, self.s_block)


class UltraResBlockNoise(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UltraResBlockNoise",
            **schema_extras(search_aliases=["relay", "relay diffusion", "block noise"]),
            display_name="Relay Block Noise (UltraRes)",
            category=CATEGORY,
            description="Noise for relay stage two: ComfyUI's seeded noise plus s_block times block noise (a circular "
            "block_size x block_size box-sum of i.i.d. noise / block_size, unit variance per pixel), which "
            "matches the low-frequency noise of the up-sampled image. With s_block = 0 it equals RandomNoise.",
            inputs=[
                seed_input(
                    "Seed of the noise (the i.i.d. part is the same as RandomNoise with this seed).",
                    name="noise_seed",
                ),
                _block_size_input(),
                _s_block_input(),
            ],
            outputs=[io.Noise.Output(tooltip="NOISE for SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        v = cls.checked(inputs)
        return io.NodeOutput(BlockNoise(v.noise_seed, v.block_size, v.s_block))


# --------------------------------------------------------------------------------------------
# SIGMAS


def relay_sigmas_for_model(
    model, steps, truncation_sigma, rho, sigma_min=0.0, sigma_max=0.0, who="UltraResRelaySigmas"
) -> torch.Tensor:
    """:func:`kernels.relay.relay_schedule` over the model's own noise range."""
    ms = model.get_model_object("model_sampling")
    return _prefixed(
        who, R.relay_schedule, steps, truncation_sigma, rho, _model_range(ms), sigma_min, sigma_max
    )


class UltraResRelaySigmas(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UltraResRelaySigmas",
            **schema_extras(search_aliases=["relay", "relay diffusion", "truncated schedule"]),
            display_name="Relay Sigmas (UltraRes)",
            category=CATEGORY,
            description="Relay stage-two schedule: the Karras grid of `steps` levels over the model's own sigma range, "
            "keeping only the levels below truncation_sigma, then 0.",
            inputs=[
                io.Model.Input("model", tooltip="The model whose model_sampling gives the sigma range."),
                *_relay_schedule_inputs(),
                _float("sigma_min", 0.0, 0.0, 1000.0, 0.001, optional=True),
                _float("sigma_max", 0.0, 0.0, 1000.0, 0.01, optional=True),
            ],
            outputs=[
                io.Sigmas.Output(tooltip="Truncated schedule (first entry < truncation_sigma, last 0).")
            ],
        )

    @classmethod
    def rules(cls, v) -> bool | str:
        trunc, lo, hi = v.truncation_sigma, v.sigma_min, v.sigma_max
        if lo and hi and lo >= hi:
            return f"sigma_min ({lo}) must be below sigma_max ({hi}) (or 0 for the model's own)."
        if lo and trunc is not None and trunc <= lo:
            return f"truncation_sigma ({trunc}) must be above sigma_min ({lo})."
        if hi and trunc is not None and trunc > hi:
            return f"truncation_sigma ({trunc}) must not exceed sigma_max ({hi})."
        return True

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        v = cls.checked(inputs)
        return io.NodeOutput(
            relay_sigmas_for_model(v.model, v.steps, v.truncation_sigma, v.rho, v.sigma_min, v.sigma_max)
        )


# --------------------------------------------------------------------------------------------
# SAMPLER


def relay_loop(run: LoopRun, x, sigmas, settings: R.RelaySettings, from_model: bool = False):
    """Relay stage two as a :func:`._sampling.loop_sampler` loop (:func:`kernels.relay.relay_sample`);
    ``from_model``: a relay-trained model's own blur/noise settings replace those of ``settings``.

    Step (and churn) noise comes from a CPU generator seeded with ``kernels.relay.step_seed(run.seed)``
    (ComfyUI's noise seed, as its own samplers' ``default_noise_sampler(x, seed=...)``), never from the
    global RNG. With B_max = s_block = s_noise = 0 it is ComfyUI's ``heun`` (the same churn options;
    churn noise then from that generator), on EDM-style and on flow-matching models.
    """
    who = "UltraResRelaySampler"
    if from_model:
        settings = with_trained_relay(settings, run.base_model, who)
    flow = False
    if run.model_sampling is not None:
        flow = check_sigma_space(run.model_sampling, who)
        _prefixed(who, R.check_schedule_in_range, sigmas, _model_range(run.model_sampling))
    check_image_tensor(x, who)
    return _prefixed(
        who, R.relay_sample, run.denoise, x, sigmas, settings, None, run.report, seed=run.seed, flow=flow
    )


def make_relay_sampler(settings: R.RelaySettings, from_model: bool = False) -> comfy.samplers.KSAMPLER:
    return loop_sampler(relay_loop, settings=settings, from_model=from_model)


class UltraResRelaySampler(_RelaySamplerNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UltraResRelaySampler",
            **schema_extras(search_aliases=["relay", "relay diffusion", "upscale", "super resolution"]),
            display_name="Relay Sampler (UltraRes)",
            category=CATEGORY,
            description="Relay Diffusion's stage-two sampler for SamplerCustom/SamplerCustomAdvanced: stochastic Heun in "
            "block-DCT space, with blur coefficients from the sigma<->u coupling, block noise and a final "
            "denoise step; for SD1.x/SD2.x/SDXL/EDM and flow-matching (SD3, Flux) models. Step noise is "
            "seeded from the noise seed. With blur_sigma_max = s_block = s_noise = 0 it is ComfyUI's heun "
            "sampler.",
            inputs=[_block_size_input(), *_relay_sampler_inputs(), _settings_source_input()],
            outputs=[io.Sampler.Output(tooltip="SAMPLER for SamplerCustom / SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        v = cls.checked(inputs)
        settings = relay_settings(v, v.block_size)
        return io.NodeOutput(make_relay_sampler(settings, from_model=v.relay_settings == "model"))


# --------------------------------------------------------------------------------------------
# Memory estimate


def estimate_relay_memory(model, out_shape) -> tuple[int, int]:
    """(model activation bytes, relay state bytes): a lower bound of the peak memory of relay stage two
    on a latent of ``out_shape`` (B, C, H, W) (:func:`kernels.relay.relay_memory_bytes`).

    Activations: ComfyUI's own estimate for one batch at that size, the smaller (memory-frugal attention)
    of its two formulas (``_common.frugal_activation_bytes``), so a refusal means no attention backend
    could fit it; 0 (unknown) when a wrapper (Tiled Diffusion...) decides what the model sees. The
    model's weights are not counted (ComfyUI can stream them in low-VRAM mode)."""
    shape = tuple(int(v) for v in out_shape)
    activations = frugal_activation_bytes(model, shape) if model_sees_full_latent(model) else 0
    return R.relay_memory_bytes(shape, activations)


def check_relay_memory(model, in_shape, factor: int, who: str = "UltraResRelayUpscale") -> None:
    """Refuse, before anything is allocated, a relay up-scale whose memory lower bound exceeds what the
    device has (see :func:`estimate_relay_memory`); the message gives the estimate."""
    b, c, h, w = (int(v) for v in in_shape)
    activations, state = estimate_relay_memory(model, (b, c, h * factor, w * factor))
    have, dev = available_memory(model)
    if activations + state > have:
        ratio = latent_downscale_ratio(model)
        raise ValueError(
            f"{who}: " + R.memory_refusal(in_shape, factor, activations, state, have, dev, ratio)
        )


# --------------------------------------------------------------------------------------------
# All in one


def relay_upscale(
    model, latent: dict, v, settings: R.RelaySettings, who: str = "UltraResRelayUpscale"
) -> dict:
    """Nearest-upsample ``latent`` by ``v.factor`` and run relay stage two on it; returns a latent dict.
    ``v``: the node's checked inputs; with ``v.relay_settings == "model"`` a relay-trained model's own
    blur/noise settings replace those of ``settings``."""
    samples = image_samples(latent, who)
    if v.relay_settings == "model":
        settings = with_trained_relay(settings, model.model, who)
    check_sigma_space(model.get_model_object("model_sampling"), who)
    check_channels(model, samples, "latent", who)
    sigmas = relay_sigmas_for_model(model, v.steps, v.truncation_sigma, v.rho, who=who)
    check_relay_memory(model, samples.shape, v.factor, who)
    up = latent.copy()
    up["samples"] = R.upsample_nearest(samples, v.factor)
    if "noise_mask" in latent:
        mask = latent["noise_mask"]
        up["noise_mask"] = R.upsample_nearest(mask, v.factor) if mask.ndim >= 2 else mask
    noise = BlockNoise(v.seed, settings.patch, settings.s_block).generate_noise(up)
    up["samples"] = guided_sample(
        model,
        up["samples"],
        make_relay_sampler(settings),
        sigmas,
        positive=v.positive,
        negative=v.negative,
        cfg=v.cfg if v.negative is not None else 1.0,
        noise=noise,
        denoise_mask=up.get("noise_mask"),
        seed=v.seed,
    )
    return up


class UltraResRelayUpscale(_RelaySamplerNode):
    @classmethod
    def define_schema(cls):
        lo, hi = R.UPSCALE_FACTORS
        return io.Schema(
            node_id="UltraResRelayUpscale",
            **schema_extras(
                search_aliases=[
                    "relay",
                    "relay diffusion",
                    "upscale",
                    "high resolution",
                    "4k",
                    "super resolution",
                    "hires fix",
                ]
            ),
            display_name="Relay Upscale (UltraRes)",
            category=CATEGORY,
            description="Relay Diffusion stage two in one node: nearest-upsample the low-res latent by `factor`, add "
            "noise (plus block noise) at the truncation sigma, and run the relay sampler over the rest of "
            "the schedule. With an ordinary model (blur_sigma_max 0) it is a training-free relay hires fix "
            "that needs under half the model evaluations of sampling from noise. Works with SD1.x/SD2.x/"
            "SDXL/EDM and flow-matching (SD3, Flux) models; refuses, before sampling, an output size whose "
            "estimated memory exceeds what the device has.",
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="The stage-two model (SD1.x/SD2.x/SDXL, EDM, or flow matching: SD3, Flux).",
                ),
                io.Conditioning.Input("positive", tooltip="Positive conditioning."),
                io.Latent.Input(
                    "latent", tooltip="The finished low-resolution latent (stage one), (B, C, H, W)."
                ),
                io.Int.Input("factor", default=2, min=lo, max=hi, tooltip=TIPS["factor"]),
                seed_input("Seed of the stage-two noise."),
                *_relay_schedule_inputs(),
                _float("cfg", 7.0, 0.0, 100.0, 0.1, round=0.01),
                *_relay_sampler_inputs(),
                io.Conditioning.Input(
                    "negative",
                    optional=True,
                    tooltip="Negative conditioning; leave empty for no CFG (unconditional/EDM models).",
                ),
                _settings_source_input(),
            ],
            outputs=[io.Latent.Output(tooltip="The up-scaled latent, factor times larger, fully denoised.")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        v = cls.checked(inputs)
        return io.NodeOutput(relay_upscale(v.model, v.latent, v, relay_settings(v, v.factor)))


NODES = [UltraResBlockNoise, UltraResRelaySigmas, UltraResRelaySampler, UltraResRelayUpscale]
