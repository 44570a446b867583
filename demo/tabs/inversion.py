"""DDIM inversion tab: ``UltraResDDIMInvert`` walks an image up the model's noise schedule,
``UltraResDDIMGenerate`` walks the noise back; the PSNR of the reconstruction is reported."""

from __future__ import annotations

import gradio as gr
from PIL import Image
from ultrares.kernels.inversion import psnr

from .. import defaults as D
from .. import session as S
from . import _ui

TITLE, ID = "DDIM inversion", "inversion"
INVERT = "UltraResDDIMInvert"
INPUT_STEPS = 20  # sampling the input when none is uploaded
# the tab opens on an example image with the examples' steps and level (a level the model's schedule
# resolves: the reconstruction is then close to exact); 25 steps keep the default run short on a CPU
DEFAULTS = D.of("inversion", dict(example="apple.png", steps=25, level=0.6, seed=0))


def inversion_schedulers() -> list[str]:
    return S.node_options(INVERT, "scheduler")


def check_level(bundle: S.Bundle, steps: int, level: float, scheduler: str) -> None:
    """Refuse, before any work, a level the model's noise schedule cannot resolve with ``steps`` DDIM
    steps (two steps would land on the same noise level), naming this tab's controls and a level
    that works."""
    from ultrares.kernels import inversion as kinv

    def resolves(lv: float) -> bool:
        total = kinv.schedule_steps_for_level(steps, lv)
        (full,) = S.run_node(
            "BasicScheduler", model=bundle.model, scheduler=scheduler, steps=total, denoise=1.0
        )
        sigmas = kinv.level_schedule(full.float().cpu(), steps, lv)
        return bool((sigmas[:-1] > sigmas[1:]).all())

    if resolves(level):
        return
    ok = next((lv / 20 for lv in range(1, 21) if lv / 20 > level and resolves(lv / 20)), None)
    raise S.UserError(
        f"Level (fraction of the schedule) {level:g} is too low for {steps} DDIM steps: the model's noise "
        "schedule has no distinct noise level for every step that close to the clean image. "
        + (f"Raise Level to {ok:g} or more, or lower DDIM steps" if ok else "Lower DDIM steps")
        + f" (the examples use level {DEFAULTS['level']:g} with {DEFAULTS['steps']} steps)."
    )


@S.exclusive
def invert_stages(
    source: str | None,
    label: str | None = None,
    image=None,
    steps: int | None = None,
    level: float | None = None,
    scheduler: str | None = None,
    seed: int = 0,
    prompt: str = "",
    report: S.Report | None = None,
):
    """DDIM-invert an image (uploaded, fitted to the model's native size; or generated) and
    reconstruct it (``steps``, ``level``, ``scheduler`` None: the node's defaults). Yields (input,
    inverted noise or None, reconstruction or None, text) after each stage: the input, the noise,
    then the reconstruction with its PSNR."""
    try:
        level = None if level is None else float(level)
    except (TypeError, ValueError):
        raise S.UserError(f"Level (fraction of the schedule) must be a number, got {level!r}.") from None
    if level is not None and level <= 0:
        raise S.UserError(
            f"Level (fraction of the schedule) {level:g} inverts nothing: choose a level above 0 "
            f"(the examples use {DEFAULTS['level']:g})."
        )
    settings = {
        k: v for k, v in S.node_defaults(INVERT).items() if k in ("steps", "level", "scheduler", "cfg")
    }
    chosen = dict(steps=steps, level=level, scheduler=scheduler)
    settings.update({k: v for k, v in chosen.items() if v is not None}, cfg=1.0)  # cfg 1: the exact inversion
    S.validate(INVERT, **settings)  # the node's ranges (level: a fraction of the schedule) and choices
    steps, level, scheduler = int(settings["steps"]), float(settings["level"]), settings["scheduler"]
    settings.update(steps=steps, level=level)
    seed = S.check("Seed (generated input)", seed, S.input_range("KSampler", "seed"))
    bundle = S.load(source)
    check_level(bundle, steps, level, scheduler)
    pos, neg = S.conditioning(bundle, label, prompt)
    if image is None:
        latent = S.empty_latent(bundle, bundle.native, bundle.native)
        with S.tracked(report, "generating an input"):
            clean = S.sample(
                bundle,
                bundle.model,
                pos,
                neg,
                latent,
                INPUT_STEPS,
                seed,
                1.0 if bundle.kind == "hdit" else 6.0,
            )
        pixels = S.decode(bundle, clean)
    else:
        pixels = S.fit_to(S.from_pil(image), bundle.native, bundle.native)
    shown = S.enlarge(S.to_pil(pixels))
    yield shown, None, None, f"Inverting ({steps} DDIM steps, level {level:g})..."
    latent = S.encode(bundle, pixels)
    opts = dict(settings, positive=pos, negative=neg)
    with S.tracked(report, f"inverting ({steps} DDIM steps)"):
        (noise,) = S.run_node(INVERT, model=bundle.model, latent=latent, refine_iters=0, **opts)
    noise_view = S.enlarge(S.latent_view(noise))
    yield shown, noise_view, None, f"Inverted; reconstructing ({steps} DDIM steps)..."
    with S.tracked(report, f"reconstructing ({steps} DDIM steps)"):
        (rec,) = S.run_node("UltraResDDIMGenerate", model=bundle.model, noise=noise, **opts)
    rec_pixels = S.decode(bundle, rec)
    value = psnr(rec_pixels, pixels)
    text = (
        f"PSNR(reconstruction, input) = {value:.2f} dB ({steps} steps, level {level}, {scheduler}); "
        f"noise std {float(noise['samples'].std()):.2f}."
    )
    yield shown, noise_view, S.enlarge(S.to_pil(rec_pixels)), text


def invert(*args, **kwargs) -> tuple[Image.Image, Image.Image, Image.Image, str]:
    """:func:`invert_stages`' final outputs: (input, inverted noise, reconstruction, PSNR text)."""
    return S.last(invert_stages(*args, **kwargs))


def ui_invert(source, label, prompt, image, steps, level, scheduler, seed, progress=gr.Progress()):
    yield from _ui.stream(
        invert_stages,
        progress,
        4,
        ID,
        source,
        label,
        image,
        int(steps),
        level,
        scheduler,
        seed,
        prompt=prompt or "",
    )


def build(shared: _ui.Shared) -> None:
    gr.Markdown(
        "`UltraResDDIMInvert` walks an image up the model's noise schedule; `UltraResDDIMGenerate` "
        "walks the noise back. The PSNR of the reconstruction measures how exact the inversion is "
        "(more steps, lower level: higher PSNR, as long as the schedule has a distinct noise level for "
        "every step). Upload an image or clear it to generate one."
    )
    time_box = _ui.time_note(ID)
    source, label, prompt = _ui.model_controls(shared)
    image = gr.Image(
        value=D.example(DEFAULTS["example"]),
        label="Input (optional)",
        elem_id="inversion-input",
        type="pil",
        sources=["upload", "clipboard"],
        image_mode="RGBA",  # keep the transparency: the handler lays it on the right background
        height=256,
    )
    with gr.Row():
        steps = _ui.slider(S.input_range(INVERT, "steps"), "DDIM steps", value=DEFAULTS["steps"])
        level = _ui.slider(
            S.input_range(INVERT, "level"),
            "Level (fraction of the schedule)",
            value=DEFAULTS["level"],
            elem_id="inversion-level",
        )
        scheduler = _ui.dropdown(
            inversion_schedulers(), "Scheduler", S.node_defaults(INVERT).get("scheduler")
        )
        seed = _ui.number(S.input_range("KSampler", "seed"), "Seed (generated input)", value=DEFAULTS["seed"])
    run, stop = _ui.buttons("Invert and reconstruct")
    with gr.Row():
        shown = gr.Image(label="Input", type="pil", interactive=False, format="png")
        noise = gr.Image(label="Inverted noise", type="pil", interactive=False, format="png")
        rec = gr.Image(
            label="Reconstruction", type="pil", interactive=False, format="png", elem_id="inversion-output"
        )
    info = gr.Markdown(elem_id="inversion-info")
    _ui.wire(
        run,
        stop,
        ui_invert,
        [source, label, prompt, image, steps, level, scheduler, seed],
        [shown, noise, rec, info],
        "invert",
        time_box,
    )
    if shared.examples:
        gr.Examples(
            [[p, DEFAULTS["steps"], DEFAULTS["level"]] for p in shared.examples],
            [image, steps, level],
            label="Examples",
        )
