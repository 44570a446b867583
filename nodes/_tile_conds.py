"""Tiled Diffusion's ComfyUI conditioning, cut to the tiles of one model call.

What each tile's model call receives: area conds placed relative to the tile (the box arithmetic is
``kernels.tiled_diffusion.area_in_tile``), masks and latent-shaped model conds (inpaint concat, noise-shaped
conds) cropped to the tile, ControlNet / ControlLoRA / T2I-Adapter hints cropped from the hint the
control prepares for the whole latent. Reference latents (Kontext's, Qwen-Image-Edit's ``ref_latents``)
are passed whole to every tile.
"""

from __future__ import annotations

import copy

import comfy.conds
import comfy.controlnet
import comfy.utils
import torch

from ..kernels.tiled_diffusion import Tile, area_in_tile


def stack_crops(t: torch.Tensor, tiles: list[Tile], batch: int, scale_h: float = 1.0, scale_w: float = 1.0):
    """Crop [Bt, ..., H, W] to each tile (box scaled by scale_*), each repeated to ``batch``,
    stacked tile-major -> [n*batch, ..., h, w]."""
    crops = [
        comfy.utils.repeat_to_batch_size(t[(..., *tile.slices(scale_h, scale_w))], batch) for tile in tiles
    ]
    return torch.cat(crops, dim=0)


class TileConds:
    """ComfyUI conditioning cut to tiles, for one sampling run.

    Controls (ControlNet, ControlLoRA, T2I-Adapter, chained through ``previous_controlnet``) are
    shallow copies of the originals, so each keeps everything ``pre_run`` gave the original
    (``model_sampling_current``, the timestep range, ControlLoRA's built model), with the hint cut
    to the tiles. A ControlNet's full-size hint is prepared once per run exactly as its own
    ``get_control`` would for the whole latent (resize, preprocess, VAE encode for latent-space
    controls, inpaint ``extra_concat``) and then only cropped. Within one model call, every group
    sharing a control gets the same tile copy, so ComfyUI still batches cond and uncond together.
    """

    def __init__(self):
        # id(original control) -> (pixel hint at the image size, extra concats at that size, the
        # hint ControlNet.get_control prepares for the whole latent or None)
        self.prepared: dict[int, tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]] = {}

    def _prepared(self, control, x: torch.Tensor):
        key = id(control)
        if key not in self.prepared:
            ratio = control.compression_ratio
            if getattr(control, "vae", None) is not None:
                ratio *= control.vae.spacial_compression_encode()
            H, W = x.shape[-2] * ratio, x.shape[-1] * ratio
            up = control.upscale_algorithm
            pixels = comfy.utils.common_upscale(control.cond_hint_original, W, H, up, "center")
            extras = [
                comfy.utils.common_upscale(c, W, H, up, "center") if c.ndim == 4 else c
                for c in getattr(control, "extra_concat_orig", [])
            ]
            self.prepared[key] = (pixels, extras, self._full_hint(control, x))
        return self.prepared[key]

    @staticmethod
    def _full_hint(control, x: torch.Tensor) -> torch.Tensor | None:
        """The hint ControlNet.get_control would build for the whole latent ``x``; None for other
        control types (they are fed the cropped original hint and prepare it themselves)."""
        if not isinstance(control, comfy.controlnet.ControlNet):
            return None
        H, W = x.shape[-2] * control.compression_ratio, x.shape[-1] * control.compression_ratio
        # The control's own get_control prepares the hint; a stand-in model that only reports the
        # dtype and no model sampling make it stop right after that, before running the network.
        probe = copy.copy(control)
        probe.cond_hint = None
        probe.previous_controlnet = None
        probe.timestep_range = None
        probe.control_model = _DtypeOnly(getattr(control.control_model, "dtype", torch.float32))
        probe.model_sampling_current = None
        try:
            probe.get_control(x, torch.zeros(x.shape[0], device=x.device), {"c_crossattn": None}, 1, {})
        except AttributeError as err:
            # The expected stop is get_control's own use of model_sampling_current, once the hint is
            # ready; an AttributeError from deeper down (the VAE, the model manager) is a real error,
            # and its half-made hint must not be used.
            tb = err.__traceback__
            while tb.tb_next is not None:
                tb = tb.tb_next
            if tb.tb_frame.f_code.co_name != "get_control":
                raise
        full = probe.cond_hint
        if full is None or tuple(full.shape[-2:]) != (H, W):
            return None
        return full

    def crop_control(self, control, tiles: list[Tile], batch: int, x: torch.Tensor, made: dict):
        if control is None:
            return None
        key = id(control)
        if key in made:
            return made[key]
        tiled = copy.copy(control)
        if getattr(control, "cond_hint_original", None) is not None:
            pixels, extras, full = self._prepared(control, x)
            ratio = pixels.shape[-2] / x.shape[-2]
            tiled.cond_hint_original = stack_crops(pixels, tiles, batch, ratio, ratio)
            tiled.extra_concat_orig = [stack_crops(c, tiles, batch, ratio, ratio) for c in extras]
            tiled.cond_hint = None
            if full is not None:  # the prepared hint, cropped: get_control uses it as is
                r = control.compression_ratio
                tiled.cond_hint = stack_crops(full, tiles, batch, r, r)
        if hasattr(tiled, "control_input"):
            tiled.control_input = None  # T2I-Adapter features belong to the hint they came from
        prev = getattr(control, "previous_controlnet", None)
        if prev is not None:
            tiled.previous_controlnet = self.crop_control(prev, tiles, batch, x, made)
        made[key] = tiled
        return tiled

    def crop(self, conds: list[dict], tiles: list[Tile], batch: int, x: torch.Tensor, made: dict):
        latent_hw = tuple(x.shape[-2:])
        out = []
        for cond in conds:
            cond = dict(cond)
            if "area" in cond:
                # an area cond is placed relative to the tile; tiles are run one at a time then
                (tile,) = tiles
                area = area_in_tile(cond["area"], tile)
                if area is None:
                    continue  # this area does not touch the tile
                cond["area"] = area
            if cond.get("mask") is not None:
                cond["mask"] = stack_crops(cond["mask"], tiles, batch)
            model_conds = {}
            for name, mc in cond.get("model_conds", {}).items():
                # every latent-shaped model input: inpaint concat, reference/noise-shaped conds
                if isinstance(mc, comfy.conds.CONDNoiseShape) and tuple(mc.cond.shape[-2:]) == latent_hw:
                    mc = mc._copy_with(stack_crops(mc.cond, tiles, batch))
                model_conds[name] = mc
            cond["model_conds"] = model_conds
            if "control" in cond:
                cond["control"] = self.crop_control(cond["control"], tiles, batch, x, made)
            out.append(cond)
        return out


class _DtypeOnly:
    """Stands in for a control model while its hint is prepared: get_control reads only its dtype."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype
