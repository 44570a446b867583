"""Emoji 64 -> 1024 tab, the demo's first: the graph of ``workflows/relay_emoji_1024.json``.

Stage one: the class-conditional 64 px HDiT (``UltraResHDiTLoader`` + ``UltraResHDiTClass`` +
``KSampler``). Stage two: the relay-trained 256 px HDiT relays it x4 (``UltraResRelayUpscale`` with
relay_settings "model": the blurring diffusion it was trained with). Stage three: the same relay
model patched with ``UltraResTiledDiffusion`` (FSTD, 256 px tiles, no overlap) relays 256 -> 1024.
The tile edges of the last steps are drawn on the result and scored with
``kernels.quality.seam_score`` (gradient energy on the edges vs the interior)."""

from __future__ import annotations

import time

import gradio as gr
import torch
from PIL import Image, ImageDraw
from ultrares.kernels.hdit_format import trained_relay

from .. import defaults as D
from .. import session as S
from . import _ui

TITLE, ID = "Emoji 64 → 1024 (relay + FSTD)", "relay_emoji"
BASE = "ultrares-emoji64.safetensors"  # class-conditional, 64 px
RELAY_MODEL = "ultrares-emoji-relay256.safetensors"  # relay-trained stage two, 64 -> 256, unconditional
NODE = "UltraResRelayUpscale"
BASE_STEPS, BASE_CFG = 30, 2.0  # stage one: DPM++ 2M / Karras, as the figures in the README were sampled
TILE = 256  # px: the relay model's native size
SIZES = (256, 1024)
LAST_STEPS = 3  # the steps whose tile edges are drawn and scored (their seams would survive into the output)
# the workflow's own class and seed (scripts/pick_demo_seeds.py scores its 64 px stage for the record)
DEFAULTS = D.of("relay_emoji", dict(label="Smileys & Emotion", seed=4, size=1024))
DEMO_SEED = DEFAULTS["seed"]
GRID_COLOURS = [(0, 160, 255), (255, 140, 0), (200, 0, 200), (0, 200, 90)]


def sources() -> list[str]:
    return [S.HDIT_PREFIX + BASE, S.HDIT_PREFIX + RELAY_MODEL]


def models_missing() -> list[str]:
    have = S.hdit_files()
    return [f for f in (BASE, RELAY_MODEL) if f not in have]


def relay_inputs(relay: S.Bundle, seed: int) -> dict:
    """UltraResRelayUpscale's inputs for the relay model: its trained schedule (steps, truncation
    sigma, rho) and x{patch} factor, relay_settings "model" (the trained blur / noise settings; the
    same values are typed into the widgets, as in the workflow), cfg 1 (unconditional model)."""
    trained = trained_relay(relay.model)
    if trained is None:
        raise S.UserError(
            f"{RELAY_MODEL} has no relay settings in its metadata: it is not a relay-trained model. "
            "Run `make embedded-models` to rebuild it."
        )
    t = trained.settings
    inputs = S.node_defaults(NODE)
    inputs.update(
        factor=t.patch,
        steps=trained.steps,
        truncation_sigma=trained.truncation_sigma,
        rho=trained.rho,
        cfg=1.0,
        seed=int(seed),
        relay_settings="model",
        blur_sigma_max=t.blur_sigma_max,
        prob_length=t.prob_length,
        s_block=t.s_block,
        s_noise=t.s_noise,
    )
    return inputs


def last_steps(relay: S.Bundle, inputs: dict) -> range:
    """The step keys of the relay run's last :data:`LAST_STEPS` steps (its truncated schedule, read
    from UltraResRelaySigmas with the same settings)."""
    (sigmas,) = S.run_node(
        "UltraResRelaySigmas",
        model=relay.model,
        steps=inputs["steps"],
        truncation_sigma=inputs["truncation_sigma"],
        rho=inputs["rho"],
    )
    n = len(sigmas) - 1
    return range(max(0, n - LAST_STEPS), n)


def draw_edges(image: Image.Image, edges: list[tuple[list[int], list[int]]]) -> Image.Image:
    """Draw each step's tile edges (columns, rows in image pixels) in its own colour."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    for i, (xs, ys) in enumerate(edges):
        colour = GRID_COLOURS[i % len(GRID_COLOURS)]
        for x in xs:
            draw.line([(x, 0), (x, out.height - 1)], fill=colour, width=2)
        for y in ys:
            draw.line([(0, y), (out.width - 1, y)], fill=colour, width=2)
    return out


def chw(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [B, H, W, C] -> [B, C, H, W] float in [0, 1] (what the seam score takes)."""
    return image[..., :3].permute(0, 3, 1, 2).float().clamp(0, 1)


@S.exclusive
def relay_emoji_stages(
    label: str | None = None, seed: int = 0, size: int = 1024, report: S.Report | None = None
):
    """Class -> 64 px -> relay to 256 px (-> FSTD relay to 1024 px when ``size`` is 1024), yielding
    the outputs after each stage: (64 px, 256 px or None, final 1024 px or None, the 1024 px image
    with the last steps' tile edges drawn or None, description); the smaller stages are enlarged
    (nearest) to the final size."""
    from ultrares.kernels.quality import seam_score, tile_boundaries
    from ultrares.kernels.tiled_diffusion import TiledRun, TileSettings

    seed = S.check("Seed", seed, S.input_range("KSampler", "seed"))
    if int(size) not in SIZES:
        raise S.UserError(f"Final size (px) {size!r} must be one of {list(SIZES)}.")
    size = int(size)
    if missing := models_missing():
        raise S.UserError(
            f"the emoji models {missing} are not in models/hdit: run `make embedded-models` to build "
            "them, then restart the demo."
        )
    base, relay = S.load_all(sources())
    pos, neg = S.conditioning(base, label)
    relay_pos, _ = S.run_node(
        "UltraResHDiTClass", class_id=0, unconditional=True
    )  # the relay model is unconditional
    inputs = relay_inputs(relay, seed)
    S.validate(NODE, **inputs)
    times = []
    t0 = time.perf_counter()
    with S.tracked(report, f"1/{2 if size == 256 else 3}: {label or 'class'} at 64 px"):
        low = S.sample(
            base,
            base.model,
            pos,
            neg,
            S.empty_latent(base, base.native, base.native),
            BASE_STEPS,
            seed,
            BASE_CFG,
        )
    times.append(time.perf_counter() - t0)
    view = S.to_pil(S.decode(base, low)).resize((size, size), Image.NEAREST)
    yield (
        view,
        None,
        None,
        None,
        f"**{label}**, seed {seed}: 64 px ready ({times[0]:.0f} s); relaying to 256 px...",
    )
    t0 = time.perf_counter()
    with S.tracked(report, f"2/{2 if size == 256 else 3}: relay 64 -> 256 px"):
        (mid,) = S.run_node(NODE, model=relay.model, positive=relay_pos, latent=low, **inputs)
    times.append(time.perf_counter() - t0)
    images = [S.decode(base, low), S.decode(relay, mid)]
    final = grid = None
    t = inputs
    info = (
        f"**{label}**, seed {seed}. 64 px: {BASE_STEPS} steps DPM++ 2M, cfg {BASE_CFG} ({times[0]:.0f} s). "
        f"Relay x{t['factor']} to 256 px with the model's trained blur (B_max {t['blur_sigma_max']:g}, "
        f"L {t['prob_length']:g}, s_block {t['s_block']:g}, s_noise {t['s_noise']:g}; {t['steps']}-level grid "
        f"truncated at sigma {t['truncation_sigma']:g}) ({times[1]:.0f} s)."
    )
    if size == 1024:
        mid_view = S.to_pil(images[1]).resize((size, size), Image.NEAREST)
        yield view, mid_view, None, None, info + " Relaying to 1024 px in tiles..."
        settings = S.tile_settings("FSTD", TILE, 0, seed)
        S.validate("UltraResTiledDiffusion", **settings)
        (tiled,) = S.run_node("UltraResTiledDiffusion", model=relay.model, **settings)
        t0 = time.perf_counter()
        with S.tracked(report, "3/3: FSTD relay 256 -> 1024 px in 256 px tiles"):
            (high,) = S.run_node(NODE, model=tiled, positive=relay_pos, latent=mid, **inputs)
        times.append(time.perf_counter() - t0)
        images.append(S.decode(relay, high))
        run = TiledRun(TileSettings.from_label(**settings), size, size, 1)
        steps = last_steps(relay, inputs)
        edges = [tile_boundaries(run, [s]) for s in steps]
        xs, ys = tile_boundaries(run, steps)
        score = seam_score(chw(images[2]), xs, ys)
        # the same lines on the 256 px stage enlarged (bicubic): what the content alone scores there
        before = torch.nn.functional.interpolate(chw(images[1]), size=(size, size), mode="bicubic").clamp(
            0, 1
        )
        content = seam_score(before, xs, ys)
        final = S.to_pil(images[2])
        grid = draw_edges(final, edges)
        info += (
            f" FSTD relay to 1024 px in {TILE} px tiles ({times[2]:.0f} s). **Seam score {score:.3f}** on the "
            f"tile edges of the last {len(steps)} steps (1.0 = the edges look like the rest of the image; "
            f"the 256 px stage enlarged scores {content:.3f} on the same lines)."
        )
    views = [S.to_pil(im).resize((size, size), Image.NEAREST) for im in images[:2]]
    info += f" Total {sum(times):.0f} s on {S.runtime().device}."
    yield views[0], views[1], final, grid, info


def relay_emoji(label: str | None = None, seed: int = 0, size: int = 1024, report: S.Report | None = None):
    """:func:`relay_emoji_stages`' final outputs."""
    return S.last(relay_emoji_stages(label, seed, size, report=report))


def ui_relay_emoji(label, seed, size, progress=gr.Progress()):
    yield from _ui.stream(relay_emoji_stages, progress, 5, ID, label, seed, int(size))


def show_grid(on: bool):
    """The grid toggle: the plain 1024 px result or the one with the tile edges."""
    return gr.update(visible=not on), gr.update(visible=bool(on))


def build(shared: _ui.Shared) -> None:
    gr.Markdown(
        "The strongest result first: a class-conditional **64 px** emoji, relayed to **256 px** by a model "
        "trained with Relay Diffusion's blurring objective, then relayed again to **1024 px** by the same model "
        "in shifting 256 px tiles (FSTD). The graph is `workflows/relay_emoji_1024.json`. Each stage shows as "
        "soon as it is done."
    )
    time_box = _ui.time_note(ID)
    missing = models_missing()
    if missing:
        gr.Markdown(
            f"**The emoji models {missing} are missing.** Run `make embedded-models` to build them.",
            elem_id="relay-emoji-missing",
        )
    labels = S.labels_of(sources()[0]) if BASE not in missing else []
    with gr.Row():
        label = gr.Dropdown(
            labels,
            value=DEFAULTS["label"] if DEFAULTS["label"] in labels else (labels[0] if labels else None),
            label="Class",
            info="What the 64 px model draws ('unconditional' = any).",
        )
        seed = _ui.number(S.input_range("KSampler", "seed"), "Seed", value=DEMO_SEED)
        size = gr.Radio(
            list(SIZES), value=DEFAULTS["size"], label="Final size (px)", elem_id="relay-emoji-size"
        )
        grid_on = gr.Checkbox(value=False, label="Show the FSTD tile edges of the last steps")
    run, stop = _ui.buttons("Run")
    with gr.Row():
        low = gr.Image(label="64 px (nearest)", type="pil", interactive=False, format="png")
        mid = gr.Image(label="256 px relay (nearest)", type="pil", interactive=False, format="png")
        final = gr.Image(
            label="1024 px FSTD relay",
            type="pil",
            interactive=False,
            format="png",
            elem_id="relay-emoji-final",
        )
        grid = gr.Image(
            label="1024 px with the tile edges",
            type="pil",
            interactive=False,
            format="png",
            visible=False,
            elem_id="relay-emoji-grid",
        )
    info = gr.Markdown(elem_id="relay-emoji-info")
    grid_on.change(show_grid, grid_on, [final, grid], queue=False, api_visibility="undocumented")
    _ui.wire(
        run, stop, ui_relay_emoji, [label, seed, size], [low, mid, final, grid, info], "relay_emoji", time_box
    )
