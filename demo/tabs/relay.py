"""Relay upscaling tab: Relay Diffusion's second stage with ``UltraResRelayUpscale`` on an uploaded
image or one generated first. It opens on the relay-trained model (``ultrares-emoji-relay256``:
64 px -> 256 px, x4, with the blur and noise settings it was trained with) and an example image."""

from __future__ import annotations

import time

import gradio as gr
from PIL import Image
from ultrares.kernels.hdit_format import trained_relay

from .. import defaults as D
from .. import session as S
from . import _ui

TITLE, ID = "Relay upscaling", "relay"
NODE = "UltraResRelayUpscale"
RELAY_MODEL = "ultrares-emoji-relay256.safetensors"  # relay-trained: 64 -> 256 px, unconditional
DEMO_CFG = (
    3.0  # the embedded 64 px model's guidance (the node's 7 suits SD); 1 for the unconditional relay model
)
BASE_STEPS = 20  # stage one, when no image is uploaded
DEFAULTS = D.of("relay", dict(model=RELAY_MODEL, example="apple.png", seed=0))


def default_source(shared: _ui.Shared) -> str | None:
    preferred = S.HDIT_PREFIX + DEFAULTS["model"]
    return preferred if preferred in shared.sources else shared.default


def model_settings(source: str | None) -> dict:
    """The tab's settings for a model: a relay-trained model's own factor, grid (steps, truncation
    sigma, rho) and relay_settings "model", cfg 1 (it is unconditional), as
    workflows/relay_emoji_1024.json runs it; the node's defaults for any other model."""
    out = {
        k: v for k, v in S.node_defaults(NODE).items() if k in ("factor", "steps", "truncation_sigma", "rho")
    }
    out.update(relay_settings="inputs", cfg=DEMO_CFG)
    if source and source.startswith(S.HDIT_PREFIX) and source[len(S.HDIT_PREFIX) :] in S.hdit_files():
        t = trained_relay(S.load(source).model)
        if t is not None:
            out.update(
                factor=t.settings.patch,
                steps=t.steps,
                truncation_sigma=t.truncation_sigma,
                rho=t.rho,
                relay_settings="model",
                cfg=1.0,
            )
    return out


@S.exclusive
def relay_stages(
    source: str | None,
    label: str | None = None,
    image=None,
    factor: int | None = None,
    steps: int | None = None,
    truncation_sigma: float | None = None,
    seed: int = 0,
    cfg: float | None = None,
    s_block: float | None = None,
    s_noise: float | None = None,
    relay_settings: str | None = None,
    base_steps: int = BASE_STEPS,
    prompt: str = "",
    report: S.Report | None = None,
):
    """Relay upscaling of the uploaded image, or of one generated first. A relay-trained model takes
    its input at native / factor px (64 px for ultrares-emoji-relay256) and a generated input comes
    from the embedded 64 px model; any other model takes it at its native size. None: the model's
    settings (:func:`model_settings`). Yields (input shown at the output size, relay result or None,
    description): once when the input is ready, again with the result."""
    seed = S.check("Seed", seed, S.input_range(NODE, "seed"))
    settings = S.node_defaults(NODE)
    settings.update(model_settings(source))
    chosen = dict(
        factor=factor,
        steps=steps,
        truncation_sigma=truncation_sigma,
        s_block=s_block,
        s_noise=s_noise,
        relay_settings=relay_settings,
        cfg=cfg,
    )
    settings.update({k: v for k, v in chosen.items() if v is not None}, seed=seed)
    S.validate(NODE, **settings)  # the node's ranges and rules, before any sampling
    factor, steps = int(settings["factor"]), int(settings["steps"])
    bundle = S.load(source)
    t = trained_relay(bundle.model)  # the relay settings it was trained with, else None
    if t is not None and settings["relay_settings"] == "model" and factor != t.settings.patch:
        raise S.UserError(
            f"{bundle.source[len(S.HDIT_PREFIX) :]} was trained to relay x{t.settings.patch}: set Factor to "
            f"{t.settings.patch}, or set Relay settings to 'inputs' to use the values set in this tab."
        )
    side = bundle.native // factor if t is not None else bundle.native
    if t is not None:  # the relay-trained model is unconditional
        pos, neg = S.run_node("UltraResHDiTClass", class_id=0, unconditional=True)
    else:
        pos, neg = S.conditioning(bundle, label, prompt)
    if image is None:
        base_steps = S.check("base steps", base_steps, S.input_range("KSampler", "steps"))
        first = S.load_all([S.HDIT_PREFIX + S.EMBEDDED_HDIT, bundle.source])[0] if t is not None else bundle
        first_label = label if label in first.class_names else None
        cpos, cneg = S.conditioning(first, first_label, prompt)
        with S.tracked(report, f"stage one: {first.native}px from noise"):
            low = S.sample(
                first,
                first.model,
                cpos,
                cneg,
                S.empty_latent(first, first.native, first.native),
                base_steps,
                seed,
                DEMO_CFG,
            )
        low_pixels = S.decode(first, low)
        low = S.encode(bundle, low_pixels)
        where = f"generated at {first.native} px ({first_label or first.labels[0]})"
    else:
        low_pixels = S.fit_to(S.from_pil(image), side, side)
        low = S.encode(bundle, low_pixels)
        where = f"upload fitted to {side} px"
    out_side = side * factor
    low_view = S.enlarge(S.to_pil(low_pixels).resize((out_side, out_side), Image.NEAREST))
    yield low_view, None, f"{where}; relaying x{factor}..."
    t0 = time.perf_counter()
    with S.tracked(report, f"relay stage two: x{factor}"):
        (up,) = S.run_node(NODE, model=bundle.model, positive=pos, negative=neg, latent=low, **settings)
    seconds = time.perf_counter() - t0
    up_img = S.to_pil(S.decode(bundle, up))
    which = (
        "the model's trained blur and noise"
        if t is not None and settings["relay_settings"] == "model"
        else f"block noise {settings['s_block']:g}, stochasticity {settings['s_noise']:g}"
    )
    info = (
        f"{where}, relay x{factor} to {up_img.width}x{up_img.height} px from sigma < "
        f"{settings['truncation_sigma']} ({steps}-level Karras grid, truncated; {which}), seed {seed}: "
        f"{seconds:.1f} s on {S.runtime().device}."
    )
    yield low_view, S.enlarge(up_img), info


def relay(*args, **kwargs) -> tuple[Image.Image, Image.Image, str]:
    """:func:`relay_stages`' final outputs: (input at the output size, relay result, description)."""
    return S.last(relay_stages(*args, **kwargs))


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
    relay_settings,
    progress=gr.Progress(),
):
    yield from _ui.stream(
        relay_stages,
        progress,
        3,
        ID,
        source,
        label,
        image,
        int(factor),
        int(steps),
        float(truncation_sigma),
        seed,
        float(cfg),
        float(s_block),
        float(s_noise),
        relay_settings,
        prompt=prompt or "",
    )


def model_changed(source):
    """A new model: its own factor, grid, CFG and relay_settings (a relay-trained model's trained ones)."""
    try:
        m = model_settings(source)
    except ValueError as exc:
        gr.Warning(str(exc))
        return (gr.skip(),) * 5
    return (
        gr.update(value=m["factor"]),
        gr.update(value=m["steps"]),
        gr.update(value=m["truncation_sigma"]),
        gr.update(value=m["relay_settings"]),
        gr.update(value=m["cfg"]),
    )


def build(shared: _ui.Shared) -> None:
    gr.Markdown(
        "Relay Diffusion's second stage with `UltraResRelayUpscale`: nearest up-sampling, block noise at "
        "the truncation sigma, then the relay sampler over the rest of the schedule. It opens on the "
        "relay-trained `ultrares-emoji-relay256` (64 px -> 256 px, x4, with the blur it was trained with: "
        "Relay settings 'model'); the embedded 64 px HDiT relays too, with the settings typed here. Upload "
        "an image (fitted to the model's input size) or clear it to generate one first."
    )
    time_box = _ui.time_note(ID)
    default = default_source(shared)
    start = model_settings(default) if default else {}
    source, label, prompt = _ui.model_controls(_ui.Shared(shared.sources, default, shared.examples))
    image = gr.Image(
        value=D.example(DEFAULTS["example"]),
        label="Low-resolution input (optional)",
        elem_id="relay-input",
        type="pil",
        sources=["upload", "clipboard"],
        image_mode="RGBA",  # keep the transparency: the handler lays it on the right background
        height=256,
    )
    with gr.Row():
        factor = _ui.slider(
            S.input_range(NODE, "factor"), "Factor", value=start.get("factor"), elem_id="relay-factor"
        )
        steps = _ui.slider(
            S.input_range(NODE, "steps"),
            "Grid steps (only those below the truncation run)",
            value=start.get("steps"),
        )
        trunc = _ui.number(
            S.input_range(NODE, "truncation_sigma"), "Truncation sigma", value=start.get("truncation_sigma")
        )
        settings = _ui.dropdown(
            S.node_options(NODE, "relay_settings"),
            "Relay settings",
            start.get("relay_settings", "model"),
            info="model: a relay-trained model's own blur and noise (the two sliders below are ignored); "
            "inputs: the values set here.",
        )
    with gr.Row():
        seed = _ui.number(S.input_range(NODE, "seed"), "Seed", value=DEFAULTS["seed"])
        cfg = _ui.slider(S.input_range(NODE, "cfg"), "CFG", value=start.get("cfg", DEMO_CFG))
        s_block = _ui.slider(S.input_range(NODE, "s_block"), "Block noise weight")
        s_noise = _ui.slider(S.input_range(NODE, "s_noise"), "Stochasticity")
    source.change(
        model_changed,
        source,
        [factor, steps, trunc, settings, cfg],
        queue=False,
        api_visibility="undocumented",
    )
    run, stop = _ui.buttons("Upscale")
    with gr.Row():
        low = gr.Image(label="Input (nearest, for comparison)", type="pil", interactive=False, format="png")
        out = gr.Image(
            label="Relay result", type="pil", interactive=False, format="png", elem_id="relay-output"
        )
    info = gr.Markdown(elem_id="relay-info")
    _ui.wire(
        run,
        stop,
        ui_relay,
        [source, label, prompt, image, factor, steps, trunc, seed, cfg, s_block, s_noise, settings],
        [low, out, info],
        "relay",
        time_box,
    )
    if shared.examples:
        gr.Examples([[p] for p in shared.examples], [image], label="Examples")
