"""Tiled Diffusion's model patch: ComfyUI's wrapper API around the kernel's tiled run (no monkey-patching).

- ``OUTER_SAMPLE``: checks the latent before any work (image latent, or one image with a singleton
  frame axis as ComfyUI makes for Qwen-Image; memory) and starts a fresh per-run state, with the tile
  size converted to latent pixels by the model's own latent ratio (8 for SD/Flux, 16 for Flux.2, 32
  for HunyuanImage 2.1, 1 in pixel space);
- ``CALC_COND_BATCH``: for each model evaluation, runs the step's tile plan (``kernels.tiled_diffusion``),
  calling the wrapped ``calc_cond_batch`` once per batch of tiles with the conditioning cut to those
  tiles (``_tile_conds``), and blends the denoised predictions.
"""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import torch

from ..kernels.tiled_diffusion import TiledRun, TileSettings, memory_fix, step_of, tiled_state_bytes
from ._common import available_memory, frugal_activation_bytes, latent_downscale_ratio, require_image_latent
from ._tile_conds import TileConds

log = logging.getLogger("ultrares")
WRAPPER_KEY = "ultrares_tiled_diffusion"
RUN_KEY = "ultrares_tiled_run"  # transformer_options entry holding the current run's state


class _Run:
    """What one sampling run of the patched model holds: the kernel's TiledRun and the cond crops."""

    def __init__(self, settings: TileSettings, height: int, width: int, ratio: int):
        self.tiles = TiledRun(settings, height, width, ratio)
        self.conds = TileConds()


def check_tiled_memory(model, shape, run: _Run, settings: TileSettings) -> None:
    """Refuse, before the first model call, a tiled run whose memory lower bound exceeds what the
    device has: the latent-sized state (``kernels.tiled_diffusion.tiled_state_bytes``) plus ComfyUI's own
    activation estimate for one batch of ``tile_batch_size`` tiles with cond and uncond together. The
    message gives the estimate and the largest tile batch that fits (or says the image itself is too large)."""
    b, c, h, w = (int(v) for v in (shape[0], shape[1], shape[-2], shape[-1]))  # a frame axis holds one frame
    th, tw = run.tiles.planner.tile_h, run.tiles.planner.tile_w
    state = tiled_state_bytes(b, c, h, w)
    per_tile = frugal_activation_bytes(model, (2 * b, c, th, tw))
    have, dev = available_memory(model)
    fix = memory_fix(have, state, per_tile, settings.tile_batch_size)
    if fix is None:
        return
    gib, ratio = 1024**3, latent_downscale_ratio(model)
    need = state + per_tile * settings.tile_batch_size
    raise ValueError(
        f"Tiled Diffusion (UltraRes): a {w * ratio}x{h * ratio} px image (batch {b}) in {tw * ratio}x{th * ratio} px "
        f"tiles, {settings.tile_batch_size} per call, needs at least {need / gib:.1f} GiB (tile batch activations "
        f"{per_tile * settings.tile_batch_size / gib:.1f} GiB by ComfyUI's own estimate + image-sized buffers "
        f"{state / gib:.1f} GiB), but {dev} has about {have / gib:.1f} GiB available: {fix}."
    )


class TiledDiffusionPatch:
    """The two wrappers, sharing one config. The per-run state lives in the guider's model options
    for the length of the run (as ComfyUI's EasyCache keeps its own), so a nested or concurrent
    sampling run with the same patched model gets its own state and cannot clear this one."""

    def __init__(self, settings: TileSettings):
        self.settings = settings

    def apply(self, model):
        """A clone of ``model`` (a ModelPatcher) with the two wrappers; applied twice, the last one wins."""
        m = model.clone()
        for kind, fn in (
            (comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, self.outer_sample),
            (comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, self.calc_cond_batch),
        ):
            m.remove_wrappers_with_key(kind, WRAPPER_KEY)
            m.add_wrapper_with_key(kind, WRAPPER_KEY, fn)
        return m

    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        require_image_latent(noise, "Tiled Diffusion (UltraRes)", frame_axis=True)
        guider = executor.class_obj
        model = guider.model_patcher.model
        ratio = latent_downscale_ratio(model)
        H, W = noise.shape[-2:]
        run = _Run(self.settings, H, W, ratio)
        check_tiled_memory(guider.model_patcher, noise.shape, run, self.settings)
        self._warn_about_tile_size(run, ratio, H, W)
        original = guider.model_options
        guider.model_options = comfy.model_patcher.create_model_options_clone(original)
        guider.model_options.setdefault("transformer_options", {})[RUN_KEY] = run
        try:
            return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
        finally:
            guider.model_options = original  # the run, its references and hints go with it

    def _warn_about_tile_size(self, run: _Run, ratio: int, H: int, W: int) -> None:
        s = self.settings
        tile_h, tile_w, _ = s.latent_tile(ratio)
        if (tile_h * ratio, tile_w * ratio) != (s.tile_height, s.tile_width):
            log.warning(
                "UltraRes Tiled Diffusion: this model's latent pixel is %d px, so the %dx%d px tile is "
                "rounded down to %dx%d px.",
                ratio,
                s.tile_width,
                s.tile_height,
                tile_w * ratio,
                tile_h * ratio,
            )
        if run.tiles.clamped:
            log.warning(
                "UltraRes Tiled Diffusion: tile %dx%d px is larger than the %dx%d px image; "
                "clamped to the image size (one tile per axis there).",
                s.tile_width,
                s.tile_height,
                W * ratio,
                H * ratio,
            )

    def calc_cond_batch(self, executor, model, conds, x_in, timestep, model_options):
        run: _Run | None = model_options.get("transformer_options", {}).get(RUN_KEY)
        framed = x_in.ndim == 5 and x_in.shape[2] == 1  # [B, C, 1, H, W]: Qwen-Image's single frame
        if run is None or not (x_in.ndim == 4 or framed) or tuple(x_in.shape[-2:]) != run.tiles.shape:
            # not inside our sampling run (e.g. a nested sampler on another latent): untiled
            return executor(model, conds, x_in, timestep, model_options)
        step = step_of(timestep, model_options.get("transformer_options", {}).get("sample_sigmas"))
        B = x_in.shape[0]
        # The kernel tiles [B, C, H, W]; the model gets its tiles with the frame axis back in place.
        x = x_in[:, :, 0] if framed else x_in
        has_area = any("area" in c for group in conds if group for c in group)

        def predict(tiles_x, tiles, active):
            n, made = len(tiles), {}
            tile_conds = [
                None if group is None else run.conds.crop(group, list(tiles), B, x_in, made)
                for group in conds
            ]
            if framed:
                tiles_x = tiles_x.unsqueeze(2)
            outs = executor(model, tile_conds, tiles_x, timestep.repeat(n), model_options)
            return [outs[i][:, :, 0] if framed else outs[i] for i in active]

        groups = [None if group is None else id(group) for group in conds]
        outs = run.tiles.denoise(
            x,
            timestep,
            step,
            groups,
            predict,
            batch_size=1 if has_area else None,
            between_batches=comfy.model_management.throw_exception_if_processing_interrupted,
        )
        # an absent group gets what ComfyUI's own calc_cond_batch returns for it: zeros
        return [torch.zeros_like(x_in) if o is None else (o.unsqueeze(2) if framed else o) for o in outs]
