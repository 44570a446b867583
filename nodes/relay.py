"""Relay Diffusion as ComfyUI custom-sampling nodes (thin adapters over ``kernels/relay.py``).

- ``UltraResBlockNoise`` (NOISE): i.i.d. noise plus the relay block component.
- ``UltraResRelaySigmas`` (SIGMAS): the model's Karras grid truncated at the truncation sigma.
- ``UltraResRelaySampler`` (SAMPLER): the relay sampler for SamplerCustom / SamplerCustomAdvanced.
- ``UltraResRelayUpscale``: all of it in one node (nearest up-sampling, block noise, relay sampling with CFG).

The sampler runs in ComfyUI's sigma space on the denoised outputs of its model wrapper: on models that
noise as ``x0 + sigma * noise`` (SD1.x/2.x/SDXL, EDM models such as HDiT) and on flow matching (SD3,
Flux: ``(1 - t) x0 + t * noise``); others are refused. Step noise comes from a CPU generator seeded
from ComfyUI's noise seed (``kernels.relay.step_seed``), never the global RNG. Inputs are declared
once, in the schemas (those several nodes share, with their tooltips, in ``_relay.py``);
:class:`._inputs.CheckedNode` checks them at queue and run time, the cross-input rules are the kernel's.
"""

from __future__ import annotations

import comfy.sample
import comfy.samplers
import torch
from comfy_api.latest import io

from ..kernels import relay as R
from ._common import available_memory, frugal_activation_bytes, latent_downscale_ratio, seed_input
from ._inputs import CheckedNode
from ._relay import (
    TIPS,
    RelaySamplerNode,
    block_size_input,
    float_input,
    model_range,
    prefixed,
    relay_settings,
    s_block_input,
    sampler_inputs,
    schedule_inputs,
    schema,
    settings_source_input,
)
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
        return prefixed("UltraResBlockNoise", R.relay_noise, eps, second, self.block_size, self.s_block)


class UltraResBlockNoise(CheckedNode):
    @classmethod
    def define_schema(cls):
        return schema(
            "UltraResBlockNoise",
            "Relay Block Noise (UltraRes)",
            ["block noise"],
            "Noise for relay stage two: ComfyUI's seeded noise plus s_block times block noise (a circular "
            "block_size x block_size box-sum of i.i.d. noise / block_size, unit variance per pixel), which "
            "matches the low-frequency noise of the up-sampled image. With s_block = 0 it equals RandomNoise.",
            inputs=[
                seed_input(
                    "Seed of the noise (the i.i.d. part is the same as RandomNoise with this seed).",
                    name="noise_seed",
                ),
                block_size_input(),
                s_block_input(),
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
    return prefixed(
        who, R.relay_schedule, steps, truncation_sigma, rho, model_range(ms), sigma_min, sigma_max
    )


class UltraResRelaySigmas(CheckedNode):
    @classmethod
    def define_schema(cls):
        return schema(
            "UltraResRelaySigmas",
            "Relay Sigmas (UltraRes)",
            ["truncated schedule"],
            "Relay stage-two schedule: the Karras grid of `steps` levels over the model's own sigma range, "
            "keeping only the levels below truncation_sigma, then 0.",
            inputs=[
                io.Model.Input("model", tooltip="The model whose model_sampling gives the sigma range."),
                *schedule_inputs(),
                float_input("sigma_min", 0.0, 0.0, 1000.0, 0.001, optional=True),
                float_input("sigma_max", 0.0, 0.0, 1000.0, 0.01, optional=True),
            ],
            outputs=[
                io.Sigmas.Output(tooltip="Truncated schedule (first entry < truncation_sigma, last 0).")
            ],
        )

    @classmethod
    def rules(cls, v) -> bool | str:
        return R.truncation_problem(v.truncation_sigma, v.sigma_min, v.sigma_max) or True

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
        prefixed(who, R.check_schedule_in_range, sigmas, model_range(run.model_sampling))
    check_image_tensor(x, who)
    return prefixed(
        who, R.relay_sample, run.denoise, x, sigmas, settings, None, run.report, seed=run.seed, flow=flow
    )


def make_relay_sampler(settings: R.RelaySettings, from_model: bool = False) -> comfy.samplers.KSAMPLER:
    return loop_sampler(relay_loop, settings=settings, from_model=from_model)


class UltraResRelaySampler(RelaySamplerNode):
    @classmethod
    def define_schema(cls):
        return schema(
            "UltraResRelaySampler",
            "Relay Sampler (UltraRes)",
            ["upscale", "super resolution"],
            "Relay Diffusion's stage-two sampler for SamplerCustom/SamplerCustomAdvanced: stochastic Heun in "
            "block-DCT space, with blur coefficients from the sigma<->u coupling, block noise and a final "
            "denoise step; for SD1.x/SD2.x/SDXL/EDM and flow-matching (SD3, Flux) models. Step noise is "
            "seeded from the noise seed. With blur_sigma_max = s_block = s_noise = 0 it is ComfyUI's heun "
            "sampler.",
            inputs=[block_size_input(), *sampler_inputs(), settings_source_input()],
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


class UltraResRelayUpscale(RelaySamplerNode):
    @classmethod
    def define_schema(cls):
        lo, hi = R.UPSCALE_FACTORS
        return schema(
            "UltraResRelayUpscale",
            "Relay Upscale (UltraRes)",
            ["upscale", "high resolution", "4k", "super resolution", "hires fix"],
            "Relay Diffusion stage two in one node: nearest-upsample the low-res latent by `factor`, add "
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
                *schedule_inputs(),
                float_input("cfg", 7.0, 0.0, 100.0, 0.1, round=0.01),
                *sampler_inputs(),
                io.Conditioning.Input(
                    "negative",
                    optional=True,
                    tooltip="Negative conditioning; leave empty for no CFG (unconditional/EDM models).",
                ),
                settings_source_input(),
            ],
            outputs=[io.Latent.Output(tooltip="The up-scaled latent, factor times larger, fully denoised.")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        v = cls.checked(inputs)
        return io.NodeOutput(relay_upscale(v.model, v.latent, v, relay_settings(v, v.factor)))


NODES = [UltraResBlockNoise, UltraResRelaySigmas, UltraResRelaySampler, UltraResRelayUpscale]
