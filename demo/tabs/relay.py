"""Relay upscaling tab: Relay Diffusion's second stage with ``UltraResRelayUpscale`` on an uploaded
image (fitted to the model's native size) or one generated first."""

from __future__ import annotations

import time

import gradio as gr
from PIL import Image

from .. import session as S
from . import _ui

TITLE, ID = "Relay upscaling", "relay"
NODE = "UltraResRelayUpscale"
DEMO_CFG = 3.0  # the embedded model's guidance (the node's 7 suits SD)
BASE_STEPS = 20  # stage one, when no image is uploaded


@S.exclusive
def relay(
    source: str | None,
    label: str | None = None,
    image=None,
    factor: int | None = None,
    steps: int | None = None,
    truncation_sigma: float | None = None,
    seed: int = 0,
    cfg: float = DEMO_CFG,
    s_block: float | None = None,
    s_noise: float | None = None,
    base_steps: int = BASE_STEPS,
    prompt: str = "",
    report: S.Report | None = None,
) -> tuple[Image.Image, Image.Image, str]:
    """Relay upscaling: the uploaded image (fitted to the model's native size), or one generated at
    the native size, up-scaled ``factor`` x by UltraResRelayUpscale (None: the node's default).
    Returns (low-res shown at the output size, relay result, description)."""
    settings = S.node_defaults(NODE)
    chosen = dict(
        factor=factor, steps=steps, truncation_sigma=truncation_sigma, s_block=s_block, s_noise=s_noise
    )
    settings.update({k: v for k, v in chosen.items() if v is not None}, seed=seed, cfg=cfg)
    S.validate(NODE, **settings)  # the node's ranges and rules, before any sampling
    factor, steps = int(settings["factor"]), int(settings["steps"])
    bundle = S.load(source)
    pos, neg = S.conditioning(bundle, label, prompt)
    if image is None:
        latent = S.empty_latent(bundle, bundle.native, bundle.native)
        base_steps = S.check("base steps", base_steps, S.input_range("KSampler", "steps"))
        with S.tracked(report, f"stage one: {bundle.native}px from noise"):
            low = S.sample(bundle, bundle.model, pos, neg, latent, base_steps, seed, cfg)
        where = f"generated at {bundle.native} px"
    else:
        pixels = S.fit_to(S.from_pil(image), bundle.native, bundle.native)
        low = S.encode(bundle, pixels)
        where = f"upload fitted to {bundle.native} px"
    t0 = time.perf_counter()
    with S.tracked(report, f"relay stage two: x{factor}"):
        (up,) = S.run_node(NODE, model=bundle.model, positive=pos, negative=neg, latent=low, **settings)
    seconds = time.perf_counter() - t0
    low_img, up_img = S.to_pil(S.decode(bundle, low)), S.to_pil(S.decode(bundle, up))
    low_view = low_img.resize(up_img.size, Image.NEAREST)
    info = (
        f"{where}, relay x{factor} to {up_img.width}x{up_img.height} px from sigma < "
        f"{settings['truncation_sigma']} ({steps}-level Karras grid, truncated): {seconds:.1f} s."
    )
    return S.enlarge(low_view), S.enlarge(up_img), info


def ui_relay(
    source,
    label,
    prompt,
    image,
    factor,
    steps,
    truncation_sigma,
    seed,
    cfg,
    s_block,
    s_noise,
    progress=gr.Progress(),
):
    return _ui.call(
        relay,
        progress,
        source,
        label,
        image,
        int(factor),
        int(steps),
        float(truncation_sigma),
        int(seed),
        float(cfg),
        float(s_block),
        float(s_noise),
        prompt=prompt or "",
    )


def build(shared: _ui.Shared) -> None:
    gr.Markdown(
        "Relay Diffusion's second stage with `UltraResRelayUpscale`: nearest up-sampling, block noise at "
        "the truncation sigma, then the relay sampler over the rest of the schedule. Upload an image "
        "(fitted to the model's native size) or leave it empty to generate one first."
    )
    source, label, prompt = _ui.model_controls(shared)
    image = gr.Image(label="Low-resolution input (optional)", type="pil", sources=["upload", "clipboard"])
    with gr.Row():
        factor = _ui.slider(S.input_range(NODE, "factor"), "Factor")
        steps = _ui.slider(S.input_range(NODE, "steps"), "Grid steps (only those below the truncation run)")
        trunc = _ui.number(S.input_range(NODE, "truncation_sigma"), "Truncation sigma")
    with gr.Row():
        seed = _ui.number(S.input_range(NODE, "seed"), "Seed")
        cfg = _ui.slider(S.input_range(NODE, "cfg"), "CFG", value=DEMO_CFG)
        s_block = _ui.slider(S.input_range(NODE, "s_block"), "Block noise weight")
        s_noise = _ui.slider(S.input_range(NODE, "s_noise"), "Stochasticity")
    run, stop = _ui.buttons("Upscale")
    with gr.Row():
        low = gr.Image(label="Input (nearest, for comparison)", type="pil", interactive=False, format="png")
        out = gr.Image(label="Relay result", type="pil", interactive=False, format="png")
    info = gr.Markdown()
    _ui.wire(
        run,
        stop,
        ui_relay,
        [source, label, prompt, image, factor, steps, trunc, seed, cfg, s_block, s_noise],
        [low, out, info],
        "relay",
    )
    if shared.examples:
        gr.Examples([[p] for p in shared.examples], [image], label="Examples")
