"""Tiled Diffusion (UltraRes): FSTD and the overlap baselines as a MODEL -> MODEL patch, and the
Any-Size plan that picks the size of the first, native pass.

The schemas live here; the patch (ComfyUI's wrapper API around ``kernels.tiled_diffusion``'s tiled run, no
monkey-patching) is ``_tile_patch``, the conditioning cut to tiles ``_tile_conds``. Stock samplers,
schedulers, CFG, img2img (denoise < 1) and ControlNet work unchanged.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..kernels.tiled_diffusion import (
    METHOD_LABELS,
    MIN_TILE_PX,
    TileSettings,
    cover_and_crop,
    pixel_count,
    plan_any_size,
    tile_size_problem,
)
from ._common import seed_input
from ._compat import schema_extras
from ._inputs import CheckedNode
from ._tile_patch import TiledDiffusionPatch

METHOD_CHOICES = METHOD_LABELS  # combo option -> kernel method


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


class UltraResTiledDiffusion(CheckedNode):
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
    def rules(cls, v) -> bool | str:
        # the schema's ranges (tiles >= MIN_TILE_PX, overlap >= 0) and the method choices are checked;
        # None is a linked value, checked when the node runs
        return tile_size_problem(v.tile_width, v.tile_height, v.overlap, METHOD_CHOICES.get(v.method)) or True

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        v = cls.checked(inputs)
        names = ("tile_width", "tile_height", "overlap", "tile_batch_size", "reset_interval", "seed")
        settings = TileSettings.from_label(v.method, **{k: v[k] for k in names})
        return io.NodeOutput(TiledDiffusionPatch(settings).apply(v.model))


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
        pixels = pixel_count(getattr(owner, "native_size", None))
        if pixels:
            return pixels
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


class UltraResAnySizePlan(CheckedNode):
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
    def rules(cls, v) -> bool | str:
        for name in ("target_width", "target_height"):
            value = v[name]
            if value is not None and value % 8:
                return (
                    f"{name}={value} is not a multiple of 8 (latents are 1/8 of the image): use "
                    f"{value - value % 8} or {value - value % 8 + 8}."
                )
        return True

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        v = cls.checked(inputs)
        target_width, target_height = v.target_width, v.target_height
        if v.native_size:
            pixels, source = v.native_size**2, "native_size input"
        elif v.model is not None:
            pixels, source = native_pixels(v.model)
        else:
            raise ValueError(
                "Any-Size Plan needs the model's native size: connect the model, or set native_size "
                "(512 for SD1.5, 1024 for SDXL)."
            )
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
