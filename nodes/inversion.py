"""DDIM inversion nodes (UnseenDiffusion, arXiv 2310.09213): invert and generate (slerp and the domain
statistics of inverted latents: ``inversion_domain.py``).

The model is driven through ComfyUI's own machinery: a ``CFGGuider`` (conditioning, cfg, model
loading, patches and wrappers) runs a custom ``KSAMPLER`` whose function is the comfy-free loop in
:mod:`..kernels.inversion`. The denoiser it sees is ComfyUI's x0 prediction, so every model family
ComfyUI can sample (eps, v, EDM, rectified flow) inverts the same way.

Noise latents follow ComfyUI's convention for a partly-noised latent (what ``KSamplerAdvanced``
returns with ``return_with_leftover_noise``): the model-space point at the top sigma, brought back
to latent space with ``process_latent_out``. They carry an ``ultrares_inversion`` entry (top sigma,
steps, level, scheduler, model family) that the generate node checks.
"""

from __future__ import annotations

import comfy.model_management
import comfy.model_sampling
import comfy.samplers
import torch
from comfy_api.latest import io

from ..kernels import inversion as kinv
from ..kernels import inversion_format as kfmt
from ._compat import schema_extras
from ._inputs import CheckedNode, with_defaults
from ._sampling import check_channels, guided_sample, loop_sampler, model_family

CATEGORY = "UltraRes/inversion"
META_KEY = kfmt.RECORD_KEY

# ------------------------------------------------------------------------------------ shared inputs


def _steps_input() -> io.Int.Input:
    return io.Int.Input(
        "steps",
        default=50,
        min=1,
        max=1000,
        tooltip="Number of DDIM steps between the clean latent and the noise level. More steps give a more "
        "exact inversion (reconstruction error falls as steps grow) and cost one model call each.",
    )


def _level_input() -> io.Float.Input:
    return io.Float.Input(
        "level",
        default=1.0,
        min=0.01,
        max=1.0,
        step=0.01,
        tooltip="How far up the model's noise schedule to invert, as a fraction (the paper's t0/T; it used 0.9). "
        "Same meaning as KSampler's denoise: the schedule is computed for steps/level steps and its last "
        "steps+1 sigmas are used. 1.0 goes to the model's maximum noise.",
    )


def _scheduler_input() -> io.Combo.Input:
    return io.Combo.Input(
        "scheduler",
        options=comfy.samplers.SCHEDULER_NAMES,
        default="simple",
        tooltip="ComfyUI scheduler that spaces the sigmas. Use the same scheduler, steps and level to invert "
        "and to generate, or the reconstruction will not match.",
    )


def _cond_inputs() -> list:
    return [
        io.Conditioning.Input(
            "positive",
            optional=True,
            tooltip="Conditioning the model sees at every step (text models such as SD need one: an empty "
            "CLIPTextEncode prompt is fine; class-conditional HDiT takes UltraResHDiTClass). Use the same "
            "conditioning to invert and to generate.",
        ),
        io.Conditioning.Input(
            "negative",
            optional=True,
            tooltip="Negative conditioning, used only when cfg is not 1.",
        ),
        io.Float.Input(
            "cfg",
            default=1.0,
            min=0.0,
            max=100.0,
            step=0.1,
            round=0.01,
            tooltip="Classifier-free guidance scale. 1.0 (no guidance) keeps the inversion closest to exact; "
            "larger values make the inversion drift and need a negative conditioning.",
        ),
    ]


# ------------------------------------------------------------------------------------ model helpers


def _model_sampling(model):
    return model.get_model_object("model_sampling")


def _parametrisation(model) -> str:
    """``"flow"`` for rectified-flow models (ComfyUI's CONST: SD3, Flux, ...), ``"ve"`` for the
    ``x = x0 + sigma * eps`` family (EPS and its subclasses: eps, v, EDM, x0, LCM); anything else
    (e.g. Cosmos' rectified flow, whose noisy point is scaled differently) is refused."""
    ms = _model_sampling(model)
    if isinstance(ms, comfy.model_sampling.CONST):
        return "flow"
    if isinstance(ms, comfy.model_sampling.EPS) and not isinstance(ms, comfy.model_sampling.COSMOS_RFLOW):
        return "ve"
    kinds = [c.__name__ for c in type(ms).__mro__ if c.__module__ == comfy.model_sampling.__name__]
    raise ValueError(
        f"this {model_family(model, exact=True)} model samples with ComfyUI's {'/'.join(kinds) or type(ms).__name__} "
        "parametrisation, which DDIM inversion here does not support. Use an eps-, v-prediction or EDM "
        "model (SD1.x, SD2, SDXL, HDiT) or a rectified-flow one (SD3, Flux); a ModelSampling* node that "
        "switches this model to cosmos_rflow should be removed."
    )


def model_schedule(model, scheduler: str, steps: int, level: float) -> torch.Tensor:
    """The generation-order sigmas ``[steps + 1]`` (float32, CPU) for ``steps`` DDIM steps up to ``level``
    (inputs already checked against the schema by the node's ``checked``)."""
    ms = _model_sampling(model)
    param = _parametrisation(model)
    full = comfy.samplers.calculate_sigmas(
        ms, scheduler, kinv.schedule_steps_for_level(int(steps), float(level))
    )
    levels = getattr(ms, "sigmas", None)
    n_levels = len(levels) if levels is not None else 0
    context = kinv.schedule_context(
        steps, level, scheduler, float(ms.sigma_min), float(ms.sigma_max), n_levels
    )
    return kinv.inversion_schedule(full.float().cpu(), steps, level, param, levels=levels, context=context)


CHANNEL_FIX = "Encode the image with this model's VAE (or pixel-latent node) and invert it with this model."


def run_ddim(
    v, samples: torch.Tensor, sigmas: torch.Tensor, *, direction: str, refine_iters: int = 0
) -> torch.Tensor:
    """Run the inversion (``direction="invert"``) or generation loop on the node's checked inputs ``v``
    (``model``, ``positive``, ``negative``, ``cfg``).

    ``samples`` is a latent-space ``[B, C, H, W]`` tensor (a clean latent to invert, or a noise latent
    to generate from); ``sigmas`` the generation-order schedule. Returns latent space, on the
    intermediate device.
    """
    model, positive, negative, cfg = v.model, v.positive, v.negative, v.cfg
    kinv.check_guidance(cfg, positive is not None, negative is not None)
    ms = _model_sampling(model)
    sampler = loop_sampler(
        kinv.ddim_loop,
        direction=direction,
        refine_iters=int(refine_iters),
        sigma_floor=float(ms.sigma_min),
        parametrisation=_parametrisation(model),
    )
    walk = sigmas.flip(0) if direction == "invert" else sigmas
    try:
        return guided_sample(
            model,
            samples.float(),
            sampler,
            walk,
            cfg=cfg,
            negative=negative,
            positive=positive if positive is not None else [[None, {}]],
        )
    except comfy.model_management.InterruptProcessingException:
        raise
    except (RuntimeError, TypeError, AttributeError) as err:
        if positive is None:
            raise ValueError(
                f"the model failed without conditioning ({type(err).__name__}: {err}). Connect a positive "
                "conditioning (an empty CLIPTextEncode prompt for SD models, UltraResHDiTClass for HDiT)."
            ) from err
        raise


# ------------------------------------------------------------------------------------ nodes


class _DDIMNode(CheckedNode):
    @classmethod
    def checked(cls, inputs: dict):
        """Direct callers (scripts, tests) may leave out cfg, as before: it takes its schema default."""
        return super().checked(with_defaults(cls, inputs, ("cfg",)))


class UltraResDDIMInvert(_DDIMNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UltraResDDIMInvert",
            **schema_extras(
                search_aliases=["inversion", "ddim inversion", "image to noise", "unseen diffusion"]
            ),
            display_name="DDIM Invert (UltraRes)",
            category=CATEGORY,
            description="Deterministic (eta = 0) DDIM inversion: walks a clean latent up the model's own noise "
            "schedule to the noise that UltraResDDIMGenerate turns back into it (UnseenDiffusion). Works for "
            "any model ComfyUI samples, including images far outside the model's training domain.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model whose noise space to invert into."),
                io.Latent.Input(
                    "latent",
                    tooltip="Clean latent to invert (VAEEncode output, or a pixel latent "
                    "for pixel-space models). A noise_mask on it is ignored.",
                ),
                _steps_input(),
                _level_input(),
                _scheduler_input(),
                *_cond_inputs(),
                io.Int.Input(
                    "refine_iters",
                    default=0,
                    min=0,
                    max=20,
                    optional=True,
                    tooltip="Fixed-point refinements per step (0 = plain DDIM inversion as in the paper). Each "
                    "adds one model call per step and makes generation land closer to the input.",
                ),
            ],
            outputs=[
                io.Latent.Output(
                    "noise",
                    tooltip="The inverted latent at the top sigma, in ComfyUI's leftover-noise convention; "
                    "feed it to UltraResDDIMGenerate with the same model, steps, level and scheduler.",
                )
            ],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        v = cls.checked(inputs)
        samples = v.latent["samples"]
        check_channels(v.model, samples, "latent", fix=CHANNEL_FIX)
        sigmas = model_schedule(v.model, v.scheduler, v.steps, v.level)
        noise = run_ddim(v, samples, sigmas, direction="invert", refine_iters=v.refine_iters)
        family = model_family(v.model, exact=True)
        meta = kfmt.make_record(sigmas[0], v.steps, v.level, v.scheduler, family, samples.shape[1:])
        return io.NodeOutput({"samples": noise, META_KEY: meta})


class UltraResDDIMGenerate(_DDIMNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UltraResDDIMGenerate",
            **schema_extras(search_aliases=["inversion", "ddim", "noise to image", "reconstruct"]),
            display_name="DDIM Generate (UltraRes)",
            category=CATEGORY,
            description="Deterministic (eta = 0) DDIM generation from a noise latent made by UltraResDDIMInvert "
            "(or an interpolation of such latents): with the same model, steps, level, scheduler and "
            "conditioning it reconstructs the inverted image.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model the noise was inverted with."),
                io.Latent.Input(
                    "noise", tooltip="Noise latent from UltraResDDIMInvert or UltraResLatentSlerp."
                ),
                _steps_input(),
                _level_input(),
                _scheduler_input(),
                *_cond_inputs(),
            ],
            outputs=[
                io.Latent.Output(
                    "latent", tooltip="The clean latent (decode it with VAEDecode or the pixel-latent node)."
                )
            ],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        v = cls.checked(inputs)
        samples = v.noise["samples"]
        check_channels(v.model, samples, "noise", fix=CHANNEL_FIX)
        sigmas = model_schedule(v.model, v.scheduler, v.steps, v.level)
        family = model_family(v.model, exact=True)
        kfmt.check_generate_record(
            kfmt.read_record(v.noise), family, float(sigmas[0]), v.steps, v.level, v.scheduler
        )
        return io.NodeOutput({"samples": run_ddim(v, samples, sigmas, direction="generate")})


NODES = [UltraResDDIMInvert, UltraResDDIMGenerate]
