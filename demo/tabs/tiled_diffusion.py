"""Any size (FSTD) tab: any width and height with ``UltraResTiledDiffusion``; the tile grid of a
chosen step is drawn on the result (the kernel's own planner, built from the node's settings)."""

from __future__ import annotations

import time

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw
from ultrares.kernels.tiled_diffusion import StepPlan, TiledRun, TileSettings

from .. import defaults as D
from .. import session as S
from . import _ui

TITLE, ID = "Any size (FSTD)", "fstd"
NODE = "UltraResTiledDiffusion"
# cfg 3: the embedded model's guidance; overlap 16 px: below the embedded model's 64 px tiles (the node's
# 64 suits 512 px tiles); the seed is picked by
# scripts/pick_demo_seeds.py (demo/defaults.json)
DEFAULTS = D.of(
    "fstd",
    dict(
        label="Smileys & Emotion", width=192, height=128, method="FSTD", overlap=16, steps=20, seed=0, cfg=3.0
    ),
)
DEMO_CFG, DEMO_OVERLAP = DEFAULTS["cfg"], DEFAULTS["overlap"]


def tiled_methods() -> list[str]:
    return S.node_options(NODE, "method")


def tile_plan(settings: dict, latent: dict, ratio: int, step: int) -> StepPlan:
    """The tiles UltraResTiledDiffusion evaluates at ``step`` on ``latent`` (``ratio`` pixels per
    latent pixel): the kernel's run, built from the node's settings in pixels."""
    kernel = TileSettings.from_label(**settings)
    h, w = latent["samples"].shape[-2:]
    return TiledRun(kernel, int(h), int(w), ratio).planner.plan(int(step))


def draw_tiles(image: Image.Image, plan: StepPlan, ratio: int) -> Image.Image:
    """Outline each tile of a plan (latent boxes, ``ratio`` image pixels per latent pixel) on the
    image; strips no tile covers are shaded red."""
    base = image.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    if plan.uncovered is not None:
        mask = plan.uncovered.cpu().numpy().astype(np.uint8) * 90
        red = Image.new("RGBA", (mask.shape[1], mask.shape[0]), (255, 0, 0, 255))
        red.putalpha(Image.fromarray(mask))
        layer.alpha_composite(red.resize(base.size, Image.NEAREST))
    colours = [(0, 160, 255, 255), (255, 140, 0, 255), (0, 200, 90, 255), (200, 0, 200, 255)]
    dy, dx = plan.roll
    for i, tl in enumerate(plan.tiles):
        y, x = (tl.y - dy) * ratio, (tl.x - dx) * ratio  # SpotDiffusion tiles live in the rolled latent
        draw.rectangle(
            [x, y, x + tl.w * ratio - 1, y + tl.h * ratio - 1], outline=colours[i % len(colours)], width=2
        )
    return Image.alpha_composite(base, layer).convert("RGB")


@S.exclusive
def any_size_stages(
    source: str | None,
    label: str | None = None,
    width: int = DEFAULTS["width"],
    height: int = DEFAULTS["height"],
    method: str = DEFAULTS["method"],
    tile: int = 0,
    overlap: int = DEMO_OVERLAP,
    steps: int = DEFAULTS["steps"],
    seed: int = DEFAULTS["seed"],
    cfg: float = DEMO_CFG,
    show_step: int = 1,
    compare: bool = False,
    prompt: str = "",
    report: S.Report | None = None,
):
    """Sample at any width x height with UltraResTiledDiffusion (tiles at the model's native size
    unless ``tile`` is set). Yields (image, the tile grid of ``show_step`` drawn on it, the untiled
    image when ``compare`` or None, description): once after the tiled run, again after the
    untiled one. Every value is checked before any work: out-of-range values are refused with a
    message naming the control (nothing is clamped)."""
    bundle = S.load(source)
    width, height = (
        S.check(name, value, S.size_range(bundle.kind, key), S.size_range(bundle.kind, key).step or 1)
        for name, key, value in (("Width (px)", "width", width), ("Height (px)", "height", height))
    )
    steps = S.check("Steps", steps, S.input_range("KSampler", "steps"))
    seed = S.check("Seed", seed, S.input_range(NODE, "seed"))
    tile = int(tile) or bundle.native
    if method not in tiled_methods():
        raise S.UserError(f"Tiling method {method!r} is not one of {tiled_methods()}.")
    show_step = S.check(
        f"Show the tile grid of step (0..{steps - 1} for {steps} steps)",
        show_step,
        S.InputRange("INT", 0, steps - 1, 1, 1),
    )
    settings = S.tile_settings(method, tile, overlap, seed)
    S.validate(NODE, **settings)
    (tiled,) = S.run_node(NODE, model=bundle.model, **settings)
    pos, neg = S.conditioning(bundle, label, prompt)
    latent = S.empty_latent(bundle, width, height)
    ratio = width // latent["samples"].shape[-1]  # pixels per latent pixel of this model
    t0 = time.perf_counter()
    with S.tracked(report, f"{method}: {width}x{height} in {tile}px tiles"):
        out = S.sample(bundle, tiled, pos, neg, latent, steps, seed, cfg)
    t_tiled = time.perf_counter() - t0
    image = S.enlarge(S.to_pil(S.decode(bundle, out)))
    scale = image.width // width
    plan = tile_plan(settings, latent, ratio, show_step)
    grid = draw_tiles(image, plan, ratio * scale)
    info = (
        f"{width}x{height} px with {method} tiles of {tile} px, {steps} steps, seed {seed}: {t_tiled:.1f} s. "
        f"Step {show_step}: {len(plan.tiles)} tiles, grid offset {tuple(v * ratio for v in plan.offset)} px, "
        f"evaluated area {plan.tile_area_ratio:.2f}x the image"
        + (", red = strips filled from the previous step's prediction" if plan.uncovered is not None else "")
        + "."
    )
    if not compare:
        yield image, grid, None, info
        return
    yield image, grid, None, info + " Sampling without tiling..."
    t0 = time.perf_counter()
    with S.tracked(report, f"untiled: {width}x{height}"):
        plain_out = S.sample(bundle, bundle.model, pos, neg, latent, steps, seed, cfg)
    plain = S.enlarge(S.to_pil(S.decode(bundle, plain_out)))
    info += f" Untiled (same seed): {time.perf_counter() - t0:.1f} s."
    yield image, grid, plain, info


def any_size(*args, **kwargs) -> tuple[Image.Image, Image.Image, Image.Image | None, str]:
    """:func:`any_size_stages`' final outputs: (image, tile grid, untiled image or None, description)."""
    return S.last(any_size_stages(*args, **kwargs))


def ui_any_size(
    source,
    label,
    prompt,
    width,
    height,
    method,
    tile,
    overlap,
    steps,
    seed,
    cfg,
    show_step,
    compare,
    progress=gr.Progress(),
):
    yield from _ui.stream(
        any_size_stages,
        progress,
        4,
        ID,
        source,
        label,
        width,
        height,
        method,
        int(tile or 0),
        int(overlap),
        int(steps),
        seed,
        float(cfg),
        int(show_step),
        bool(compare),
        prompt=prompt or "",
    )


def step_range(steps):
    """The grid-step slider follows the steps: 0..steps-1 (what the run accepts)."""
    last = max(0, int(steps or 1) - 1)
    return gr.update(maximum=last, info=f"0..{last} for {int(steps or 1)} steps")


def build(shared: _ui.Shared) -> None:
    gr.Markdown(
        "Any width and height with `UltraResTiledDiffusion`: the model sees tiles of its native size; "
        "FSTD shifts a non-overlapping grid every step so seams never settle. The tile grid of the "
        "chosen step is drawn on the result."
    )
    time_box = _ui.time_note(ID)
    source, label, prompt = _ui.model_controls(shared, DEFAULTS["label"])
    size = S.size_range(S.source_kind(shared.default), "width")  # the default model's sizes
    tile_rng = S.input_range(NODE, "tile_width")
    steps_rng = S.input_range("KSampler", "steps")
    with gr.Row():
        width = _ui.number(
            size,
            "Width (px)",
            elem_id="fstd-width",
            value=DEFAULTS["width"],
            info=f"{size.min:g}..{size.max:g}, multiple of {size.step:g}",
        )
        height = _ui.number(
            size,
            "Height (px)",
            value=DEFAULTS["height"],
            info=f"{size.min:g}..{size.max:g}, multiple of {size.step:g}",
        )
        method = _ui.dropdown(tiled_methods(), "Tiling method", DEFAULTS["method"])
    with gr.Row():
        tile = gr.Number(
            value=0,
            precision=0,
            label="Tile size (px, 0 = model's native)",
            minimum=0,
            maximum=tile_rng.max,
            step=tile_rng.step,
        )
        overlap = _ui.slider(
            S.input_range(NODE, "overlap"), "Overlap (MultiDiffusion / Mixture)", value=DEMO_OVERLAP
        )
        steps = _ui.slider(steps_rng, "Steps", value=DEFAULTS["steps"], elem_id="fstd-steps")
        seed = _ui.number(S.input_range(NODE, "seed"), "Seed", value=DEFAULTS["seed"])
        cfg = _ui.slider(S.input_range("KSampler", "cfg"), "CFG", value=DEMO_CFG)
    with gr.Row():
        show_step = _ui.slider(
            S.InputRange("INT", 0, DEFAULTS["steps"] - 1, 1, 1),
            "Show the tile grid of step",
            elem_id="fstd-show-step",
            info=f"0..{DEFAULTS['steps'] - 1} for {DEFAULTS['steps']} steps",
        )
        compare = gr.Checkbox(value=False, label="Also sample without tiling (same seed)")
    steps.change(step_range, steps, show_step, queue=False, api_visibility="undocumented")
    run, stop = _ui.buttons("Generate any size")
    with gr.Row():
        out = gr.Image(
            label="Result", type="pil", interactive=False, format="png", height=320, elem_id="fstd-output"
        )
        grid = gr.Image(
            label="Tile grid", type="pil", interactive=False, format="png", height=320, elem_id="fstd-grid"
        )
        plain = gr.Image(label="Untiled", type="pil", interactive=False, format="png", height=320)
    info = gr.Markdown(elem_id="fstd-info")
    _ui.wire(
        run,
        stop,
        ui_any_size,
        [source, label, prompt, width, height, method, tile, overlap, steps, seed, cfg, show_step, compare],
        [out, grid, plain, info],
        "any_size",
        time_box,
    )
    gr.Examples(
        [[256, 96, "FSTD", 1], [192, 192, "MultiDiffusion", 2], [320, 64, "SpotDiffusion", 3]],
        [width, height, method, show_step],
        label="Examples",
    )
