"""HDiT tab: class-conditional generation with the embedded Hourglass Diffusion Transformer
(``UltraResHDiTLoader`` + ``UltraResHDiTClass`` + ``KSampler`` + ``VAEDecode``)."""

from __future__ import annotations

import time

import gradio as gr
from PIL import Image

from .. import defaults as D
from .. import session as S
from . import _ui

TITLE, ID = "HDiT", "hdit"
# cfg 3: the embedded model's guidance (KSampler's default of 8 is tuned for SD); the seed and class are
# picked by scripts/pick_demo_seeds.py (demo/defaults.json)
DEFAULTS = D.of("hdit", dict(label="Smileys & Emotion", steps=20, seed=0, cfg=3.0, batch=4))
DEMO_CFG, DEMO_BATCH = DEFAULTS["cfg"], DEFAULTS["batch"]


@S.exclusive
def generate(
    source: str | None,
    label: str | None = None,
    steps: int = DEFAULTS["steps"],
    seed: int = DEFAULTS["seed"],
    cfg: float = DEMO_CFG,
    batch: int = DEMO_BATCH,
    sampler: str = "dpmpp_2m",
    scheduler: str = "karras",
    prompt: str = "",
    report: S.Report | None = None,
) -> tuple[Image.Image, str]:
    """Sample ``batch`` images at the model's native size; returns (row of images, description)."""
    steps = S.check("steps", steps, S.input_range("KSampler", "steps"))
    seed = S.check("Seed", seed, S.input_range("KSampler", "seed"))
    batch = S.check("batch", batch, S.input_range("EmptyLatentImage", "batch_size").narrowed(hi=S.MAX_BATCH))
    bundle = S.load(source)
    pos, neg = S.conditioning(bundle, label, prompt)
    latent = S.empty_latent(bundle, bundle.native, bundle.native, batch)
    t0 = time.perf_counter()
    with S.tracked(report, f"sampling {steps} steps"):
        out = S.sample(bundle, bundle.model, pos, neg, latent, steps, seed, cfg, sampler, scheduler)
    images = S.decode(bundle, out)
    what = label if bundle.kind == "hdit" else repr(prompt)
    info = (
        f"{batch} x {bundle.native}x{bundle.native} px, {what}, {steps} steps {sampler}/{scheduler}, cfg {cfg}, "
        f"seed {seed}: {time.perf_counter() - t0:.1f} s on {S.runtime().device}."
    )
    return S.enlarge(S.to_pil(images)), info


def ui_generate(source, label, prompt, steps, seed, cfg, batch, sampler, scheduler, progress=gr.Progress()):
    yield from _ui.stream(
        generate,
        progress,
        2,
        ID,
        source,
        label,
        int(steps),
        seed,
        float(cfg),
        int(batch),
        sampler,
        scheduler,
        prompt=prompt or "",
    )


def build(shared: _ui.Shared) -> None:
    gr.Markdown(
        "Class-conditional generation with the embedded Hourglass Diffusion Transformer "
        "(64x64 emoji, pixel space): `UltraResHDiTLoader` + `UltraResHDiTClass` + `KSampler` + `VAEDecode`. "
        "The default seed was picked by `scripts/pick_demo_seeds.py` (the lowest DINOv2 distance of the worst "
        "of its images to the class's training emoji)."
    )
    time_box = _ui.time_note(ID)
    source, label, prompt = _ui.model_controls(shared, DEFAULTS["label"])
    with gr.Row():
        steps = _ui.slider(S.input_range("KSampler", "steps"), "Steps", value=DEFAULTS["steps"])
        seed = _ui.number(S.input_range("KSampler", "seed"), "Seed", value=DEFAULTS["seed"])
        cfg = _ui.slider(S.input_range("KSampler", "cfg"), "CFG", value=DEMO_CFG)
        batch = _ui.slider(
            S.input_range("EmptyLatentImage", "batch_size").narrowed(hi=S.MAX_BATCH),
            "Images",
            value=DEMO_BATCH,
        )
    with gr.Row():
        sampler = _ui.dropdown(S.node_options("KSampler", "sampler_name"), "Sampler", "dpmpp_2m")
        scheduler = _ui.dropdown(S.node_options("KSampler", "scheduler"), "Scheduler", "karras")
    run, stop = _ui.buttons("Generate")
    out = gr.Image(label="Result", type="pil", elem_id="hdit-output", interactive=False, format="png")
    info = gr.Markdown(elem_id="hdit-info")
    _ui.wire(
        run,
        stop,
        ui_generate,
        [source, label, prompt, steps, seed, cfg, batch, sampler, scheduler],
        [out, info],
        "generate",
        time_box,
    )
    labels = S.labels_of(shared.default)
    if labels:
        gr.Examples(
            [
                [shared.default, c, DEFAULTS["steps"], s, DEMO_CFG, DEMO_BATCH]
                for c, s in (("Food & Drink", 1), ("Animals & Nature", 2), ("Smileys & Emotion", 3))
                if c in labels
            ],
            [source, label, steps, seed, cfg, batch],
            label="Examples",
        )
