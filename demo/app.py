"""UltraRes demo: a Gradio app over the pack's ComfyUI nodes, on the embedded model.

    python -m ultrares.demo.app [--host 127.0.0.1] [--port 7860] [--share] [--cpu]

ComfyUI is booted in this process as a library (:mod:`.runtime`); every tab runs the pack's node
classes (:mod:`.handlers`). One job runs at a time (a queue of 20); Cancel interrupts sampling.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from . import handlers as H  # noqa: E402

LOG = logging.getLogger("ultrares.demo")
EXAMPLES = Path(__file__).resolve().parent / "examples"
CONCURRENCY = dict(concurrency_id="comfy", concurrency_limit=1)


def example_images() -> list[str]:
    return sorted(str(p) for p in EXAMPLES.glob("*.png"))


# ------------------------------------------------------------------------------------ error handling


def _call(fn, progress, *args, **kwargs):
    """Run a handler with progress reporting; every failure becomes a gr.Error (no stack trace)."""
    import comfy.model_management

    def report(stage: str, value: int, total: int) -> None:
        if total > 0:
            progress((value, total), desc=stage)

    try:
        return fn(*args, report=report, **kwargs)
    except comfy.model_management.InterruptProcessingException:
        raise gr.Error("Cancelled.", title="Cancelled", print_exception=False) from None
    except ValueError as exc:  # UserError and the nodes' own actionable ValueErrors
        raise gr.Error(str(exc), print_exception=False) from None
    except Exception as exc:
        LOG.exception("demo: %s failed", getattr(fn, "__name__", fn))
        raise gr.Error(f"Unexpected error ({type(exc).__name__}: {exc}). The full report is in the terminal "
                       "running the demo.", print_exception=False) from None


def ui_generate(source, label, prompt, steps, seed, cfg, batch, sampler, scheduler, progress=gr.Progress()):
    return _call(H.generate, progress, source, label, int(steps), int(seed), float(cfg), int(batch), sampler,
                 scheduler, prompt=prompt or "")


def ui_any_size(source, label, prompt, width, height, method, tile, overlap, steps, seed, cfg, show_step, compare,
                progress=gr.Progress()):
    return _call(H.any_size, progress, source, label, int(width), int(height), method, int(tile), int(overlap),
                 int(steps), int(seed), float(cfg), int(show_step), bool(compare), prompt=prompt or "")


def ui_relay(source, label, prompt, image, factor, steps, truncation_sigma, seed, cfg, s_block, s_noise,
             progress=gr.Progress()):
    return _call(H.relay, progress, source, label, image, int(factor), int(steps), float(truncation_sigma), int(seed),
                 float(cfg), float(s_block), float(s_noise), prompt=prompt or "")


def ui_linfusion(source, lf_name, prompt, width, height, steps, seed, cfg, progress=gr.Progress()):
    return _call(H.linfusion_timing, progress, source, lf_name, prompt or "", int(width), int(height), int(steps),
                 int(seed), float(cfg))


def ui_digit(image, encoder, codebook, image_size, fit, mode, progress=gr.Progress()):
    return _call(H.digit_tokens, progress, image, encoder, codebook, int(image_size), fit, mode)


def ui_invert(source, label, prompt, image, steps, level, scheduler, seed, progress=gr.Progress()):
    return _call(H.invert, progress, source, label, image, int(steps), float(level), scheduler, int(seed),
                 prompt=prompt or "")


def ui_source_changed(source):
    """Class choices for an HDiT source, a prompt box for a checkpoint."""
    if not source:
        return gr.update(choices=[], value=None, visible=True), gr.update(visible=False)
    if source.startswith(H.CKPT_PREFIX):
        return gr.update(visible=False), gr.update(visible=True)
    try:
        labels = H.load(source).labels
    except ValueError as exc:
        raise gr.Error(str(exc), print_exception=False) from None
    return gr.update(choices=labels, value=labels[0] if labels else None, visible=True), gr.update(visible=False)


# ------------------------------------------------------------------------------------ layout


def labels_of(source: str | None) -> list[str]:
    """Class names of an HDiT source ([] for checkpoints, nothing, or a file that does not load)."""
    if not source or not source.startswith(H.HDIT_PREFIX):
        return []
    try:
        return H.load(source).labels
    except ValueError as exc:
        LOG.warning("UltraRes demo: %s", exc)
        return []


def _model_controls(sources: list[str], default: str | None):
    """Model source, class (HDiT) and prompt (checkpoints) controls, wired together."""
    labels = labels_of(default)
    with gr.Row():
        source = gr.Dropdown(sources, value=default, label="Model",
                             info="The embedded HDiT, or a checkpoint from ComfyUI/models/checkpoints.")
        label = gr.Dropdown(labels, value=labels[0] if labels else None, label="Class",
                            visible=not default or default.startswith(H.HDIT_PREFIX),
                            info="What the class-conditional HDiT draws ('unconditional' = any).",
                            allow_custom_value=True)  # the choices follow the model; the handler checks
        prompt = gr.Textbox(label="Prompt", value="a photo of a cat", visible=bool(default) and
                            default.startswith(H.CKPT_PREFIX))
    source.change(ui_source_changed, source, [label, prompt], queue=False, api_visibility="undocumented")
    return source, label, prompt


def _buttons(name: str):
    with gr.Row():
        run = gr.Button(name, variant="primary", elem_id=f"{name.lower().replace(' ', '-')}-button")
        stop = gr.Button("Cancel", variant="stop")
    return run, stop


def _wire(run, stop, fn, inputs, outputs, api_name):
    event = run.click(fn, inputs, outputs, api_name=api_name, **CONCURRENCY)
    stop.click(H.cancel, None, None, cancels=[event], queue=False, api_name=f"cancel_{api_name}")
    return event


def build_app() -> gr.Blocks:
    H.runtime()  # boot ComfyUI (and load the pack) before building the lists
    sources = H.sources()
    default = H.default_source()
    samplers = H.node_options("KSampler", "sampler_name")
    schedulers = H.node_options("KSampler", "scheduler")
    examples = example_images()
    missing = None if sources else H.missing_model_message()
    hdit_missing = H.EMBEDDED_HDIT not in H.hdit_files()

    with gr.Blocks(title="UltraRes demo") as demo:
        gr.Markdown("# UltraRes\nHigh-resolution synthesis techniques as ComfyUI nodes, run here with ComfyUI loaded as "
                    "a library. Every tab calls the pack's node classes. One job runs at a time; **Cancel** stops it.")
        if hdit_missing:
            gr.Markdown(f"**The embedded model `models/hdit/{H.EMBEDDED_HDIT}` is missing.** Run `make embedded-hdit` "
                        "(or `make setup`) to build it." + (f" {missing}" if missing else
                                                            " Other models found are listed in each tab."),
                        elem_id="model-missing")

        with gr.Tab("HDiT", id="hdit"):
            gr.Markdown("Class-conditional generation with the embedded Hourglass Diffusion Transformer "
                        "(64x64 emoji, pixel space): `UltraResHDiTLoader` + `UltraResHDiTClass` + `KSampler` + `VAEDecode`.")
            source, label, prompt = _model_controls(sources, default)
            with gr.Row():
                steps = gr.Slider(1, 100, value=20, step=1, label="Steps")
                seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
                cfg = gr.Slider(0, 15, value=3.0, step=0.1, label="CFG")
                batch = gr.Slider(1, 8, value=4, step=1, label="Images")
            with gr.Row():
                sampler = gr.Dropdown(samplers, value="dpmpp_2m" if "dpmpp_2m" in samplers else None, label="Sampler")
                scheduler = gr.Dropdown(schedulers, value="karras" if "karras" in schedulers else None, label="Scheduler")
            run, stop = _buttons("Generate")
            out = gr.Image(label="Result", type="pil", elem_id="hdit-output", interactive=False, format="png")
            info = gr.Markdown(elem_id="hdit-info")
            inputs = [source, label, prompt, steps, seed, cfg, batch, sampler, scheduler]
            _wire(run, stop, ui_generate, inputs, [out, info], "generate")
            if labels_of(default):
                gr.Examples([[default, c, 20, s, 3.0, 4] for c, s in (("Food & Drink", 1), ("Animals & Nature", 2),
                                                                      ("Smileys & Emotion", 3))
                             if c in labels_of(default)],
                            [source, label, steps, seed, cfg, batch], label="Examples")

        with gr.Tab("Any size (FSTD)", id="fstd"):
            gr.Markdown("Any width and height with `UltraResTiledDiffusion`: the model sees tiles of its native size; "
                        "FSTD shifts a non-overlapping grid every step so seams never settle. The tile grid of the "
                        "chosen step is drawn on the result.")
            f_source, f_label, f_prompt = _model_controls(sources, default)
            with gr.Row():
                width = gr.Slider(16, 1024, value=192, step=16, label="Width (px)")
                height = gr.Slider(16, 1024, value=128, step=16, label="Height (px)")
                methods = H.tiled_methods()
                method = gr.Dropdown(methods, value=methods[0] if methods else None, label="Tiling method")
            with gr.Row():
                tile = gr.Number(value=0, precision=0, label="Tile size (px, 0 = model's native)", minimum=0)
                overlap = gr.Slider(0, 256, value=16, step=8, label="Overlap (MultiDiffusion / Mixture)")
                f_steps = gr.Slider(1, 100, value=20, step=1, label="Steps")
                f_seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
                f_cfg = gr.Slider(0, 15, value=3.0, step=0.1, label="CFG")
            with gr.Row():
                show_step = gr.Slider(0, 99, value=1, step=1, label="Show the tile grid of step")
                compare = gr.Checkbox(value=False, label="Also sample without tiling (same seed)")
            f_run, f_stop = _buttons("Generate any size")
            with gr.Row():
                f_out = gr.Image(label="Result", type="pil", interactive=False, format="png")
                f_grid = gr.Image(label="Tile grid", type="pil", interactive=False, format="png", elem_id="fstd-grid")
                f_plain = gr.Image(label="Untiled", type="pil", interactive=False, format="png")
            f_info = gr.Markdown(elem_id="fstd-info")
            _wire(f_run, f_stop, ui_any_size, [f_source, f_label, f_prompt, width, height, method, tile, overlap,
                                               f_steps, f_seed, f_cfg, show_step, compare],
                  [f_out, f_grid, f_plain, f_info], "any_size")
            gr.Examples([[256, 96, "FSTD", 1], [192, 192, "MultiDiffusion", 2], [320, 64, "SpotDiffusion", 3]],
                        [width, height, method, show_step], label="Examples")

        with gr.Tab("Relay upscaling", id="relay"):
            gr.Markdown("Relay Diffusion's second stage with `UltraResRelayUpscale`: nearest up-sampling, block noise at "
                        "the truncation sigma, then the relay sampler over the rest of the schedule. Upload an image "
                        "(fitted to the model's native size) or leave it empty to generate one first.")
            r_source, r_label, r_prompt = _model_controls(sources, default)
            r_image = gr.Image(label="Low-resolution input (optional)", type="pil", sources=["upload", "clipboard"])
            with gr.Row():
                factor = gr.Slider(2, 4, value=2, step=1, label="Factor")
                r_steps = gr.Slider(2, 200, value=30, step=1, label="Grid steps (only those below the truncation run)")
                trunc = gr.Slider(0.1, 10, value=0.9, step=0.05, label="Truncation sigma")
            with gr.Row():
                r_seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
                r_cfg = gr.Slider(0, 15, value=3.0, step=0.1, label="CFG")
                s_block = gr.Slider(0, 1, value=0.15, step=0.01, label="Block noise weight")
                s_noise = gr.Slider(0, 1, value=0.2, step=0.01, label="Stochasticity")
            r_run, r_stop = _buttons("Upscale")
            with gr.Row():
                r_low = gr.Image(label="Input (nearest, for comparison)", type="pil", interactive=False, format="png")
                r_out = gr.Image(label="Relay result", type="pil", interactive=False, format="png")
            r_info = gr.Markdown()
            _wire(r_run, r_stop, ui_relay, [r_source, r_label, r_prompt, r_image, factor, r_steps, trunc, r_seed, r_cfg,
                                            s_block, s_noise], [r_low, r_out, r_info], "relay")
            if examples:
                gr.Examples([[p] for p in examples], [r_image], label="Examples")

        with gr.Tab("LinFusion", id="linfusion"):
            lf_files = H.linfusion_files()
            ckpts = [s for s in sources if s.startswith(H.CKPT_PREFIX)]
            gr.Markdown("`UltraResLinFusionApply` replaces every self-attention of an SD1.x/SD2.x/SDXL UNet by linear "
                        "attention; this tab samples the same seed with and without it and times both. It needs a "
                        "Stable Diffusion checkpoint (ComfyUI/models/checkpoints) and LinFusion weights "
                        "(ComfyUI/models/linfusion) made for it." +
                        ("" if ckpts and lf_files else
                         f"\n\n**Not available here:** {'no checkpoint found' if not ckpts else ''}"
                         f"{' and ' if not ckpts and not lf_files else ''}"
                         f"{'no LinFusion weights found' if not lf_files else ''}. Put the files in those folders "
                         "and restart the demo (LinFusion weights: the official Yuanshi/LinFusion-1-5 release, or "
                         "`python -m ultrares.kernels.linfusion_distill`)."), elem_id="linfusion-note")
            with gr.Row():
                l_source = gr.Dropdown(ckpts, value=ckpts[0] if ckpts else None, label="Checkpoint")
                lf_name = gr.Dropdown(lf_files, value=lf_files[0] if lf_files else None, label="LinFusion weights")
                l_prompt = gr.Textbox(value="a photo of a cat", label="Prompt")
            with gr.Row():
                l_width = gr.Slider(256, 2048, value=512, step=64, label="Width")
                l_height = gr.Slider(256, 2048, value=512, step=64, label="Height")
                l_steps = gr.Slider(1, 50, value=10, step=1, label="Steps")
                l_seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
                l_cfg = gr.Slider(0, 15, value=6.0, step=0.1, label="CFG")
            l_run, l_stop = _buttons("Compare")
            with gr.Row():
                l_base = gr.Image(label="Softmax attention", type="pil", interactive=False, format="png")
                l_lin = gr.Image(label="LinFusion", type="pil", interactive=False, format="png")
            l_info = gr.Markdown()
            _wire(l_run, l_stop, ui_linfusion, [l_source, lf_name, l_prompt, l_width, l_height, l_steps, l_seed, l_cfg],
                  [l_base, l_lin, l_info], "linfusion")

        with gr.Tab("DiGIT tokens", id="digit"):
            gr.Markdown("DiGIT's discriminative tokenizer (`UltraResDiGITTokenize`, `UltraResDiGITDecode`): every "
                        "16x16 patch becomes the id of the nearest K-means centroid of its DINOv2 feature. The token "
                        "map colours each id by its centroid; the decoding draws each token as its nearest training patch.")
            encoders, codebooks, modes = H.digit_encoders(), H.digit_codebooks(), H.digit_decode_modes()
            d_image = gr.Image(label="Image", type="pil", sources=["upload", "clipboard"])
            with gr.Row():
                encoder = gr.Dropdown(encoders, value=encoders[0] if encoders else None, label="Encoder")
                codebook = gr.Dropdown(codebooks, value=codebooks[0] if codebooks else None, label="Codebook")
                image_size = gr.Slider(64, 512, value=256, step=16, label="Image size (tokens = size/16 per side)")
                fit = gr.Dropdown(H.node_options("UltraResDiGITTokenize", "fit"), value="center_crop", label="Fit")
                mode = gr.Dropdown(modes, value=modes[0] if modes else None, label="Decode as")
            d_run, d_stop = _buttons("Tokenize")
            with gr.Row():
                d_seen = gr.Image(label="As tokenized", type="pil", interactive=False, format="png")
                d_map = gr.Image(label="Token map", type="pil", interactive=False, format="png")
                d_dec = gr.Image(label="Tokens decoded", type="pil", interactive=False, format="png")
            d_info = gr.Markdown()
            _wire(d_run, d_stop, ui_digit, [d_image, encoder, codebook, image_size, fit, mode],
                  [d_seen, d_map, d_dec, d_info], "digit")
            if examples:
                gr.Examples([[p] for p in examples], [d_image], label="Examples")

        with gr.Tab("DDIM inversion", id="inversion"):
            gr.Markdown("`UltraResDDIMInvert` walks an image up the model's noise schedule; `UltraResDDIMGenerate` "
                        "walks the noise back. The PSNR of the reconstruction measures how exact the inversion is "
                        "(more steps, lower level: higher PSNR). Upload an image or leave it empty to generate one.")
            i_source, i_label, i_prompt = _model_controls(sources, default)
            i_image = gr.Image(label="Input (optional)", type="pil", sources=["upload", "clipboard"])
            with gr.Row():
                i_steps = gr.Slider(1, 200, value=50, step=1, label="DDIM steps")
                level = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Level (fraction of the schedule)")
                scheds = H.inversion_schedulers()
                i_sched = gr.Dropdown(scheds, value="simple" if "simple" in scheds else None, label="Scheduler")
                i_seed = gr.Number(value=0, precision=0, label="Seed (generated input)", minimum=0)
            i_run, i_stop = _buttons("Invert and reconstruct")
            with gr.Row():
                i_in = gr.Image(label="Input", type="pil", interactive=False, format="png")
                i_noise = gr.Image(label="Inverted noise", type="pil", interactive=False, format="png")
                i_rec = gr.Image(label="Reconstruction", type="pil", interactive=False, format="png")
            i_info = gr.Markdown()
            _wire(i_run, i_stop, ui_invert, [i_source, i_label, i_prompt, i_image, i_steps, level, i_sched, i_seed],
                  [i_in, i_noise, i_rec, i_info], "invert")
            if examples:
                gr.Examples([[p, 50, 0.6] for p in examples], [i_image, i_steps, level], label="Examples")

        gr.Markdown(f"<small>ComfyUI: `{H.runtime().comfy_path}` · device: `{H.runtime().device}` · "
                    f"{len(H.runtime().pack_nodes)} UltraRes nodes</small>")

    demo.queue(default_concurrency_limit=1, max_size=20)
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ultrares.demo.app", description="UltraRes Gradio demo.")
    p.add_argument("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0 for every interface).")
    p.add_argument("--port", type=int, default=7860, help="Port (default 7860).")
    p.add_argument("--share", action="store_true", help="Also open a public gradio.live link (off by default).")
    p.add_argument("--cpu", action="store_true", help="Run on the CPU even when a GPU is present.")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    print("UltraRes demo: starting ComfyUI (about 20 s)...", flush=True)
    from . import runtime

    try:
        runtime.boot(cpu=True if args.cpu else None)
    except runtime.ComfyNotFound as exc:
        sys.exit(f"UltraRes demo: {exc}")
    demo = build_app()
    _, local_url, share_url = demo.launch(server_name=args.host, server_port=args.port, share=args.share,
                                          show_error=True, prevent_thread_lock=True, quiet=True)
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"UltraRes demo running at http://{host}:{args.port}/" + (f" (public: {share_url})" if share_url else "")
          + "  (Ctrl+C to stop)", flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()


if __name__ == "__main__":
    main()
