"""Relay Diffusion as ComfyUI custom-sampling nodes (thin adapters over ``kernels/relay.py``).

- ``UltraResBlockNoise`` (NOISE): i.i.d. noise plus the relay block component.
- ``UltraResRelaySigmas`` (SIGMAS): the Karras grid of the model's own range, truncated at the
  truncation sigma (stage two of the relay: only the low-noise part of the schedule).
- ``UltraResRelaySampler`` (SAMPLER): the relay sampler (stochastic Heun in block-DCT space) for
  SamplerCustom / SamplerCustomAdvanced.
- ``UltraResRelayUpscale``: all of it in one node (nearest up-sampling, block noise at the
  truncation sigma, relay sampling with CFG).

The sampler works in ComfyUI's sigma space on the denoised outputs of ComfyUI's model wrapper,
so it runs on models whose noising is ``x = x0 + sigma * noise`` (SD1.x/2.x/SDXL eps and
v-prediction, EDM models such as the HDiT pixel models) and on flow-matching models (ComfyUI's
CONST sampling: SD3, Flux, ...; ``x = (1 - t) x0 + t * noise`` with sigma == t in [0, 1]). Other
noisings are refused with a message.

Step noise comes from a CPU ``torch.Generator`` seeded from ComfyUI's noise seed (the ``seed``
ComfyUI hands every sampler; ``kernels.relay.step_seed`` of it), never from the global RNG, so a
prompt gives the same latent on every run and every device. Everything on the device is float32.
"""

from __future__ import annotations

import dataclasses

import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import torch
from comfy_api.latest import io

from ..kernels import relay as R
from ._common import (
    available_memory,
    check_inputs,
    frugal_activation_bytes,
    latent_downscale_ratio,
    seed_input,
)
from ._compat import schema_extras
from ._sampling import LoopRun, check_channels, check_image_tensor, guided_sample, image_samples, loop_sampler

CATEGORY = "UltraRes/relay"


# --------------------------------------------------------------------------------------------
# Shared input definitions (one place for ranges and tooltips)


def _block_size_input(default: int = 2) -> io.Int.Input:
    return io.Int.Input(
        "block_size",
        default=default,
        min=1,
        max=16,
        tooltip="Block size p of the block noise and of the per-block DCT blur: the up-scale factor between "
        "the two stages, in latent pixels (2 for 512->1024). Must divide the latent's height and width.",
    )


def _s_block_input() -> io.Float.Input:
    return io.Float.Input(
        "s_block",
        default=0.15,
        min=0.0,
        max=2.0,
        step=0.01,
        tooltip="Weight of the block-noise component added to the i.i.d. noise (0.15 in the paper; 0 = plain noise).",
    )


def _relay_sampler_inputs() -> list:
    return [
        io.Float.Input(
            "blur_sigma_max",
            default=0.0,
            min=0.0,
            max=10.0,
            step=0.05,
            tooltip="B_max: blur strength of the forward process at u = 1. Use the value the model was trained "
            "with (3.0 ImageNet, 2.0 CelebA); 0 for ordinary models (training-free relay hires fix).",
        ),
        io.Float.Input(
            "prob_length",
            default=0.93,
            min=0.01,
            max=1.0,
            step=0.01,
            tooltip="L: the share of the EDM log-normal noise distribution mapped onto u in [0, 1] "
            "(0.93 ImageNet, 0.89 CelebA). Only matters when blur_sigma_max > 0.",
        ),
        _s_block_input(),
        io.Float.Input(
            "s_noise",
            default=0.2,
            min=0.0,
            max=1.0,
            step=0.01,
            tooltip="Stochasticity of each relay step: the share of the next noise level that is fresh noise "
            "(0.2 in the paper; 0 = deterministic Heun).",
        ),
        io.Float.Input(
            "s_churn",
            default=0.0,
            min=0.0,
            max=100.0,
            step=0.1,
            tooltip="EDM churn (Karras et al. Algorithm 2) before each step, as in the heun sampler; 0 = off.",
        ),
        io.Float.Input(
            "s_tmin", default=0.0, min=0.0, max=1000.0, step=0.01, tooltip="Churn only at sigma >= s_tmin."
        ),
        io.Float.Input(
            "s_tmax", default=1000.0, min=0.0, max=1000.0, step=0.01, tooltip="Churn only at sigma <= s_tmax."
        ),
        io.Float.Input(
            "s_churn_noise",
            default=1.0,
            min=0.0,
            max=2.0,
            step=0.001,
            tooltip="Scale of the churn noise (S_noise in EDM, 1.003 in the paper's stage one).",
        ),
    ]


def _relay_schedule_inputs() -> list:
    return [
        io.Int.Input(
            "steps",
            default=30,
            min=2,
            max=10000,
            tooltip="Nominal steps of the full Karras grid; only the levels below truncation_sigma are run "
            "(the effective step count is shown nowhere else: about 40-50% of this for SD models).",
        ),
        io.Float.Input(
            "truncation_sigma",
            default=0.9,
            min=0.001,
            max=1000.0,
            step=0.01,
            tooltip="Stage two starts at the first grid level below this sigma (0.9 in the paper for EDM pixel "
            "models; 0.9-2.0 suits SD latents). For flow models (SD3, Flux) it is the time t in (0, 1), "
            "e.g. 0.6. Higher = more freedom to add detail, more steps.",
        ),
        io.Float.Input(
            "rho",
            default=7.0,
            min=0.1,
            max=200.0,
            step=0.1,
            tooltip="Karras grid exponent (7 usual; the paper's ImageNet stage two uses 100). For flow models "
            "(SD3, Flux) use 1: a grid linear in t (with 7 nearly every level sits at small t).",
        ),
    ]


SETTINGS_SOURCES = ("model", "inputs")


def _settings_source_input() -> io.Combo.Input:
    return io.Combo.Input(
        "relay_settings",
        options=list(SETTINGS_SOURCES),
        default="model",
        optional=True,
        tooltip="model: a relay-trained model (e.g. ultrares-emoji-relay256) brings the blur_sigma_max, prob_length, "
        "s_block and s_noise it was trained with, and these inputs are ignored; models without relay "
        "settings use the inputs. inputs: always use the values set here.",
    )


def trained_relay(base_model, who: str) -> dict | None:
    """The relay settings a model was trained with (its config's ``"relay"`` section, see
    ``kernels.relay.relay_config``), or None for a model without them."""
    raw = getattr(getattr(base_model, "hdit_config", None), "raw", None)
    if not isinstance(raw, dict):
        return None
    try:
        return R.relay_config(raw)
    except ValueError as e:
        raise ValueError(
            f"{who}: the model's stored relay settings are unreadable ({e}); set relay_settings to "
            "'inputs' to use the values set on the node."
        ) from None


def apply_trained(settings: R.RelaySettings, trained: dict | None, who: str) -> R.RelaySettings:
    """``settings`` with the trained blur/noise settings of a relay-trained model (unchanged when None).
    A model trained with blurring (B_max > 0) only works at its trained block size."""
    if trained is None:
        return settings
    t = trained["settings"]
    if t.blur_sigma_max > 0 and settings.patch != t.patch:
        raise ValueError(
            f"{who}: this model was trained for relay stage two with block size {t.patch} (a x{t.patch} up-scale), "
            f"but the factor / block size here is {settings.patch}. Set it to {t.patch}, or set relay_settings to "
            "'inputs' to run with the values set on the node."
        )
    return dataclasses.replace(
        settings,
        blur_sigma_max=t.blur_sigma_max,
        prob_length=t.prob_length,
        s_block=t.s_block,
        s_noise=t.s_noise,
    )


def _settings(
    block_size, blur_sigma_max, prob_length, s_block, s_noise, s_churn, s_tmin, s_tmax, s_churn_noise
) -> R.RelaySettings:
    return R.RelaySettings(
        patch=int(block_size),
        blur_sigma_max=float(blur_sigma_max),
        prob_length=float(prob_length),
        s_block=float(s_block),
        s_noise=float(s_noise),
        s_churn=float(s_churn),
        s_tmin=float(s_tmin),
        s_tmax=float(s_tmax),
        s_churn_noise=float(s_churn_noise),
    )


def _raise_if_bad(verdict) -> None:
    """Run-time use of a ``validate_inputs`` verdict (linked inputs are only known at run time)."""
    if isinstance(verdict, str):
        raise ValueError(verdict)


def _sampler_rules(v) -> bool | str:
    """Cross-input rules of the relay sampler settings on checked values (None = not known yet)."""
    if v.get("s_tmin") is not None and v.get("s_tmax") is not None and v.s_tmin > v.s_tmax:
        return f"s_tmin ({v.s_tmin}) must not exceed s_tmax ({v.s_tmax}): churn would never apply."
    return True


def _sigma_rules(v) -> bool | str:
    """Cross-input rules of the schedule inputs on checked values (None / 0 = not known / the model's own)."""
    trunc, lo, hi = v.get("truncation_sigma"), v.get("sigma_min"), v.get("sigma_max")
    if lo and hi and lo >= hi:
        return f"sigma_min ({lo}) must be below sigma_max ({hi}) (or 0 for the model's own)."
    if lo and trunc is not None and trunc <= lo:
        return f"truncation_sigma ({trunc}) must be above sigma_min ({lo})."
    if hi and trunc is not None and trunc > hi:
        return f"truncation_sigma ({trunc}) must not exceed sigma_max ({hi})."
    return True


# --------------------------------------------------------------------------------------------
# Model / latent checks


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


def check_sigmas_in_range(sigmas: torch.Tensor, model_sampling, who: str) -> None:
    lo, hi = float(model_sampling.sigma_min), float(model_sampling.sigma_max)
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(
            f"{who}: sigmas must be a 1-D schedule with at least 2 entries, got shape {tuple(sigmas.shape)}."
        )
    top = float(sigmas[0])
    if top > hi * 1.001:
        raise ValueError(
            f"{who}: the schedule starts at sigma {top:g}, above this model's sigma_max {hi:g}. "
            "Use UltraResRelaySigmas (it reads the model's range) or lower the first sigma."
        )
    positive = sigmas[sigmas > 0]
    if positive.numel() and float(positive.min()) < lo * 0.999:
        raise ValueError(
            f"{who}: the schedule goes down to sigma {float(positive.min()):g}, below this model's "
            f"sigma_min {lo:g}. End the schedule at sigma_min (then 0)."
        )


# --------------------------------------------------------------------------------------------
# NOISE


class BlockNoise:
    """NOISE object: ``eps + s_block * block_noise(eps')`` for a latent dict.

    eps is exactly ComfyUI's RandomNoise(seed) draw (same batch_index handling); eps' is drawn
    from seed + 1 before it, so the global RNG ends in the same state as after RandomNoise(seed).
    """

    def __init__(self, seed: int, block_size: int, s_block: float):
        self.seed = int(seed)
        self.block_size = int(block_size)
        self.s_block = float(s_block)

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        samples = image_samples(input_latent, "UltraResBlockNoise", "latent_image")
        R.check_block_divisible(samples.shape, self.block_size, "UltraResBlockNoise: the latent")
        batch_inds = input_latent.get("batch_index")
        if self.s_block > 0:
            second = comfy.sample.prepare_noise(samples, self.seed + 1, batch_inds)
            eps = comfy.sample.prepare_noise(samples, self.seed, batch_inds)
            return eps + self.s_block * R.block_noise(second, self.block_size)
        return comfy.sample.prepare_noise(samples, self.seed, batch_inds)


class UltraResBlockNoise(io.ComfyNode):
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
    def validate_inputs(cls, noise_seed=None, block_size=None, s_block=None) -> bool | str:
        v = check_inputs(cls, noise_seed=noise_seed, block_size=block_size, s_block=s_block)
        return v if isinstance(v, str) else True

    @classmethod
    def execute(cls, noise_seed, block_size, s_block) -> io.NodeOutput:
        _raise_if_bad(cls.validate_inputs(noise_seed=noise_seed, block_size=block_size, s_block=s_block))
        return io.NodeOutput(BlockNoise(noise_seed, block_size, s_block))


# --------------------------------------------------------------------------------------------
# SIGMAS


def relay_sigmas_for_model(
    model,
    steps: int,
    truncation_sigma: float,
    rho: float,
    sigma_min: float = 0.0,
    sigma_max: float = 0.0,
    who: str = "UltraResRelaySigmas",
) -> torch.Tensor:
    ms = model.get_model_object("model_sampling")
    lo, hi = float(ms.sigma_min), float(ms.sigma_max)
    s_min = sigma_min if sigma_min > 0 else lo
    s_max = sigma_max if sigma_max > 0 else hi
    if s_min < lo * 0.999 or s_max > hi * 1.001:
        raise ValueError(
            f"{who}: sigma range [{s_min:g}, {s_max:g}] is outside this model's range [{lo:g}, {hi:g}]. "
            "Set sigma_min/sigma_max to 0 to use the model's own range."
        )
    if not s_min < truncation_sigma:
        raise ValueError(
            f"{who}: truncation_sigma {truncation_sigma:g} must be above the lowest sigma {s_min:g} "
            "(this model's sigma_min unless overridden)."
        )
    if truncation_sigma > s_max:
        raise ValueError(
            f"{who}: truncation_sigma {truncation_sigma:g} is above the model's sigma_max {s_max:g}: "
            "nothing would be truncated (that is generation from noise). Lower it below sigma_max."
        )
    try:
        sig = R.relay_sigmas(int(steps), s_min, s_max, float(rho), float(truncation_sigma))
    except ValueError as exc:
        raise ValueError(f"{who}: {exc}") from None
    return sig.to(torch.float32)


class UltraResRelaySigmas(io.ComfyNode):
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
                io.Float.Input(
                    "sigma_min",
                    default=0.0,
                    min=0.0,
                    max=1000.0,
                    step=0.001,
                    optional=True,
                    tooltip="Lowest grid level; 0 = the model's sigma_min.",
                ),
                io.Float.Input(
                    "sigma_max",
                    default=0.0,
                    min=0.0,
                    max=1000.0,
                    step=0.01,
                    optional=True,
                    tooltip="Highest grid level (before truncation); 0 = the model's sigma_max.",
                ),
            ],
            outputs=[
                io.Sigmas.Output(tooltip="Truncated schedule (first entry < truncation_sigma, last 0).")
            ],
        )

    @classmethod
    def validate_inputs(
        cls, steps=None, truncation_sigma=None, rho=None, sigma_min=None, sigma_max=None
    ) -> bool | str:
        v = check_inputs(
            cls,
            steps=steps,
            truncation_sigma=truncation_sigma,
            rho=rho,
            sigma_min=sigma_min,
            sigma_max=sigma_max,
        )
        return v if isinstance(v, str) else _sigma_rules(v)

    @classmethod
    def execute(cls, model, steps, truncation_sigma, rho, sigma_min=0.0, sigma_max=0.0) -> io.NodeOutput:
        _raise_if_bad(
            cls.validate_inputs(
                steps=steps,
                truncation_sigma=truncation_sigma,
                rho=rho,
                sigma_min=sigma_min,
                sigma_max=sigma_max,
            )
        )
        return io.NodeOutput(
            relay_sigmas_for_model(model, steps, truncation_sigma, rho, sigma_min or 0.0, sigma_max or 0.0)
        )


# --------------------------------------------------------------------------------------------
# SAMPLER


def relay_loop(run: LoopRun, x, sigmas, from_model: bool = False, **options):
    """Relay stage two as a :func:`._sampling.loop_sampler` loop; the options are
    :class:`kernels.relay.RelaySettings` fields; ``from_model``: a relay-trained model's own
    blur/noise settings replace them (:func:`apply_trained`).

    Step (and churn) noise comes from a CPU generator seeded with ``kernels.relay.step_seed(run.seed)``
    (ComfyUI's noise seed, as its own samplers' ``default_noise_sampler(x, seed=...)``), never from the
    global RNG. With B_max = s_block = s_noise = 0 it is ComfyUI's ``heun`` (the same churn options;
    churn noise then from that generator), on EDM-style and on flow-matching models.
    """
    who = "UltraResRelaySampler"
    settings = R.RelaySettings(**options)
    if from_model:
        settings = apply_trained(settings, trained_relay(run.base_model, who), who)
    flow = False
    if run.model_sampling is not None:
        flow = check_sigma_space(run.model_sampling, who)
        check_sigmas_in_range(sigmas, run.model_sampling, who)
    check_image_tensor(x, who)
    R.check_block_divisible(x.shape, settings.patch, f"{who}: the latent")
    return R.relay_sample(run.denoise, x, sigmas, settings, callback=run.report, seed=run.seed, flow=flow)


def make_relay_sampler(settings: R.RelaySettings, from_model: bool = False) -> comfy.samplers.KSAMPLER:
    opts = {
        f: getattr(settings, f)
        for f in (
            "patch",
            "blur_sigma_max",
            "prob_length",
            "s_block",
            "s_noise",
            "s_churn",
            "s_tmin",
            "s_tmax",
            "s_churn_noise",
        )
    }
    return loop_sampler(relay_loop, from_model=from_model, **opts)


class UltraResRelaySampler(io.ComfyNode):
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
    def validate_inputs(
        cls,
        block_size=None,
        blur_sigma_max=None,
        prob_length=None,
        s_block=None,
        s_noise=None,
        s_churn=None,
        s_tmin=None,
        s_tmax=None,
        s_churn_noise=None,
        relay_settings="model",
    ) -> bool | str:
        v = check_inputs(
            cls,
            block_size=block_size,
            blur_sigma_max=blur_sigma_max,
            prob_length=prob_length,
            s_block=s_block,
            s_noise=s_noise,
            s_churn=s_churn,
            s_tmin=s_tmin,
            s_tmax=s_tmax,
            s_churn_noise=s_churn_noise,
            relay_settings=relay_settings,
        )
        return v if isinstance(v, str) else _sampler_rules(v)

    @classmethod
    def execute(
        cls,
        block_size,
        blur_sigma_max,
        prob_length,
        s_block,
        s_noise,
        s_churn,
        s_tmin,
        s_tmax,
        s_churn_noise,
        relay_settings="model",
    ) -> io.NodeOutput:
        _raise_if_bad(
            cls.validate_inputs(
                block_size=block_size,
                blur_sigma_max=blur_sigma_max,
                prob_length=prob_length,
                s_block=s_block,
                s_noise=s_noise,
                s_churn=s_churn,
                s_tmin=s_tmin,
                s_tmax=s_tmax,
                s_churn_noise=s_churn_noise,
                relay_settings=relay_settings,
            )
        )
        settings = _settings(
            block_size, blur_sigma_max, prob_length, s_block, s_noise, s_churn, s_tmin, s_tmax, s_churn_noise
        )
        return io.NodeOutput(make_relay_sampler(settings, from_model=relay_settings == "model"))


# --------------------------------------------------------------------------------------------
# Memory estimate


# Latent-sized float32 tensors alive at the peak of a relay step: the sampler's state, DCT
# coefficients, both slopes, the proposal, two denoised outputs and the noise (kernels/relay.py,
# about 10), plus ComfyUI's own copies around the sampler (the up-sampled latent, the noise, the
# noised input, the output and the denoise mask: about 6).
RELAY_STATE_TENSORS = 16

_SIZE_CHANGING_WRAPPERS = (
    comfy.patcher_extension.WrappersMP.OUTER_SAMPLE,
    comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE,
    comfy.patcher_extension.WrappersMP.PREDICT_NOISE,
    comfy.patcher_extension.WrappersMP.CALC_COND_BATCH,
    comfy.patcher_extension.WrappersMP.APPLY_MODEL,
    comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
)


def _model_sees_full_latent(model) -> bool:
    """False when a wrapper decides what the model evaluates (e.g. Tiled Diffusion runs it on tiles)."""
    if model.model_options.get("model_function_wrapper") is not None:
        return False
    wrappers = dict(getattr(model, "wrappers", {}) or {})
    nested = model.model_options.get("transformer_options", {}).get("wrappers", {})
    return not any(
        any(wrappers.get(k, {}).values()) or any(nested.get(k, {}).values()) for k in _SIZE_CHANGING_WRAPPERS
    )


def estimate_relay_memory(model, out_shape) -> tuple[int, int]:
    """(model activation bytes, relay state bytes): a lower bound of the peak memory of relay stage two
    on a latent of ``out_shape`` (B, C, H, W).

    - activations: ComfyUI's own estimate for one batch at that size (``BaseModel.memory_required``, the
      figure its samplers reserve as the minimum; CFG's second batch may be run separately, so it is not
      counted), taking the smaller of its two formulas: the one for memory-frugal attention
      (xformers / flash: ``0.01 MB x dtype bytes x memory_usage_factor`` per latent pixel) even when
      the running backend would use the larger one (``0.15 MB x memory_usage_factor``), so a refusal
      means no attention backend could fit it. 0 when a wrapper (Tiled Diffusion...) decides what the
      model sees: then unknown.
    - state: :data:`RELAY_STATE_TENSORS` float32 tensors of ``out_shape``.
    The model's weights are not counted (ComfyUI can stream them in low-VRAM mode)."""
    b, c, h, w = (int(v) for v in out_shape)
    state = RELAY_STATE_TENSORS * b * c * h * w * 4
    if not _model_sees_full_latent(model):
        return 0, state
    return frugal_activation_bytes(model, (b, c, h, w)), state


def check_relay_memory(model, in_shape, factor: int, who: str = "UltraResRelayUpscale") -> None:
    """Refuse, before anything is allocated, a relay up-scale whose memory lower bound exceeds what the
    device has (see :func:`estimate_relay_memory`); the message gives the estimate."""
    b, c, h, w = (int(v) for v in in_shape)
    out = (b, c, h * factor, w * factor)
    activations, state = estimate_relay_memory(model, out)
    need = activations + state
    have, dev = available_memory(model)
    if need <= have:
        return
    gib = 1024**3
    ratio = latent_downscale_ratio(model)
    parts = (
        f"model activations {activations / gib:.1f} GiB by ComfyUI's own estimate + " if activations else ""
    )
    raise ValueError(
        f"{who}: up-scaling a {w}x{h} latent (batch {b}) by {factor} to {out[3]}x{out[2]} ({out[3] * ratio}x"
        f"{out[2] * ratio} px) needs at least {need / gib:.1f} GiB ({parts}relay sampler state {state / gib:.1f} GiB), "
        f"but {dev} has about {have / gib:.1f} GiB available. Use a smaller factor or batch, relay in two smaller "
        "steps, or patch the model with Tiled Diffusion (UltraResTiledDiffusion) so it samples in tiles."
    )


# --------------------------------------------------------------------------------------------
# All in one


def relay_upscale(
    model,
    latent: dict,
    factor: int,
    positive,
    negative,
    cfg: float,
    seed: int,
    steps: int,
    truncation_sigma: float,
    rho: float,
    settings: R.RelaySettings,
    who: str = "UltraResRelayUpscale",
    from_model: bool = False,
) -> dict:
    """Nearest-upsample ``latent`` by ``factor`` and run relay stage two on it; returns a latent dict.
    ``from_model``: a relay-trained model's own blur/noise settings replace those of ``settings``."""
    samples = image_samples(latent, who)
    if from_model:
        settings = apply_trained(settings, trained_relay(model.model, who), who)
    check_sigma_space(model.get_model_object("model_sampling"), who)
    check_channels(model, samples, "latent", who)
    sigmas = relay_sigmas_for_model(model, steps, truncation_sigma, rho, who=who)
    check_relay_memory(model, samples.shape, int(factor), who)
    up = latent.copy()
    up["samples"] = R.upsample_nearest(samples, factor)
    if "noise_mask" in latent:
        mask = latent["noise_mask"]
        up["noise_mask"] = R.upsample_nearest(mask, factor) if mask.ndim >= 2 else mask
    noise = BlockNoise(seed, settings.patch, settings.s_block).generate_noise(up)
    up["samples"] = guided_sample(
        model,
        up["samples"],
        make_relay_sampler(settings),
        sigmas,
        positive=positive,
        negative=negative,
        cfg=cfg if negative is not None else 1.0,
        noise=noise,
        denoise_mask=up.get("noise_mask"),
        seed=seed,
    )
    return up


class UltraResRelayUpscale(io.ComfyNode):
    @classmethod
    def define_schema(cls):
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
                io.Int.Input(
                    "factor",
                    default=2,
                    min=2,
                    max=8,
                    tooltip="Integer up-scale factor; also the block size of the noise and of the DCT blur.",
                ),
                seed_input("Seed of the stage-two noise."),
                *_relay_schedule_inputs(),
                io.Float.Input(
                    "cfg",
                    default=7.0,
                    min=0.0,
                    max=100.0,
                    step=0.1,
                    round=0.01,
                    tooltip="Classifier-free guidance scale (ignored without negative conditioning). Flux: "
                    "1 (its guidance comes from FluxGuidance on the positive conditioning).",
                ),
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
    def validate_inputs(
        cls,
        factor=None,
        seed=None,
        steps=None,
        truncation_sigma=None,
        rho=None,
        cfg=None,
        blur_sigma_max=None,
        prob_length=None,
        s_block=None,
        s_noise=None,
        s_churn=None,
        s_tmin=None,
        s_tmax=None,
        s_churn_noise=None,
        relay_settings="model",
    ) -> bool | str:
        v = check_inputs(
            cls,
            factor=factor,
            seed=seed,
            steps=steps,
            truncation_sigma=truncation_sigma,
            rho=rho,
            cfg=cfg,
            blur_sigma_max=blur_sigma_max,
            prob_length=prob_length,
            s_block=s_block,
            s_noise=s_noise,
            s_churn=s_churn,
            s_tmin=s_tmin,
            s_tmax=s_tmax,
            s_churn_noise=s_churn_noise,
            relay_settings=relay_settings,
        )
        return v if isinstance(v, str) else _sampler_rules(v)

    @classmethod
    def execute(
        cls,
        model,
        positive,
        latent,
        factor,
        seed,
        steps,
        truncation_sigma,
        rho,
        cfg,
        blur_sigma_max,
        prob_length,
        s_block,
        s_noise,
        s_churn,
        s_tmin,
        s_tmax,
        s_churn_noise,
        negative=None,
        relay_settings="model",
    ) -> io.NodeOutput:
        _raise_if_bad(
            cls.validate_inputs(
                factor=factor,
                seed=seed,
                steps=steps,
                truncation_sigma=truncation_sigma,
                rho=rho,
                cfg=cfg,
                blur_sigma_max=blur_sigma_max,
                prob_length=prob_length,
                s_block=s_block,
                s_noise=s_noise,
                s_churn=s_churn,
                s_tmin=s_tmin,
                s_tmax=s_tmax,
                s_churn_noise=s_churn_noise,
                relay_settings=relay_settings,
            )
        )
        settings = _settings(
            factor, blur_sigma_max, prob_length, s_block, s_noise, s_churn, s_tmin, s_tmax, s_churn_noise
        )
        return io.NodeOutput(
            relay_upscale(
                model,
                latent,
                factor,
                positive,
                negative,
                cfg,
                seed,
                steps,
                truncation_sigma,
                rho,
                settings,
                from_model=relay_settings == "model",
            )
        )


NODES = [UltraResBlockNoise, UltraResRelaySigmas, UltraResRelaySampler, UltraResRelayUpscale]
