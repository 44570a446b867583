"""DDIM inversion nodes (UnseenDiffusion, arXiv 2310.09213): invert, generate, slerp, domain score.

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

import logging
import math
import os

import comfy.model_management
import comfy.model_sampling
import comfy.samplers
import torch
from comfy_api.latest import io, ui
from comfy_execution.graph_utils import ExecutionBlocker

from ..kernels import inversion as kinv
from ..kernels import inversion_format as kfmt
from ..kernels import inversion_report as kreport
from . import _files
from ._common import check_inputs, seed_input
from ._compat import schema_extras
from ._sampling import LoopRun, check_channels, guided_sample, loop_sampler, model_family

CATEGORY = "UltraRes/inversion"
META_KEY = kfmt.RECORD_KEY
LOG = logging.getLogger("ultrares.inversion")

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


def _check_schedule_inputs(steps, level) -> None:
    """Direct callers of :func:`model_schedule` (the demo, other nodes) get the same checks as the
    queue: the ranges come from the Invert node's schema (no second copy of them here)."""
    v = check_inputs(DDIMInvert, steps=steps, level=level)
    if isinstance(v, str):
        raise ValueError(v)


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


def _flow_top(ms) -> float:
    """Top sigma used instead of 1 on rectified-flow models: the model's last level below 1.

    At sigma 1 a flow point is pure noise and ComfyUI's leftover-noise latent (``x / (1 - sigma)``,
    what KSamplerAdvanced returns) cannot hold it; one level lower it can, and generation from there
    differs from generation from 1 by one of the model's 1000 levels."""
    levels = getattr(ms, "sigmas", None)
    if isinstance(levels, torch.Tensor):
        below = levels.float()[levels.float() < 1.0]
        if below.numel():
            return float(below.max())
    return 0.999


def model_schedule(model, scheduler: str, steps: int, level: float) -> torch.Tensor:
    """The generation-order sigmas ``[steps + 1]`` (float32, CPU) for ``steps`` DDIM steps up to ``level``."""
    _check_schedule_inputs(steps, level)
    if scheduler not in comfy.samplers.SCHEDULER_NAMES:
        raise ValueError(f"scheduler={scheduler!r} is not one of {comfy.samplers.SCHEDULER_NAMES}.")
    ms = _model_sampling(model)
    param = _parametrisation(model)
    total = kinv.schedule_steps_for_level(int(steps), float(level))
    full = comfy.samplers.calculate_sigmas(ms, scheduler, total).float().cpu()
    n_levels = len(getattr(ms, "sigmas", []))
    context = (
        f"steps={steps}, level={level}, scheduler={scheduler!r} on this model's schedule "
        f"(sigma {float(ms.sigma_min):.4g}..{float(ms.sigma_max):.4g}"
        + (f", {n_levels} discrete levels" if n_levels else "")
        + ")"
    )
    try:
        sigmas = kinv.level_schedule(full, int(steps), float(level))
        if param == "flow" and float(sigmas[0]) >= 1.0:
            sigmas[0] = _flow_top(ms)
        kinv.check_schedule(sigmas, param)
    except ValueError as err:
        raise ValueError(f"{context}: {err}") from None
    if float(sigmas[-1]) != 0.0:
        raise ValueError(f"{context}: the schedule does not end at sigma 0; pick another scheduler.")
    return sigmas


CHANNEL_FIX = "Encode the image with this model's VAE (or pixel-latent node) and invert it with this model."


def ddim_loop(
    run: LoopRun, x, sigmas, *, direction: str, refine_iters: int, sigma_floor: float, parametrisation: str
):
    """The DDIM loop of :mod:`..kernels.inversion` as a :func:`._sampling.loop_sampler` loop; ``sigmas``
    in the order the loop walks (ascending to invert: ComfyUI adds no noise at sigma 0)."""

    def step_done(i, xx, x0, sigma):
        run.report({"x": xx, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": x0})

    if direction == "invert":
        return kinv.ddim_invert(
            run.denoise,
            x,
            sigmas.flip(0),
            sigma_floor=sigma_floor,
            refine_iters=refine_iters,
            parametrisation=parametrisation,
            callback=step_done,
        )
    return kinv.ddim_generate(run.denoise, x, sigmas, parametrisation=parametrisation, callback=step_done)


def run_ddim(
    model,
    samples: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    direction: str,
    positive=None,
    negative=None,
    cfg: float = 1.0,
    refine_iters: int = 0,
) -> torch.Tensor:
    """Run the inversion (``direction="invert"``) or generation loop on a ComfyUI MODEL.

    ``samples`` is a latent-space ``[B, C, H, W]`` tensor (a clean latent to invert, or a noise latent
    to generate from); ``sigmas`` the generation-order schedule. Returns latent space, on the
    intermediate device.
    """
    if positive is None and not math.isclose(cfg, 1.0):
        raise ValueError(
            f"cfg={cfg} needs a positive and a negative conditioning; connect them or set cfg to 1.0."
        )
    if negative is None and not math.isclose(cfg, 1.0):
        raise ValueError(f"cfg={cfg} needs a negative conditioning; connect one or set cfg to 1.0.")
    ms = _model_sampling(model)
    sampler = loop_sampler(
        ddim_loop,
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


def _meta(latent: dict) -> dict | None:
    meta = latent.get(META_KEY)
    return meta if isinstance(meta, dict) else None


# ------------------------------------------------------------------------------------ nodes


class DDIMInvert(io.ComfyNode):
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
    def validate_inputs(
        cls, steps=None, level=None, cfg=None, scheduler=None, refine_iters=None
    ) -> bool | str:
        v = check_inputs(
            cls, steps=steps, level=level, cfg=cfg, scheduler=scheduler, refine_iters=refine_iters
        )
        return v if isinstance(v, str) else True

    @classmethod
    def execute(
        cls, model, latent, steps, level, scheduler, positive=None, negative=None, cfg=1.0, refine_iters=0
    ) -> io.NodeOutput:
        samples = latent["samples"]
        check_channels(model, samples, "latent", fix=CHANNEL_FIX)
        sigmas = model_schedule(model, scheduler, steps, level)
        noise = run_ddim(
            model,
            samples,
            sigmas,
            direction="invert",
            positive=positive,
            negative=negative,
            cfg=cfg,
            refine_iters=refine_iters,
        )
        meta = {
            "sigma": float(sigmas[0]),
            "steps": int(steps),
            "level": float(level),
            "scheduler": scheduler,
            "model": model_family(model, exact=True),
            "shape": list(samples.shape[1:]),
        }
        return io.NodeOutput({"samples": noise, META_KEY: meta})


class DDIMGenerate(io.ComfyNode):
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
    def validate_inputs(cls, steps=None, level=None, cfg=None, scheduler=None) -> bool | str:
        v = check_inputs(cls, steps=steps, level=level, cfg=cfg, scheduler=scheduler)
        return v if isinstance(v, str) else True

    @classmethod
    def execute(
        cls, model, noise, steps, level, scheduler, positive=None, negative=None, cfg=1.0
    ) -> io.NodeOutput:
        samples = noise["samples"]
        check_channels(model, samples, "noise", fix=CHANNEL_FIX)
        sigmas = model_schedule(model, scheduler, steps, level)
        meta = _meta(noise)
        if meta is not None:
            if meta.get("model") not in (None, model_family(model, exact=True)):
                raise ValueError(
                    f"the noise latent was inverted with a {meta['model']} model but this model is "
                    f"{model_family(model, exact=True)}; generate with the model that inverted it."
                )
            top = float(meta.get("sigma", sigmas[0]))
            if not math.isclose(top, float(sigmas[0]), rel_tol=1e-3):
                raise ValueError(
                    f"the noise latent sits at sigma {top:.5g} (inverted with steps={meta.get('steps')}, "
                    f"level={meta.get('level')}, scheduler={meta.get('scheduler')!r}) but steps={steps}, "
                    f"level={level}, scheduler={scheduler!r} start at sigma {float(sigmas[0]):.5g}. Use the "
                    "inversion's steps, level and scheduler."
                )
        out = run_ddim(
            model, samples, sigmas, direction="generate", positive=positive, negative=negative, cfg=cfg
        )
        return io.NodeOutput({"samples": out})


class LatentSlerp(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UltraResLatentSlerp",
            **schema_extras(search_aliases=["slerp", "interpolate latents", "inversion"]),
            display_name="Latent Slerp (UltraRes)",
            category=CATEGORY,
            description="Spherical interpolation between two noise latents (the paper moves from an inverted "
            "out-of-domain latent towards a Gaussian sample this way). Without latent_b, a seeded Gaussian "
            "sample with latent_a's RMS is used.",
            inputs=[
                io.Latent.Input("latent_a", tooltip="Start latent (t = 0), e.g. from UltraResDDIMInvert."),
                io.Float.Input(
                    "t",
                    default=0.5,
                    min=-1.0,
                    max=2.0,
                    step=0.01,
                    tooltip="Fraction of the way from latent_a to latent_b (0 = a, 1 = b).",
                ),
                io.Int.Input(
                    "count",
                    default=1,
                    min=1,
                    max=256,
                    tooltip="Number of points: count = 1 gives the point at t; more gives count points "
                    "evenly spaced in (0, t], as a batch (point-major).",
                ),
                seed_input("Seed of the Gaussian sample used when latent_b is not connected."),
                io.Latent.Input(
                    "latent_b",
                    optional=True,
                    tooltip="End latent (t = 1), same shape as latent_a (or batch 1).",
                ),
            ],
            outputs=[
                io.Latent.Output(
                    "latent", tooltip="The interpolated noise latent(s); feed to UltraResDDIMGenerate."
                )
            ],
        )

    @classmethod
    def validate_inputs(cls, t=None, count=None, seed=None) -> bool | str:
        v = check_inputs(cls, t=t, count=count, seed=seed)
        return v if isinstance(v, str) else True

    @classmethod
    def execute(cls, latent_a, t, count, seed, latent_b=None) -> io.NodeOutput:
        v = cls.validate_inputs(t=t, count=count, seed=seed)  # direct (API/demo) calls get the queue's checks
        if isinstance(v, str):
            raise ValueError(v)
        a = latent_a["samples"].float()
        if latent_b is None:
            gen = torch.Generator().manual_seed(int(seed))
            g = torch.randn(a.shape, generator=gen).to(a.device)
            rms = a.flatten(1).pow(2).mean(dim=1).sqrt() / g.flatten(1).pow(2).mean(dim=1).sqrt()
            b = g * rms.view(-1, *([1] * (a.ndim - 1)))
            meta_b = None
        else:
            b = latent_b["samples"].float().to(a.device)
            meta_b = _meta(latent_b)
            if a.shape[1:] != b.shape[1:]:
                raise ValueError(
                    f"latent_a {tuple(a.shape)} and latent_b {tuple(b.shape)} differ in shape; slerp needs latents "
                    "of the same model and image size (resize or crop one before inverting)."
                )
            if a.shape[0] != b.shape[0]:
                if b.shape[0] == 1:
                    b = b.expand_as(a)
                elif a.shape[0] == 1:
                    a = a.expand_as(b)
                else:
                    raise ValueError(
                        f"latent_a has batch {a.shape[0]} and latent_b batch {b.shape[0]}; use equal "
                        "batches or a batch of 1 on one side."
                    )
        meta_a = _meta(latent_a)
        if meta_a and meta_b and not math.isclose(meta_a["sigma"], meta_b["sigma"], rel_tol=1e-3):
            raise ValueError(
                f"latent_a was inverted to sigma {meta_a['sigma']:.5g} and latent_b to "
                f"{meta_b['sigma']:.5g}; interpolate latents inverted with the same steps and level."
            )
        ts = [float(t)] if count == 1 else [float(t) * (k + 1) / count for k in range(count)]
        path = kinv.slerp(a, b, ts)  # [T, B, ...]
        out = {"samples": path.reshape((-1,) + tuple(a.shape[1:]))}
        meta = meta_a or meta_b
        if meta:
            out[META_KEY] = dict(meta)
        return io.NodeOutput(out)


NO_FILE = "(none)"


def _reference_files() -> list[str]:
    """The choices of ``reference_file``: (none) and the .safetensors files in output/ultrares/."""
    return [NO_FILE, *_files.list_files("output")]


def _check_reference_inputs(reference_file, save_reference_as, overwrite) -> bool | str:
    """Queue-time file checks of UltraResDomainScore (the same ones execute repeats)."""
    try:
        if reference_file not in (None, "", NO_FILE):
            name = _files.check_name("reference_file", reference_file)
            path = _files.resolve(name, "output")
            if not os.path.isfile(path):
                return (
                    f"reference_file={reference_file!r}: {_files.shown('output', name)} does not exist. Pick "
                    "a file from the list (files saved with save_reference_as), or connect a reference latent."
                )
        if save_reference_as not in (None, ""):
            name = _files.check_name("save_reference_as", save_reference_as)
            _files.check_writable("save_reference_as", name, bool(overwrite), "output")
    except ValueError as err:
        return str(err)
    return True


class DomainScore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UltraResDomainScore",
            **schema_extras(search_aliases=["inversion", "domain score", "out of domain"]),
            display_name="Domain Score (UltraRes)",
            category=CATEGORY,
            description="How in-domain a set of inverted latents looks: fits the paper's Gaussian (per-dim mean, "
            "scalar variance) to a reference set of in-domain inverted latents and scores each latent by its "
            "normalised distance, mean distance and mean angle to the reference. Thresholds are percentiles "
            "of the reference set's own leave-one-out scores, never fixed numbers. The latents that pass go "
            "out on 'accepted' (e.g. slerp points towards a new domain, on to UltraResDDIMGenerate).",
            is_output_node=True,
            inputs=[
                io.Latent.Input(
                    "latents", tooltip="Inverted latents to score (a batch from UltraResDDIMInvert)."
                ),
                io.Float.Input(
                    "percentile",
                    default=95.0,
                    min=50.0,
                    max=99.9,
                    step=0.1,
                    tooltip="Acceptance percentile: about this share of fresh in-domain latents passes "
                    "each test.",
                ),
                io.Latent.Input(
                    "reference",
                    optional=True,
                    tooltip="In-domain inverted latents (at least 3, same model, size, steps and "
                    "level). Takes precedence over reference_file.",
                ),
                io.Combo.Input(
                    "reference_file",
                    options=_reference_files(),
                    default=NO_FILE,
                    optional=True,
                    tooltip="Saved reference, used when no reference latent is connected: a file in "
                    "ComfyUI's output/ultrares/ folder written by save_reference_as (refresh the page to "
                    "see new ones).",
                ),
                io.String.Input(
                    "save_reference_as",
                    default="",
                    optional=True,
                    tooltip="If set and a reference latent is connected, save it as output/ultrares/<name> "
                    "for later use as reference_file. A plain file name (no folders); .safetensors is "
                    "added when missing.",
                ),
                io.Boolean.Input(
                    "overwrite",
                    default=False,
                    optional=True,
                    tooltip="Allow save_reference_as to replace a file that UltraRes did not write. Files "
                    "this node saved are replaced without it.",
                ),
            ],
            outputs=[
                io.String.Output(
                    "report", tooltip="Per-latent scores, p-values, verdicts and the thresholds."
                ),
                io.Image.Output(
                    "plot",
                    tooltip="Histogram of the reference distances with the threshold and the scored latents.",
                ),
                io.Latent.Output(
                    "accepted",
                    tooltip="The scored latents judged in-domain, in their input order (with the inversion "
                    "record of 'latents'): feed them to UltraResDDIMGenerate. Nodes downstream stop with a "
                    "message when none passes.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(
        cls, percentile=None, reference_file=None, save_reference_as=None, overwrite=False
    ) -> bool | str:
        if reference_file == "":  # workflows saved before reference_file became a list (an empty STRING)
            reference_file = NO_FILE
        v = check_inputs(
            cls,
            percentile=percentile,
            reference_file=reference_file,
            save_reference_as=save_reference_as,
            overwrite=overwrite,
            combo_hints={
                "reference_file": " (files saved with save_reference_as; or connect a reference latent)"
            },
        )
        if isinstance(v, str):
            return v
        return _check_reference_inputs(v.reference_file, v.save_reference_as, bool(v.overwrite))

    @classmethod
    def execute(
        cls,
        latents,
        percentile,
        reference=None,
        reference_file=NO_FILE,
        save_reference_as="",
        overwrite=False,
    ) -> io.NodeOutput:
        ok = cls.validate_inputs(percentile, reference_file, save_reference_as, overwrite)
        if ok is not True:
            raise ValueError(ok)
        test = latents["samples"].float().cpu()
        meta_test = _meta(latents)
        if reference is not None:
            ref = reference["samples"].float().cpu()
            meta_ref = _meta(reference)
            if save_reference_as:
                name = _files.check_name("save_reference_as", save_reference_as)
                _files.makedirs("output")
                path = _files.check_writable("save_reference_as", name, bool(overwrite), "output")
                kfmt.save_reference(path, ref, meta_ref, {_files.MARKER_KEY: "domain_reference"})
        elif reference_file not in (None, "", NO_FILE):
            name = _files.check_name("reference_file", reference_file)
            path = _files.resolve(name, "output")
            try:
                ref, meta_ref = kfmt.load_reference(path)
            except ValueError:
                raise ValueError(
                    f"reference_file: {_files.shown('output', name)} is not a reference saved by this node "
                    "(no readable 'latents' tensor); save one with save_reference_as."
                ) from None
        else:
            raise ValueError(
                "connect a reference latent (in-domain inverted latents) or pick a saved reference_file."
            )
        if meta_test and meta_ref and not math.isclose(meta_test["sigma"], meta_ref["sigma"], rel_tol=1e-3):
            raise ValueError(
                f"the latents were inverted to sigma {meta_test['sigma']:.5g} but the reference to "
                f"{meta_ref['sigma']:.5g}; invert both with the same model, steps and level."
            )
        if tuple(test.shape[1:]) != tuple(ref.shape[1:]):
            raise ValueError(
                f"latents {tuple(test.shape)} and reference {tuple(ref.shape)} differ in shape; invert "
                "both sets with the same model at the same image size."
            )
        reference_stats = kinv.domain_reference(ref, percentile=float(percentile))
        score = kinv.domain_score(test, reference_stats)
        report = kreport.domain_report(reference_stats, score)
        plot = kreport.domain_plot(reference_stats, score)
        preview = ui.PreviewImage(plot, cls=cls).as_dict()
        keep = score.in_domain.nonzero().flatten()
        if len(keep):
            accepted = {"samples": latents["samples"][keep.to(latents["samples"].device)]}
            if meta_test:
                accepted[META_KEY] = dict(meta_test)
        else:
            accepted = ExecutionBlocker(
                f"UltraResDomainScore accepted none of the {len(score.in_domain)} latents, so nothing was "
                "passed on. Lower the percentile's strictness (a higher percentile accepts more), use more "
                "slerp points closer to the reference (smaller t), or check the reference set."
            )
        return io.NodeOutput(report, plot, accepted, ui={**preview, "text": (report,)})


SPREADS = ("scalar (paper)", "per-dimension")


class DomainGaussian(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UltraResDomainGaussian",
            **schema_extras(search_aliases=["inversion", "gaussian latents", "sample latents"]),
            display_name="Fit & Sample Domain Gaussian (UltraRes)",
            category=CATEGORY,
            description="The paper's unseen-domain sampling: fits a Gaussian to a batch of inverted latents of "
            "a new domain (per-dimension mean and, as the official DiscoveryDiff code does, one scalar "
            "variance) and draws new starting latents from it (seeded, deterministic). Generate them with "
            "UltraResDDIMGenerate using the inversion's model, steps, level and scheduler.",
            inputs=[
                io.Latent.Input(
                    "latents",
                    tooltip="Inverted latents of the new domain (at least 2; a batch from UltraResDDIMInvert).",
                ),
                io.Int.Input(
                    "count",
                    default=4,
                    min=1,
                    max=256,
                    tooltip="How many new latents to draw (the output batch).",
                ),
                seed_input(
                    "Seed of the draw: the same seed and latents give the same samples on any device."
                ),
                io.Combo.Input(
                    "spread",
                    options=list(SPREADS),
                    default=SPREADS[0],
                    optional=True,
                    tooltip="'scalar (paper)': one variance pooled over every value (what the paper fits). "
                    "'per-dimension': a standard deviation per latent value (needs more latents to be "
                    "reliable).",
                ),
            ],
            outputs=[
                io.Latent.Output(
                    "latent",
                    tooltip="count new noise latents at the inversion's top sigma (with its inversion record).",
                )
            ],
        )

    @classmethod
    def validate_inputs(cls, count=None, spread=None, seed=None) -> bool | str:
        v = check_inputs(cls, count=count, spread=spread, seed=seed)
        return v if isinstance(v, str) else True

    @classmethod
    def execute(cls, latents, count, seed, spread=SPREADS[0]) -> io.NodeOutput:
        ok = cls.validate_inputs(count, spread)
        if ok is not True:
            raise ValueError(ok)
        samples = latents["samples"]
        if samples.shape[0] < 2:
            raise ValueError(
                f"latents has a batch of {samples.shape[0]}; fitting a Gaussian needs at least 2 inverted "
                "latents. Invert several images of the new domain (batch them with ImageBatch first)."
            )
        if not torch.isfinite(samples).all():
            raise ValueError("latents contains NaN or infinite values; invert the images again.")
        out = kinv.sample_domain_gaussian(
            samples.float().cpu(), int(count), int(seed), per_dimension=spread == SPREADS[1]
        )
        result = {"samples": out.to(comfy.model_management.intermediate_device())}
        meta = _meta(latents)
        if meta:
            result[META_KEY] = dict(meta)
        return io.NodeOutput(result)


NODES = [DDIMInvert, DDIMGenerate, LatentSlerp, DomainScore, DomainGaussian]
