"""Distil LinFusion layers from an SD-family checkpoint (any fine-tune) and write the official format.

    .venv/bin/python scripts/linfusion_distill.py --checkpoint my_sd15_finetune.safetensors \
        --out models/linfusion/my_linfusion.safetensors --steps 2000 [--images DIR]

ComfyUI, used as a library, loads the checkpoint, VAE and text encoder; the training step itself is
``ultrares.kernels.linfusion_distill.Distiller`` (comfy-free).

The teacher UNet runs in the dtype ComfyUI loads it in (``--precision`` picks another one through
ComfyUI's own ``model_options["dtype"]``): its weights are never cast behind ComfyUI's back, because
``BaseModel.apply_model`` casts the inputs to the dtype the model was built with
(``diffusion_model.dtype``), and fp32 weights fed fp16 inputs fail. The student LinFusion layers
always train in float32 (they cast their inputs). v-prediction checkpoints (SD2.x-768-v) are
distilled with the official v-space losses.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from ultrares.kernels.linfusion_distill import (
    DistillConfig,
    Distiller,
    image_caption_pairs,
    make_student_layers,
    specs_for,
    teacher_latents,
)
from ultrares.kernels.linfusion_format import save_linfusion

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRECISIONS = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _boot_comfyui(comfyui: str | None, device: str) -> None:
    from ultrares.devtools.comfy_host import ComfyNotFound, comfy_root, put_comfy_on_path

    try:
        root = comfyui or str(comfy_root())
    except ComfyNotFound as e:
        raise SystemExit(f"{e} (or pass --comfyui /path/to/ComfyUI)") from None
    if not os.path.isfile(os.path.join(root, "comfy", "sd.py")):
        raise SystemExit("ComfyUI not found: pass --comfyui /path/to/ComfyUI or set COMFYUI_PATH")
    put_comfy_on_path(Path(root))
    from comfy.cli_args import args

    args.cpu = device == "cpu"
    args.use_pytorch_cross_attention = True


def prediction_of(base) -> str:
    """``"v"`` for a ComfyUI v-prediction model (SD2.x-768-v), ``"eps"`` for an epsilon model;
    anything else (flow, EDM...) is refused with a message."""
    import comfy.model_base

    kind = getattr(base, "model_type", None)
    if kind == comfy.model_base.ModelType.EPS:
        return "eps"
    if kind == comfy.model_base.ModelType.V_PREDICTION:
        return "v"
    name = getattr(kind, "name", kind)
    raise SystemExit(
        f"--checkpoint: model type {name} is not supported; LinFusion distillation needs an "
        "epsilon- or v-prediction SD1.x/SD2.x/SDXL UNet"
    )


def prepare_teacher(model):
    """Load a ComfyUI MODEL (``ModelPatcher``) for training the way ComfyUI loads it for sampling.

    Returns ``(base_model, unet, denoiser)``: ``denoiser(x, sigma, **cond) -> x0_hat`` is
    ``base_model.apply_model``, which casts inputs to the model's own dtype. The weights keep the
    dtype ComfyUI built the model in (no ``.float()``: ``diffusion_model.dtype`` would still say
    fp16 and every layer would get fp16 inputs against fp32 weights); to train against an fp32
    teacher, load the checkpoint with ``model_options={"dtype": torch.float32}`` (``--precision fp32``).
    """
    import comfy.model_management as mm

    mm.load_models_gpu([model], force_full_load=True)
    base = model.model
    unet = base.diffusion_model
    dtype = base.manual_cast_dtype or base.get_dtype()
    if base.manual_cast_dtype is None:
        wrong = {p.dtype for p in unet.parameters() if p.is_floating_point() and p.dtype != dtype}
        if wrong:
            raise SystemExit(
                f"the UNet is built for {dtype} but holds {sorted(map(str, wrong))} weights; load it "
                "with the dtype you want (--precision) instead of casting it afterwards"
            )

    def denoiser(x, sigma, **cond):
        return base.apply_model(x, sigma, **cond)

    return base, unet, denoiser


def _load_image_latent(vae, path: str, resolution: int) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    img = Image.open(path).convert("RGB")
    scale = resolution / min(img.size)
    img = img.resize(
        (max(resolution, round(img.width * scale)), max(resolution, round(img.height * scale))), Image.BICUBIC
    )
    left, top = (img.width - resolution) // 2, (img.height - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.asarray(img).astype("float32") / 255.0)[None]  # [1,H,W,3]
    return vae.encode(pixels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python scripts/linfusion_distill.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", required=True, help="SD1.x/2.x/XL checkpoint (.safetensors) to distil from"
    )
    parser.add_argument(
        "--out", required=True, help="output: .safetensors file, or a folder (config.json + weights)"
    )
    parser.add_argument(
        "--images", help="folder of images with same-stem .txt captions; omit for data-free training"
    )
    parser.add_argument(
        "--prompts", default="", help="data-free: '|'-separated prompts for the teacher's samples"
    )
    parser.add_argument("--resolution", type=int, default=512, help="training resolution in pixels")
    parser.add_argument("--steps", type=int, default=1000, help="optimiser steps")
    parser.add_argument("--batch", type=int, default=1, help="latents per step")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (official 1e-4)")
    parser.add_argument(
        "--init",
        choices=["teacher", "random"],
        default="teacher",
        help="start from the teacher's projections (default) or the official fresh init",
    )
    parser.add_argument(
        "--mid-dim-scale",
        type=int,
        default=None,
        help="projection_mid_dim = C / scale (default: 16 for SDXL, full width otherwise)",
    )
    parser.add_argument(
        "--prefit-steps",
        type=int,
        default=200,
        help="layer-local warm-up passes before the official objective (0 = official recipe only)",
    )
    parser.add_argument(
        "--noise-weight", type=float, default=1.0, help="weight of the ground-truth noise loss (official 1.0)"
    )
    parser.add_argument(
        "--pool", type=int, default=8, help="data-free: teacher samples to draw and cycle through"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--precision",
        choices=sorted(PRECISIONS),
        default="auto",
        help="dtype of the frozen teacher UNet (auto: what ComfyUI picks for the device, e.g. fp16 "
        "on most GPUs, fp32 on the CPU); the LinFusion layers always train in fp32",
    )
    parser.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_PATH or the pack's .comfyui)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        parser.error(f"--checkpoint {args.checkpoint!r} does not exist")

    _boot_comfyui(args.comfyui, args.device)
    import comfy.sd

    dtype = PRECISIONS[args.precision]
    model, clip, vae, *_ = comfy.sd.load_checkpoint_guess_config(
        args.checkpoint,
        output_vae=True,
        output_clip=True,
        model_options={} if dtype is None else {"dtype": dtype},
    )
    if model is None:
        raise SystemExit(f"--checkpoint {args.checkpoint!r} holds no diffusion model")
    base, unet, denoiser = prepare_teacher(model)
    prediction = prediction_of(base)
    device = next(unet.parameters()).device
    family = type(base).__name__
    unet_config = model.model.model_config.unet_config
    mid_scale = args.mid_dim_scale if args.mid_dim_scale is not None else (16 if family == "SDXL" else None)
    specs = specs_for(unet, unet_config["num_res_blocks"], mid_scale)
    layers = make_student_layers(unet, specs, args.init)
    gen = torch.Generator().manual_seed(args.seed)
    latent_format = base.latent_format

    def encode(text: str) -> dict:
        cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        out = {"c_crossattn": cond.to(device)}
        px = args.resolution
        y = base.encode_adm(
            pooled_output=pooled, width=px, height=px, crop_w=0, crop_h=0, target_width=px, target_height=px
        )
        if y is not None:
            out["y"] = y.to(device)
        return out

    sigmas = base.model_sampling.sigmas.float().cpu()
    if args.images:
        pairs = image_caption_pairs(args.images)
        data = [
            (latent_format.process_in(_load_image_latent(vae, p, args.resolution)).to(device), encode(c))
            for p, c in pairs
        ]
    else:
        prompts = [p.strip() for p in args.prompts.split("|")] or [""]
        data = []
        lat = args.resolution // 8
        for i in range(args.pool):
            cond = encode(prompts[i % len(prompts)])
            data.append(
                (
                    teacher_latents(denoiser, (1, 4, lat, lat), cond, sigmas, generator=gen, device=device),
                    cond,
                )
            )
    distiller = Distiller(
        unet,
        denoiser,
        layers,
        sigmas=sigmas,
        config=DistillConfig(prediction=prediction, lr=args.lr, w_noise=args.noise_weight),
    )
    before = distiller.layer_errors(data[0][0], data[0][1], sigma=[float(sigmas[i]) for i in (100, 500, 900)])
    for step in range(args.prefit_steps):
        x0, cond = data[step % len(data)]
        mse = distiller.prefit(x0, cond, steps=1, generator=gen)
        if step % 50 == 0 or step == args.prefit_steps - 1:
            print(f"prefit {step + 1}/{args.prefit_steps} layer mse {mse:.5f}", flush=True)
    start = time.time()
    for step in range(args.steps):
        batch = [data[(step * args.batch + j) % len(data)] for j in range(args.batch)]
        x0 = torch.cat([b[0] for b in batch])
        cond = {k: torch.cat([b[1][k] for b in batch]) for k in batch[0][1]}
        terms = distiller.step(x0, cond, gen)
        if step % 50 == 0 or step == args.steps - 1:
            print(
                f"step {step + 1}/{args.steps} "
                + " ".join(f"{k} {v:.4f}" for k, v in terms.items())
                + f" ({time.time() - start:.0f}s)",
                flush=True,
            )
    after = distiller.layer_errors(data[0][0], data[0][1], sigma=[float(sigmas[i]) for i in (100, 500, 900)])
    print(
        f"mean per-layer attn1 relative error: {sum(before.values()) / len(before):.4f} -> "
        f"{sum(after.values()) / len(after):.4f}"
    )
    written = save_linfusion(
        args.out, [specs[p] for p in specs], [layers[p] for p in specs], dtype=torch.float16
    )
    print(f"wrote {written} ({len(specs)} layers, {family}, {prediction}-prediction losses)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
