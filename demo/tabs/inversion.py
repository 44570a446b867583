"""DDIM inversion tab: ``UltraResDDIMInvert`` walks an image up the model's noise schedule,
``UltraResDDIMGenerate`` walks the noise back; the PSNR of the reconstruction is reported."""

from __future__ import annotations

import gradio as gr
from PIL import Image
from ultrares.kernels.inversion import psnr

from .. import session as S
from . import _ui

TITLE, ID = "DDIM inversion", "inversion"
INVERT = "UltraResDDIMInvert"
INPUT_STEPS = 20  # sampling the input when none is uploaded


def inversion_schedulers() -> list[str]:
    return S.node_options(INVERT, "scheduler")


@S.exclusive
def invert(
    source: str | None,
    label: str | None = None,
    image=None,
    steps: int | None = None,
    level: float | None = None,
    scheduler: str | None = None,
    seed: int = 0,
    prompt: str = "",
    report: S.Report | None = None,
) -> tuple[Image.Image, Image.Image, Image.Image, str]:
    """DDIM-invert an image (uploaded, fitted to the model's native size; or generated) and
    reconstruct it (``steps``, ``level``, ``scheduler`` None: the node's defaults); returns
    (input, inverted noise, reconstruction, PSNR text)."""
    settings = {
        k: v for k, v in S.node_defaults(INVERT).items() if k in ("steps", "level", "scheduler", "cfg")
    }
    chosen = dict(steps=steps, level=level, scheduler=scheduler)
    settings.update({k: v for k, v in chosen.items() if v is not None}, cfg=1.0)  # cfg 1: the exact inversion
    S.validate(INVERT, **settings)  # the node's ranges (level: a fraction of the schedule) and choices
    steps, level, scheduler = int(settings["steps"]), float(settings["level"]), settings["scheduler"]
    settings.update(steps=steps, level=level)
    bundle = S.load(source)
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
    latent = S.encode(bundle, pixels)
    opts = dict(settings, positive=pos, negative=neg)
    with S.tracked(report, f"inverting ({steps} DDIM steps)"):
        (noise,) = S.run_node(INVERT, model=bundle.model, latent=latent, refine_iters=0, **opts)
    with S.tracked(report, f"reconstructing ({steps} DDIM steps)"):
        (rec,) = S.run_node("UltraResDDIMGenerate", model=bundle.model, noise=noise, **opts)
    rec_pixels = S.decode(bundle, rec)
    value = psnr(rec_pixels, pixels)
    text = (
        f"PSNR(reconstruction, input) = {value:.2f} dB ({steps} steps, level {level}, {scheduler}); "
        f"noise std {float(noise['samples'].std()):.2f}."
    )
    return S.enlarge(S.to_pil(pixels)), S.enlarge(S.latent_view(noise)), S.enlarge(S.to_pil(rec_pixels)), text


def ui_invert(source, label, prompt, image, steps, level, scheduler, seed, progress=gr.Progress()):
    return _ui.call(
        invert,
        progress,
        source,
        label,
        image,
        int(steps),
        float(level),
        scheduler,
        int(seed),
        prompt=prompt or "",
    )


def build(shared: _ui.Shared) -> None:
    gr.Markdown(
        "`UltraResDDIMInvert` walks an image up the model's noise schedule; `UltraResDDIMGenerate` "
        "walks the noise back. The PSNR of the reconstruction measures how exact the inversion is "
        "(more steps, lower level: higher PSNR). Upload an image or leave it empty to generate one."
    )
    source, label, prompt = _ui.model_controls(shared)
    image = gr.Image(label="Input (optional)", type="pil", sources=["upload", "clipboard"])
    with gr.Row():
        steps = _ui.slider(S.input_range(INVERT, "steps"), "DDIM steps")
        level = _ui.slider(S.input_range(INVERT, "level"), "Level (fraction of the schedule)")
        scheduler = _ui.dropdown(
            inversion_schedulers(), "Scheduler", S.node_defaults(INVERT).get("scheduler")
        )
        seed = _ui.number(S.input_range("KSampler", "seed"), "Seed (generated input)")
    run, stop = _ui.buttons("Invert and reconstruct")
    with gr.Row():
        shown = gr.Image(label="Input", type="pil", interactive=False, format="png")
        noise = gr.Image(label="Inverted noise", type="pil", interactive=False, format="png")
        rec = gr.Image(label="Reconstruction", type="pil", interactive=False, format="png")
    info = gr.Markdown()
    _ui.wire(
        run,
        stop,
        ui_invert,
        [source, label, prompt, image, steps, level, scheduler, seed],
        [shown, noise, rec, info],
        "invert",
    )
    if shared.examples:
        gr.Examples([[p, 50, 0.6] for p in shared.examples], [image, steps, level], label="Examples")
