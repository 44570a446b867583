"""Tiled Diffusion (UltraRes): FSTD and the overlap baselines as a MODEL -> MODEL patch.

The patch uses ComfyUI's wrapper API only (no monkey-patching):
- ``OUTER_SAMPLE``: checks the latent before any work (image latent, tile vs image size) and
  starts a fresh per-run state;
- ``CALC_COND_BATCH``: for each model evaluation, runs the step's tile plan
  (``kernels.tiling``), calling the wrapped ``calc_cond_batch`` once per batch of tiles with the
  conditioning cropped to those tiles (area/mask conds, latent-shaped model conds such as inpaint
  concat, ControlNet/T2I-Adapter hints), and blends the denoised predictions.
So stock samplers, schedulers, CFG, img2img (denoise < 1) and ControlNet work unchanged.
"""

from __future__ import annotations

import logging

import comfy.conds
import comfy.model_management
import comfy.patcher_extension
import comfy.utils
import torch
from comfy_api.latest import io

from ..kernels.tiling import StepPlan, Tile, TilePlanner, plan_any_size, run_tiles
from ._common import check_inputs, latent_downscale_ratio, require_image_latent

log = logging.getLogger("ultrares")
WRAPPER_KEY = "ultrares_tiled_diffusion"

METHOD_CHOICES = {
    "FSTD": "fstd",
    "FSTD (full coverage)": "fstd_full",
    "MultiDiffusion": "multidiffusion",
    "Mixture of Diffusers": "mixture_of_diffusers",
    "SpotDiffusion": "spotdiffusion",
}
MIN_TILE_PX = 64


def _stack_crops(t: torch.Tensor, tiles: list[Tile], batch: int, scale_h: float = 1.0, scale_w: float = 1.0):
    """Crop [Bt, ..., H, W] to each tile (box scaled by scale_*), each repeated to ``batch``,
    stacked tile-major -> [n*batch, ..., h, w]."""
    crops = []
    for tile in tiles:
        y0, y1 = round(tile.y * scale_h), round((tile.y + tile.h) * scale_h)
        x0, x1 = round(tile.x * scale_w), round((tile.x + tile.w) * scale_w)
        crops.append(comfy.utils.repeat_to_batch_size(t[..., y0:y1, x0:x1], batch))
    return torch.cat(crops, dim=0)


class _TileRun:
    """Per-sampling-run state: the planner for this latent size, the previous evaluation (FSTD's
    reference for uncovered strips) and full-size ControlNet hints cropped per tile batch."""

    def __init__(self, cfg: dict, height: int, width: int, ratio: int):
        tile_h = max(1, cfg["tile_height"] // ratio)
        tile_w = max(1, cfg["tile_width"] // ratio)
        overlap = cfg["overlap"] // ratio
        self.planner = TilePlanner(cfg["method"], height, width, tile_h, tile_w,
                                   overlap=min(overlap, max(0, min(tile_h, tile_w, height, width) - 1)),
                                   reset_interval=cfg["reset_interval"], seed=cfg["seed"])
        self.full = None
        if cfg["method"] == "fstd":  # same offsets, extra tiles: used when no reference exists yet
            self.full = TilePlanner("fstd_full", height, width, tile_h, tile_w,
                                    reset_interval=cfg["reset_interval"], seed=cfg["seed"])
        self.batch_size = cfg["tile_batch_size"]
        self.prev: tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]] | None = None
        self.hints: dict[int, torch.Tensor] = {}

    # ----- conditioning per tile batch -----
    def crop_control(self, control, tiles: list[Tile], batch: int, latent_hw: tuple[int, int]):
        if control is None or getattr(control, "cond_hint_original", None) is None:
            return control
        ratio = control.compression_ratio
        if getattr(control, "vae", None) is not None:
            ratio *= control.vae.spacial_compression_encode()
        H, W = latent_hw[0] * ratio, latent_hw[1] * ratio
        key = id(control)
        full = self.hints.get(key)
        if full is None or full.shape[-2:] != (H, W):
            # exactly what the untiled ControlNet would see, then cropped per tile
            full = comfy.utils.common_upscale(control.cond_hint_original, W, H, control.upscale_algorithm, "center")
            self.hints[key] = full
        tiled = control.copy()
        tiled.cond_hint_original = _stack_crops(full, tiles, batch, ratio, ratio)
        tiled.timestep_range = getattr(control, "timestep_range", None)
        prev = getattr(control, "previous_controlnet", None)
        if prev is not None:
            tiled.set_previous_controlnet(self.crop_control(prev, tiles, batch, latent_hw))
        return tiled

    def crop_conds(self, conds: list[dict] | None, tiles: list[Tile], batch: int, latent_hw: tuple[int, int]):
        if conds is None:
            return None
        out = []
        for cond in conds:
            cond = dict(cond)
            if "area" in cond:
                # an area cond is placed relative to the tile; tiles are run one at a time then
                (tile,) = tiles
                area = list(cond["area"])
                h, w, y, x = area[-4], area[-3], area[-2], area[-1]
                y0, x0 = max(y, tile.y), max(x, tile.x)
                y1, x1 = min(y + h, tile.y + tile.h), min(x + w, tile.x + tile.w)
                if y1 <= y0 or x1 <= x0:
                    continue  # this area does not touch the tile
                cond["area"] = (y1 - y0, x1 - x0, y0 - tile.y, x0 - tile.x)
            if cond.get("mask") is not None:
                cond["mask"] = _stack_crops(cond["mask"], tiles, batch)
            model_conds = {}
            for name, mc in cond.get("model_conds", {}).items():
                if isinstance(mc, comfy.conds.CONDNoiseShape) and tuple(mc.cond.shape[-2:]) == tuple(latent_hw):
                    mc = mc._copy_with(_stack_crops(mc.cond, tiles, batch))
                model_conds[name] = mc
            cond["model_conds"] = model_conds
            if "control" in cond:
                cond["control"] = self.crop_control(cond["control"], tiles, batch, latent_hw)
            out.append(cond)
        return out

    # ----- one model evaluation -----
    def plan_for(self, step: int) -> StepPlan:
        plan = self.planner.plan(step)
        if plan.uncovered is not None and self.prev is None:
            plan = self.full.plan(step)
        return plan

    def reference(self, x: torch.Tensor, sigma: torch.Tensor, plan: StepPlan):
        """Previous step's noise prediction, re-expressed as x0 at this sigma (x - sigma * eps_prev)."""
        if plan.uncovered is None:
            return None
        x_prev, sigma_prev, outs_prev = self.prev
        s, sp = sigma.view(-1, 1, 1, 1), sigma_prev.view(-1, 1, 1, 1)
        return [None if o is None else x - s * (x_prev - o) / sp for o in outs_prev]


def _step_index(sigma: torch.Tensor, model_options: dict) -> int:
    sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
    s = float(sigma.reshape(-1)[0])
    if sigmas is None or len(sigmas) == 0:
        return int(round(s * 1e4))  # no schedule known: a stable key per sigma
    return int(torch.argmin((sigmas.float().cpu() - s).abs()))


class _TiledDiffusionPatch:
    """The two wrappers, sharing one config; a new _TileRun per sampling run."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.run: _TileRun | None = None

    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        require_image_latent(noise, "Tiled Diffusion (UltraRes)")
        guider = executor.class_obj
        model = guider.model_patcher.model
        ratio = latent_downscale_ratio(model)
        H, W = noise.shape[-2:]
        self.run = _TileRun(self.cfg, H, W, ratio)
        if self.run.planner.clamped:
            log.warning("UltraRes Tiled Diffusion: tile %dx%d px is larger than the %dx%d px image; "
                        "clamped to the image size (one tile per axis there).",
                        self.cfg["tile_width"], self.cfg["tile_height"], W * ratio, H * ratio)
        try:
            return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
        finally:
            self.run = None  # release the reference latents and hints

    def calc_cond_batch(self, executor, model, conds, x_in, timestep, model_options):
        run = self.run
        if run is None or x_in.ndim != 4 or tuple(x_in.shape[-2:]) != (run.planner.height, run.planner.width):
            # not inside our sampling run (e.g. a nested sampler on another latent): untiled
            return executor(model, conds, x_in, timestep, model_options)
        step = _step_index(timestep, model_options)
        plan = run.plan_for(step)
        reference = run.reference(x_in, timestep, plan) if plan.uncovered is not None else None
        B, latent_hw = x_in.shape[0], tuple(x_in.shape[-2:])
        has_area = any("area" in c for group in conds if group for c in group)
        batch_size = 1 if has_area else run.batch_size

        def predict(tiles_x, tiles):
            n = len(tiles)
            tile_conds = [run.crop_conds(group, list(tiles), B, latent_hw) for group in conds]
            outs = executor(model, tile_conds, tiles_x, timestep.repeat(n), model_options)
            return [o if o is not None else torch.zeros_like(tiles_x) for o in outs]

        outs = run_tiles(x_in, plan, predict, batch_size=batch_size, reference=reference,
                         between_batches=comfy.model_management.throw_exception_if_processing_interrupted)
        run.prev = (x_in, timestep, [None if g is None else o for g, o in zip(conds, outs)])
        return outs


def _inputs():
    return [
        io.Model.Input("model", tooltip="The diffusion model to sample in tiles (any model whose latent is a 2-D image)."),
        io.Combo.Input("method", options=list(METHOD_CHOICES), default="FSTD",
                       tooltip="FSTD: non-overlapping tiles whose grid shifts every step (about the cost of the "
                               "image itself). FSTD (full coverage): adds tiles for the strips the shift "
                               "uncovers instead of reusing the previous prediction. MultiDiffusion / Mixture "
                               "of Diffusers: overlapping tiles (uniform / Gaussian blend). SpotDiffusion: "
                               "non-overlapping tiles on a randomly shifted latent."),
        io.Int.Input("tile_width", default=512, min=MIN_TILE_PX, max=8192, step=8,
                     tooltip="Tile width in pixels: the model's native size works best (512 for SD1.5, 1024 "
                             "for SDXL). Multiple of 8. Larger than the image: clamped to it."),
        io.Int.Input("tile_height", default=512, min=MIN_TILE_PX, max=8192, step=8,
                     tooltip="Tile height in pixels (see tile_width)."),
        io.Int.Input("overlap", default=64, min=0, max=2048, step=8,
                     tooltip="Overlap in pixels between neighbouring tiles, for MultiDiffusion and Mixture of "
                             "Diffusers only (FSTD and SpotDiffusion tile without overlap)."),
        io.Int.Input("tile_batch_size", default=4, min=1, max=64,
                     tooltip="Tiles evaluated per model call: higher is faster if memory allows."),
        io.Int.Input("reset_interval", default=4, min=1, max=1000,
                     tooltip="FSTD: every this many steps the grid offset returns to (0, 0). 1 makes every "
                             "step a reset step: the grid never moves and seams come back. 4 is the official code's default."),
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, control_after_generate=True,
                     tooltip="Seed of the per-step grid offsets (FSTD) or shifts (SpotDiffusion)."),
    ]


class UltraResTiledDiffusion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UltraResTiledDiffusion",
            display_name="Tiled Diffusion (UltraRes)",
            category="UltraRes/tiling",
            description="Sample images larger than the model's native size in tiles. FSTD (Any-Size-Diffusion) "
                        "tiles without overlap and shifts the grid every step so seams never settle: about "
                        "half the work of overlapping tiles. Works with every sampler and scheduler, CFG, "
                        "img2img and ControlNet; memory grows with the latent, not with the tile count.",
            inputs=_inputs(),
            outputs=[io.Model.Output(tooltip="The model, patched to denoise in tiles; connect it to any sampler.")],
        )

    @classmethod
    def validate_inputs(cls, tile_width=None, tile_height=None, overlap=None, method=None):  # None: linked or missing
        # Inputs named here skip ComfyUI's own min/max/combo checks, so all of them are checked here.
        checked = check_inputs(cls, tile_width=tile_width, tile_height=tile_height, overlap=overlap, method=method)
        if isinstance(checked, str):
            return checked
        if method is not None and method not in METHOD_CHOICES:  # None: linked, known at run time
            return f"method {method!r} is not one of {list(METHOD_CHOICES)}."
        for name, value in (("tile_width", tile_width), ("tile_height", tile_height)):
            if not isinstance(value, int):
                continue  # linked from another node: checked when the node runs
            if value < MIN_TILE_PX:
                return f"{name}={value} is below the minimum tile of {MIN_TILE_PX} px: use the model's native size (512 for SD1.5, 1024 for SDXL)."
            if value % 8:
                return f"{name}={value} is not a multiple of 8: use {value - value % 8} or {value - value % 8 + 8}."
        if isinstance(overlap, int) and overlap < 0:
            return f"overlap={overlap} must be >= 0."
        if method in ("MultiDiffusion", "Mixture of Diffusers") and all(isinstance(v, int) for v in (overlap, tile_width, tile_height)):
            smallest = min(tile_width, tile_height)
            if overlap >= smallest:
                return f"overlap={overlap} must be smaller than the tile ({smallest} px): lower it, e.g. to {smallest // 8}."
        return True

    @classmethod
    def execute(cls, model, method, tile_width, tile_height, overlap, tile_batch_size, reset_interval, seed) -> io.NodeOutput:
        verdict = cls.validate_inputs(tile_width=tile_width, tile_height=tile_height, overlap=overlap, method=method)
        if verdict is not True:
            raise ValueError(verdict)
        cfg = {"method": METHOD_CHOICES[method], "tile_width": tile_width, "tile_height": tile_height,
               "overlap": overlap, "tile_batch_size": tile_batch_size, "reset_interval": reset_interval, "seed": seed}
        patch = _TiledDiffusionPatch(cfg)
        m = model.clone()
        for kind, fn in ((comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, patch.outer_sample),
                         (comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, patch.calc_cond_batch)):
            m.remove_wrappers_with_key(kind, WRAPPER_KEY)  # applying the node twice: the last one wins
            m.add_wrapper_with_key(kind, WRAPPER_KEY, fn)
        return io.NodeOutput(m)


# Native training resolution per ComfyUI model config class (pixels per side).
NATIVE_SIDE = {"SD15": 512, "SD20": 768, "SD21UnclipL": 768, "SD21UnclipH": 768, "SDXL": 1024, "SDXLRefiner": 1024,
               "SSD1B": 1024, "Segmind_Vega": 1024, "SD3": 1024, "Flux": 1024, "FluxSchnell": 1024, "AuraFlow": 1024,
               "PixArtSigma": 1024, "HunyuanDiT": 1024, "Lumina2": 1024}


def native_pixels(model) -> tuple[int, str]:
    """(pixel count, how it was found) for a MODEL: its config's ``native_size`` if it states one
    (pixel-space models of this pack do), else the table above, else 512x512."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    side = getattr(config, "native_size", None)
    if side:
        return int(side) ** 2, "model config"
    name = type(config).__name__
    if name in NATIVE_SIDE:
        return NATIVE_SIDE[name] ** 2, name
    return 512 * 512, f"unknown model type {name}: assumed 512x512"


class UltraResAnySizePlan(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UltraResAnySizePlan",
            display_name="Any-Size Plan (UltraRes)",
            category="UltraRes/tiling",
            description="Any-Size-Diffusion's first stage: pick the size to generate at natively (the target's "
                        "aspect ratio at about the model's native pixel count, multiples of 64) and the upscale "
                        "factor to the target. Sample at first_width x first_height, upscale to the target, then "
                        "refine with Tiled Diffusion (FSTD) at the target size.",
            inputs=[
                io.Int.Input("target_width", default=2048, min=64, max=16384, step=8, tooltip="Final image width in pixels."),
                io.Int.Input("target_height", default=2048, min=64, max=16384, step=8, tooltip="Final image height in pixels."),
                io.Int.Input("native_size", default=0, min=0, max=4096, step=64,
                             tooltip="The model's native side in pixels (512 for SD1.5, 1024 for SDXL); 0 = read it "
                                     "from the connected model."),
                io.Model.Input("model", optional=True,
                               tooltip="Optional: the model, to read its native resolution when native_size is 0."),
            ],
            outputs=[
                io.Int.Output(display_name="first_width", tooltip="Width to generate at (multiple of 64)."),
                io.Int.Output(display_name="first_height", tooltip="Height to generate at (multiple of 64)."),
                io.Float.Output(display_name="upscale_by", tooltip="Factor from the first stage to the target."),
                io.Int.Output(display_name="target_width", tooltip="The target width, passed through."),
                io.Int.Output(display_name="target_height", tooltip="The target height, passed through."),
                io.String.Output(display_name="summary", tooltip="The plan in words."),
            ],
        )

    @classmethod
    def execute(cls, target_width, target_height, native_size=0, model=None) -> io.NodeOutput:
        if native_size:
            pixels, source = native_size**2, "native_size input"
        elif model is not None:
            pixels, source = native_pixels(model)
        else:
            raise ValueError("Any-Size Plan needs the model's native size: connect the model, or set native_size "
                             "(512 for SD1.5, 1024 for SDXL).")
        w, h, up = plan_any_size(target_width, target_height, pixels)
        summary = (f"generate {w}x{h}, upscale x{up:.3g} to {target_width}x{target_height}, refine with FSTD "
                   f"(native {int(pixels ** 0.5)}^2 px from {source})")
        return io.NodeOutput(w, h, up, target_width, target_height, summary)


NODES = [UltraResTiledDiffusion, UltraResAnySizePlan]
