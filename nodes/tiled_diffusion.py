"""Tiled Diffusion (UltraRes): FSTD and the overlap baselines as a MODEL -> MODEL patch.

The patch uses ComfyUI's wrapper API only (no monkey-patching):
- ``OUTER_SAMPLE``: checks the latent before any work (image latent, or one image with a singleton
  frame axis as ComfyUI makes for Qwen-Image; tile vs image size) and starts a fresh per-run state,
  with the tile size converted to latent pixels by the model's own latent ratio (8 for SD/Flux, 16 for
  Flux.2, 32 for HunyuanImage 2.1, 1 in pixel space);
- ``CALC_COND_BATCH``: for each model evaluation, runs the step's tile plan
  (``kernels.tiling``), calling the wrapped ``calc_cond_batch`` once per batch of tiles with the
  conditioning cropped to those tiles (area/mask conds, latent-shaped model conds such as inpaint
  concat, ControlNet/T2I-Adapter hints; reference latents such as Kontext's or Qwen-Image-Edit's
  ``ref_latents`` are passed whole to every tile), and blends the denoised predictions.
So stock samplers, schedulers, CFG, img2img (denoise < 1) and ControlNet work unchanged.
"""

from __future__ import annotations

import copy
import logging

import comfy.conds
import comfy.controlnet
import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.utils
import torch
from comfy_api.latest import io

from ..kernels.tiling import (
    METHOD_LABELS,
    Tile,
    TiledRun,
    TileSettings,
    cover_and_crop,
    plan_any_size,
    step_of,
)
from ._common import (
    available_memory,
    check_inputs,
    frugal_activation_bytes,
    latent_downscale_ratio,
    require_image_latent,
    seed_input,
)
from ._compat import schema_extras
from ._inputs import links_and_nulls

log = logging.getLogger("ultrares")
WRAPPER_KEY = "ultrares_tiled_diffusion"
RUN_KEY = "ultrares_tiled_run"  # transformer_options entry holding the current run's state

METHOD_CHOICES = METHOD_LABELS  # combo option -> kernel method
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


class _TileConds:
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
            tiled.cond_hint_original = _stack_crops(pixels, tiles, batch, ratio, ratio)
            tiled.extra_concat_orig = [_stack_crops(c, tiles, batch, ratio, ratio) for c in extras]
            tiled.cond_hint = None
            if full is not None:  # the prepared hint, cropped: get_control uses it as is
                r = control.compression_ratio
                tiled.cond_hint = _stack_crops(full, tiles, batch, r, r)
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
                area = list(cond["area"])
                h, w, y, xx = area[-4], area[-3], area[-2], area[-1]
                y0, x0 = max(y, tile.y), max(xx, tile.x)
                y1, x1 = min(y + h, tile.y + tile.h), min(xx + w, tile.x + tile.w)
                if y1 <= y0 or x1 <= x0:
                    continue  # this area does not touch the tile
                cond["area"] = (y1 - y0, x1 - x0, y0 - tile.y, x0 - tile.x)
            if cond.get("mask") is not None:
                cond["mask"] = _stack_crops(cond["mask"], tiles, batch)
            model_conds = {}
            for name, mc in cond.get("model_conds", {}).items():
                # every latent-shaped model input: inpaint concat, reference/noise-shaped conds
                if isinstance(mc, comfy.conds.CONDNoiseShape) and tuple(mc.cond.shape[-2:]) == latent_hw:
                    mc = mc._copy_with(_stack_crops(mc.cond, tiles, batch))
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


def _step_index(sigma: torch.Tensor, model_options: dict) -> int:
    return step_of(sigma, model_options.get("transformer_options", {}).get("sample_sigmas"))


class _Run:
    """What one sampling run of the patched model holds: the kernel's TiledRun and the cond crops."""

    def __init__(self, settings: TileSettings, height: int, width: int, ratio: int):
        self.tiles = TiledRun(settings, height, width, ratio)
        self.conds = _TileConds()


# Latent-sized float32 tensors alive at the peak of a tiled step: per cond group the blend
# accumulator, the blended output and FSTD's two references (4 x 2 groups), plus the weight sum,
# the sampler's state and ComfyUI's copies around it (noise, latent, noised input, output: ~8).
TILED_STATE_TENSORS = 16


def check_tiled_memory(model, shape, run: _Run, settings: TileSettings) -> None:
    """Refuse, before the first model call, a tiled run whose memory lower bound exceeds what the
    device has: the latent-sized state (:data:`TILED_STATE_TENSORS`) plus ComfyUI's own activation
    estimate for one batch of ``tile_batch_size`` tiles with cond and uncond together. The message
    gives the estimate and the largest tile batch that fits (or says the image itself is too large)."""
    b, c, h, w = (int(v) for v in (shape[0], shape[1], shape[-2], shape[-1]))  # a frame axis holds one frame
    th, tw = run.tiles.planner.tile_h, run.tiles.planner.tile_w
    state = TILED_STATE_TENSORS * b * c * h * w * 4
    per_tile = frugal_activation_bytes(model, (2 * b, c, th, tw))
    need = state + per_tile * settings.tile_batch_size
    have, dev = available_memory(model)
    if need <= have:
        return
    gib, ratio = 1024**3, latent_downscale_ratio(model)
    fits = (have - state) // per_tile if per_tile else 0
    if fits >= 1:
        fix = f"set tile_batch_size to {int(min(fits, settings.tile_batch_size - 1))} or less"
    else:
        fix = (
            "use smaller tiles"
            if state < have
            else "generate a smaller image (the latent-sized buffers alone exceed the memory)"
        )
    raise ValueError(
        f"Tiled Diffusion (UltraRes): a {w * ratio}x{h * ratio} px image (batch {b}) in {tw * ratio}x{th * ratio} px "
        f"tiles, {settings.tile_batch_size} per call, needs at least {need / gib:.1f} GiB (tile batch activations "
        f"{per_tile * settings.tile_batch_size / gib:.1f} GiB by ComfyUI's own estimate + image-sized buffers "
        f"{state / gib:.1f} GiB), but {dev} has about {have / gib:.1f} GiB available: {fix}."
    )


class _TiledDiffusionPatch:
    """The two wrappers, sharing one config. The per-run state lives in the guider's model options
    for the length of the run (as ComfyUI's EasyCache keeps its own), so a nested or concurrent
    sampling run with the same patched model gets its own state and cannot clear this one."""

    def __init__(self, settings: TileSettings):
        self.settings = settings

    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        require_image_latent(noise, "Tiled Diffusion (UltraRes)", frame_axis=True)
        guider = executor.class_obj
        model = guider.model_patcher.model
        ratio = latent_downscale_ratio(model)
        H, W = noise.shape[-2:]
        run = _Run(self.settings, H, W, ratio)
        check_tiled_memory(guider.model_patcher, noise.shape, run, self.settings)
        tile_h, tile_w, _ = self.settings.latent_tile(ratio)
        if (tile_h * ratio, tile_w * ratio) != (self.settings.tile_height, self.settings.tile_width):
            log.warning(
                "UltraRes Tiled Diffusion: this model's latent pixel is %d px, so the %dx%d px tile is "
                "rounded down to %dx%d px.",
                ratio,
                self.settings.tile_width,
                self.settings.tile_height,
                tile_w * ratio,
                tile_h * ratio,
            )
        if run.tiles.clamped:
            log.warning(
                "UltraRes Tiled Diffusion: tile %dx%d px is larger than the %dx%d px image; "
                "clamped to the image size (one tile per axis there).",
                self.settings.tile_width,
                self.settings.tile_height,
                W * ratio,
                H * ratio,
            )
        original = guider.model_options
        guider.model_options = comfy.model_patcher.create_model_options_clone(original)
        guider.model_options.setdefault("transformer_options", {})[RUN_KEY] = run
        try:
            return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
        finally:
            guider.model_options = original  # the run, its references and hints go with it

    def calc_cond_batch(self, executor, model, conds, x_in, timestep, model_options):
        run: _Run | None = model_options.get("transformer_options", {}).get(RUN_KEY)
        framed = x_in.ndim == 5 and x_in.shape[2] == 1  # [B, C, 1, H, W]: Qwen-Image's single frame
        if run is None or not (x_in.ndim == 4 or framed) or tuple(x_in.shape[-2:]) != run.tiles.shape:
            # not inside our sampling run (e.g. a nested sampler on another latent): untiled
            return executor(model, conds, x_in, timestep, model_options)
        step = _step_index(timestep, model_options)
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


def _inputs():
    return [
        io.Model.Input(
            "model", tooltip="The diffusion model to sample in tiles (any model whose latent is a 2-D image)."
        ),
        io.Combo.Input(
            "method",
            options=list(METHOD_CHOICES),
            default="FSTD",
            tooltip="FSTD: non-overlapping tiles whose grid shifts every step (about the cost of the "
            "image itself). FSTD (full coverage): adds tiles for the strips the shift "
            "uncovers instead of reusing the previous prediction. MultiDiffusion / Mixture "
            "of Diffusers: overlapping tiles (uniform / Gaussian blend). SpotDiffusion: "
            "non-overlapping tiles on a randomly shifted latent.",
        ),
        io.Int.Input(
            "tile_width",
            default=512,
            min=MIN_TILE_PX,
            max=8192,
            step=8,
            tooltip="Tile width in pixels: the model's native size works best (512 for SD1.5, 1024 "
            "for SDXL). Multiple of 8. Larger than the image: clamped to it.",
        ),
        io.Int.Input(
            "tile_height",
            default=512,
            min=MIN_TILE_PX,
            max=8192,
            step=8,
            tooltip="Tile height in pixels (see tile_width).",
        ),
        io.Int.Input(
            "overlap",
            default=64,
            min=0,
            max=2048,
            step=8,
            tooltip="Overlap in pixels between neighbouring tiles, for MultiDiffusion and Mixture of "
            "Diffusers only (FSTD and SpotDiffusion tile without overlap).",
        ),
        io.Int.Input(
            "tile_batch_size",
            default=4,
            min=1,
            max=64,
            tooltip="Tiles evaluated per model call: higher is faster if memory allows.",
        ),
        io.Int.Input(
            "reset_interval",
            default=4,
            min=1,
            max=1000,
            tooltip="FSTD: every this many steps the grid offset returns to (0, 0). 1 makes every "
            "step a reset step: the grid never moves and seams come back. 4 is the official code's default.",
        ),
        seed_input("Seed of the per-step grid offsets (FSTD) or shifts (SpotDiffusion)."),
    ]


class UltraResTiledDiffusion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UltraResTiledDiffusion",
            **schema_extras(
                search_aliases=[
                    "tiled diffusion",
                    "upscale",
                    "high resolution",
                    "4k",
                    "fstd",
                    "multidiffusion",
                ]
            ),
            display_name="Tiled Diffusion (UltraRes)",
            category="UltraRes/tiling",
            description="Sample images larger than the model's native size in tiles. FSTD (Any-Size-Diffusion) "
            "tiles without overlap and shifts the grid every step so seams never settle: about "
            "half the work of overlapping tiles. Works with every sampler and scheduler, CFG, "
            "img2img and ControlNet; memory grows with the latent, not with the tile count.",
            inputs=_inputs(),
            outputs=[
                io.Model.Output(tooltip="The model, patched to denoise in tiles; connect it to any sampler.")
            ],
        )

    @classmethod
    def validate_inputs(
        cls, tile_width=None, tile_height=None, overlap=None, method=None, input_types=None
    ):  # None: linked or missing (or a JSON null, told apart by input_types)
        named = {"tile_width": tile_width, "tile_height": tile_height, "overlap": overlap, "method": method}
        if problem := links_and_nulls(cls, named, input_types):
            return problem
        # Inputs named here skip ComfyUI's own min/max/combo checks, so all of them are checked here.
        checked = check_inputs(
            cls, tile_width=tile_width, tile_height=tile_height, overlap=overlap, method=method
        )
        if isinstance(checked, str):
            return checked
        # check_inputs has applied the schema's ranges (tiles >= MIN_TILE_PX, overlap >= 0) and the
        # method choices; None is a linked value, checked when the node runs.
        tile_width, tile_height, overlap = checked.tile_width, checked.tile_height, checked.overlap
        for name, value in (("tile_width", tile_width), ("tile_height", tile_height)):
            if value is not None and value % 8:
                return f"{name}={value} is not a multiple of 8: use {value - value % 8} or {value - value % 8 + 8}."
        if method in ("MultiDiffusion", "Mixture of Diffusers") and all(
            isinstance(v, int) for v in (overlap, tile_width, tile_height)
        ):
            smallest = min(tile_width, tile_height)
            if overlap >= smallest:
                return f"overlap={overlap} must be smaller than the tile ({smallest} px): lower it, e.g. to {smallest // 8}."
        return True

    @classmethod
    def execute(
        cls, model, method, tile_width, tile_height, overlap, tile_batch_size, reset_interval, seed
    ) -> io.NodeOutput:
        verdict = cls.validate_inputs(
            tile_width=tile_width, tile_height=tile_height, overlap=overlap, method=method
        )
        if verdict is not True:
            raise ValueError(verdict)
        settings = TileSettings(
            method=METHOD_CHOICES[method],
            tile_width=tile_width,
            tile_height=tile_height,
            overlap=overlap,
            tile_batch_size=tile_batch_size,
            reset_interval=reset_interval,
            seed=seed,
        )
        patch = _TiledDiffusionPatch(settings)
        m = model.clone()
        for kind, fn in (
            (comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, patch.outer_sample),
            (comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, patch.calc_cond_batch),
        ):
            m.remove_wrappers_with_key(kind, WRAPPER_KEY)  # applying the node twice: the last one wins
            m.add_wrapper_with_key(kind, WRAPPER_KEY, fn)
        return io.NodeOutput(m)


# Native training resolution per ComfyUI model config class (pixels per side).
NATIVE_SIDE = {
    "SD15": 512,
    "SD20": 768,
    "SD21UnclipL": 768,
    "SD21UnclipH": 768,
    "SDXL": 1024,
    "SDXLRefiner": 1024,
    "SSD1B": 1024,
    "Segmind_Vega": 1024,
    "SD3": 1024,
    "Flux": 1024,
    "FluxSchnell": 1024,
    "AuraFlow": 1024,
    "PixArtSigma": 1024,
    "HunyuanDiT": 1024,
    "Lumina2": 1024,
}


def declared_native_pixels(model) -> int | None:
    """Pixel count a model states itself as ``native_size`` (on its model config, else on the base
    model): a side in pixels (``512``) or a ``(height, width)`` pair; None when it states none or
    something unusable (zero, negative, not a number), so the caller falls back to the table."""
    base = getattr(model, "model", model)
    for owner in (getattr(base, "model_config", None), base):
        size = getattr(owner, "native_size", None)
        if size is None or isinstance(size, bool):
            continue
        try:
            if isinstance(size, (int, float)):
                h = w = int(size)
            else:
                h, w = (int(v) for v in size)
        except (TypeError, ValueError):
            continue
        if h > 0 and w > 0:
            return h * w
    return None


def native_pixels(model) -> tuple[int, str]:
    """(pixel count, how it was found) for a MODEL: the ``native_size`` it declares if any (see
    :func:`declared_native_pixels`), else the table above, else 512x512."""
    declared = declared_native_pixels(model)
    if declared:
        return declared, "model config"
    config = getattr(getattr(model, "model", None), "model_config", None)
    name = type(config).__name__
    if name in NATIVE_SIDE:
        return NATIVE_SIDE[name] ** 2, name
    return 512 * 512, f"unknown model type {name}: assumed 512x512"


class UltraResAnySizePlan(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UltraResAnySizePlan",
            **schema_extras(search_aliases=["any size", "upscale", "high resolution", "4k", "aspect ratio"]),
            display_name="Any-Size Plan (UltraRes)",
            category="UltraRes/tiling",
            description="Any-Size-Diffusion's first stage: pick the size to generate at natively (the target's "
            "aspect ratio at about the model's native pixel count, multiples of 64) and how to reach "
            "the target exactly. Sample at first_width x first_height, upscale (aspect kept) to "
            "upscaled_width x upscaled_height, crop target_width x target_height at (crop_x, crop_y) "
            "with Latent Crop, then refine with Tiled Diffusion (FSTD) at the target size. The "
            "image is never stretched: the few pixels the 64-px rounding adds are cropped off.",
            inputs=[
                io.Int.Input(
                    "target_width",
                    default=2048,
                    min=64,
                    max=16384,
                    step=8,
                    tooltip="Final image width in pixels.",
                ),
                io.Int.Input(
                    "target_height",
                    default=2048,
                    min=64,
                    max=16384,
                    step=8,
                    tooltip="Final image height in pixels.",
                ),
                io.Int.Input(
                    "native_size",
                    default=0,
                    min=0,
                    max=4096,
                    step=64,
                    tooltip="The model's native side in pixels (512 for SD1.5, 1024 for SDXL); 0 = read it "
                    "from the connected model.",
                ),
                io.Model.Input(
                    "model",
                    optional=True,
                    tooltip="Optional: the model, to read its native resolution when native_size is 0.",
                ),
            ],
            outputs=[
                io.Int.Output(display_name="first_width", tooltip="Width to generate at (multiple of 64)."),
                io.Int.Output(display_name="first_height", tooltip="Height to generate at (multiple of 64)."),
                io.Float.Output(
                    display_name="upscale_by", tooltip="Factor from the first stage to the target."
                ),
                io.Int.Output(display_name="target_width", tooltip="The target width, passed through."),
                io.Int.Output(display_name="target_height", tooltip="The target height, passed through."),
                io.String.Output(display_name="summary", tooltip="The plan in words."),
                io.Int.Output(
                    display_name="upscaled_width",
                    tooltip="Width to upscale the first stage to (aspect kept, covers the target).",
                ),
                io.Int.Output(
                    display_name="upscaled_height",
                    tooltip="Height to upscale the first stage to (aspect kept, covers the target).",
                ),
                io.Int.Output(
                    display_name="crop_x", tooltip="Left edge of the centred target crop (Latent Crop x)."
                ),
                io.Int.Output(
                    display_name="crop_y", tooltip="Top edge of the centred target crop (Latent Crop y)."
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, target_width=None, target_height=None, native_size=None) -> bool | str:
        checked = check_inputs(
            cls, target_width=target_width, target_height=target_height, native_size=native_size
        )
        if isinstance(checked, str):
            return checked
        for name in ("target_width", "target_height"):
            value = checked.get(name)
            if value is not None and value % 8:
                return (
                    f"{name}={value} is not a multiple of 8 (latents are 1/8 of the image): use "
                    f"{value - value % 8} or {value - value % 8 + 8}."
                )
        return True

    @classmethod
    def execute(cls, target_width, target_height, native_size=0, model=None) -> io.NodeOutput:
        if native_size:
            pixels, source = native_size**2, "native_size input"
        elif model is not None:
            pixels, source = native_pixels(model)
        else:
            raise ValueError(
                "Any-Size Plan needs the model's native size: connect the model, or set native_size "
                "(512 for SD1.5, 1024 for SDXL)."
            )
        verdict = cls.validate_inputs(
            target_width=target_width, target_height=target_height, native_size=native_size
        )
        if verdict is not True:
            raise ValueError(verdict)
        w, h, up = plan_any_size(target_width, target_height, pixels)
        sw, sh, x, y = cover_and_crop(w, h, target_width, target_height)
        crop = (
            f", crop {target_width}x{target_height} at ({x}, {y})"
            if (sw, sh) != (target_width, target_height)
            else ""
        )
        summary = (
            f"generate {w}x{h}, upscale x{up:.3g} to {sw}x{sh}{crop}, refine with FSTD "
            f"(native {int(pixels**0.5)}^2 px from {source})"
        )
        return io.NodeOutput(w, h, up, target_width, target_height, summary, sw, sh, x, y)


NODES = [UltraResTiledDiffusion, UltraResAnySizePlan]
