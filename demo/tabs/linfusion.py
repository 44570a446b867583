"""LinFusion tab: the same seed sampled with a Stable Diffusion UNet's softmax self-attention and
with ``UltraResLinFusionApply``'s linear attention, both timed."""

from __future__ import annotations

import time

import gradio as gr
from PIL import Image

from .. import session as S
from . import _ui

TITLE, ID = "LinFusion", "linfusion"
DISTILL = "`python scripts/linfusion_distill.py`"  # how to make weights for another model
DEMO_STEPS = 10  # two runs on a CPU: fewer than KSampler's 20
DEMO_CFG = 6.0


def linfusion_files() -> list[str]:
    return S.node_options("UltraResLinFusionLoader", "lf_name")


@S.exclusive
def linfusion_timing(
    source: str | None,
    lf_name: str | None,
    prompt: str = "a photo of a cat",
    width: int = 512,
    height: int = 512,
    steps: int = DEMO_STEPS,
    seed: int = 0,
    cfg: float = DEMO_CFG,
    report: S.Report | None = None,
) -> tuple[Image.Image, Image.Image, str]:
    """The same sampling with the model's softmax self-attention and with LinFusion; returns
    (softmax image, LinFusion image, timing table in Markdown)."""
    if not source or not source.startswith(S.CKPT_PREFIX):
        raise S.UserError(
            "LinFusion needs a Stable Diffusion checkpoint (SD1.x/SD2.x/SDXL: LinFusion replaces its UNet's "
            "self-attention) and none is chosen in Checkpoint"
            + (
                ""
                if S.checkpoint_files()
                else ": none was found. Put one in ComfyUI/models/checkpoints and restart the demo"
            )
            + "."
        )
    if not lf_name:
        raise S.UserError(
            "LinFusion needs weights made for this checkpoint and none is chosen in LinFusion weights"
            + ("" if linfusion_files() else ": none was found")
            + ". Put the official release (Yuanshi/LinFusion-1-5 etc.: config.json + "
            "diffusion_pytorch_model.safetensors) in ComfyUI/models/linfusion and restart the demo, or distil "
            f"your own with {DISTILL}."
        )
    seed = S.check("Seed", seed, S.input_range("KSampler", "seed"))
    bundle = S.load(source)
    width, height = (
        S.check(name, value, S.size_range(bundle.kind, name), S.size_range(bundle.kind, name).step or 1)
        for name, value in (("width", width), ("height", height))
    )
    steps = S.check("steps", steps, S.input_range("KSampler", "steps"))
    (weights,) = S.run_node("UltraResLinFusionLoader", lf_name=lf_name)
    apply = {
        k: v for k, v in S.node_defaults("UltraResLinFusionApply").items() if k not in ("model", "linfusion")
    }
    (lin_model,) = S.run_node("UltraResLinFusionApply", model=bundle.model, linfusion=weights, **apply)
    pos, neg = S.conditioning(bundle, None, prompt)
    latent = S.empty_latent(bundle, width, height)
    times, images = {}, {}
    for name, model in (("softmax attention", bundle.model), ("LinFusion", lin_model)):
        t0 = time.perf_counter()
        with S.tracked(report, f"{name}: {steps} steps at {width}x{height}"):
            out = S.sample(bundle, model, pos, neg, latent, steps, seed, cfg)
        times[name] = time.perf_counter() - t0
        images[name] = S.to_pil(S.decode(bundle, out))
    base, lin = times["softmax attention"], times["LinFusion"]
    tokens = latent["samples"].shape[-2] * latent["samples"].shape[-1]
    table = (
        "| attention | seconds | per step |\n|---|---|---|\n"
        + "".join(f"| {k} | {v:.2f} | {v / steps:.3f} |\n" for k, v in times.items())
        + f"\nLinFusion / softmax time: **{lin / base:.2f}** at {width}x{height} ({tokens} "
        f"latent tokens) on {S.runtime().device}."
    )
    return images["softmax attention"], images["LinFusion"], table


def ui_linfusion(source, lf_name, prompt, width, height, steps, seed, cfg, progress=gr.Progress()):
    yield from _ui.stream(
        linfusion_timing,
        progress,
        3,
        ID,
        source,
        lf_name,
        prompt or "",
        int(width),
        int(height),
        int(steps),
        seed,
        float(cfg),
    )


def build(shared: _ui.Shared) -> None:
    lf_files = linfusion_files()
    ckpts = [s for s in shared.sources if s.startswith(S.CKPT_PREFIX)]
    missing = " and ".join(
        what
        for what, gone in (("no checkpoint found", not ckpts), ("no LinFusion weights found", not lf_files))
        if gone
    )
    gr.Markdown(
        "`UltraResLinFusionApply` replaces every self-attention of an SD1.x/SD2.x/SDXL UNet by linear "
        "attention; this tab samples the same seed with and without it and times both. It needs a "
        "Stable Diffusion checkpoint (ComfyUI/models/checkpoints) and LinFusion weights "
        "(ComfyUI/models/linfusion) made for it."
        + (
            f"\n\n**Not available here:** {missing}. Put the files in those folders and restart the demo "
            f"(LinFusion weights: the official Yuanshi/LinFusion-1-5 release, or {DISTILL})."
            if missing
            else ""
        ),
        elem_id="linfusion-note",
    )
    time_box = _ui.time_note(ID)
    size = S.size_range("checkpoint", "width")
    with gr.Row():
        source = _ui.dropdown(ckpts, "Checkpoint", elem_id="linfusion-checkpoint")
        lf_name = _ui.dropdown(lf_files, "LinFusion weights", elem_id="linfusion-weights")
        prompt = gr.Textbox(value="a photo of a cat", label="Prompt")
    with gr.Row():
        width = _ui.slider(size, "Width")
        height = _ui.slider(size, "Height")
        steps = _ui.slider(S.input_range("KSampler", "steps"), "Steps", value=DEMO_STEPS)
        seed = _ui.number(S.input_range("KSampler", "seed"), "Seed")
        cfg = _ui.slider(S.input_range("KSampler", "cfg"), "CFG", value=DEMO_CFG)
    run, stop = _ui.buttons("Compare")
    with gr.Row():
        base = gr.Image(label="Softmax attention", type="pil", interactive=False, format="png")
        lin = gr.Image(label="LinFusion", type="pil", interactive=False, format="png")
    info = gr.Markdown(elem_id="linfusion-info")
    _ui.wire(
        run,
        stop,
        ui_linfusion,
        [source, lf_name, prompt, width, height, steps, seed, cfg],
        [base, lin, info],
        "linfusion",
        time_box,
    )
