"""Distil LinFusion layers from an SD-family checkpoint (any fine-tune) and write the official format.

    .venv/bin/python scripts/linfusion_distill.py --checkpoint my_sd15_finetune.safetensors \
        --out models/linfusion/my_linfusion.safetensors --steps 2000 [--images DIR]

ComfyUI, used as a library, loads the checkpoint, VAE and text encoder; the training step itself is
``ultrares.kernels.linfusion_distill.Distiller`` (comfy-free).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

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

def _boot_comfyui(comfyui: str | None, device: str) -> None:
    root = comfyui or os.environ.get("COMFYUI_PATH")
    if not root:
        recorded = os.path.join(ROOT, ".comfyui", "path")
        if os.path.isfile(recorded):
            root = open(recorded).read().strip()
    if not root or not os.path.isfile(os.path.join(root, "comfy", "sd.py")):
        raise SystemExit("ComfyUI not found: pass --comfyui /path/to/ComfyUI or set COMFYUI_PATH")
    if root not in sys.path:
        sys.path.insert(0, root)
    from comfy.cli_args import args

    args.cpu = device == "cpu"
    args.use_pytorch_cross_attention = True


def _load_image_latent(vae, path: str, resolution: int) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    img = Image.open(path).convert("RGB")
    scale = resolution / min(img.size)
    img = img.resize((max(resolution, round(img.width * scale)), max(resolution, round(img.height * scale))), Image.BICUBIC)
    left, top = (img.width - resolution) // 2, (img.height - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.asarray(img).astype("float32") / 255.0)[None]  # [1,H,W,3]
    return vae.encode(pixels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/linfusion_distill.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="SD1.x/2.x/XL checkpoint (.safetensors) to distil from")
    parser.add_argument("--out", required=True, help="output: .safetensors file, or a folder (config.json + weights)")
    parser.add_argument("--images", help="folder of images with same-stem .txt captions; omit for data-free training")
    parser.add_argument("--prompts", default="", help="data-free: '|'-separated prompts for the teacher's samples")
    parser.add_argument("--resolution", type=int, default=512, help="training resolution in pixels")
    parser.add_argument("--steps", type=int, default=1000, help="optimiser steps")
    parser.add_argument("--batch", type=int, default=1, help="latents per step")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (official 1e-4)")
    parser.add_argument("--init", choices=["teacher", "random"], default="teacher",
                        help="start from the teacher's projections (default) or the official fresh init")
    parser.add_argument("--mid-dim-scale", type=int, default=None,
                        help="projection_mid_dim = C / scale (default: 16 for SDXL, full width otherwise)")
    parser.add_argument("--prefit-steps", type=int, default=200,
                        help="layer-local warm-up passes before the official objective (0 = official recipe only)")
    parser.add_argument("--noise-weight", type=float, default=1.0,
                        help="weight of the ground-truth noise loss (official 1.0)")
    parser.add_argument("--pool", type=int, default=8, help="data-free: teacher samples to draw and cycle through")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_PATH or the pack's .comfyui)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        parser.error(f"--checkpoint {args.checkpoint!r} does not exist")

    _boot_comfyui(args.comfyui, args.device)
    import comfy.sd

    model, clip, vae, *_ = comfy.sd.load_checkpoint_guess_config(args.checkpoint, output_vae=True, output_clip=True)
    base = model.model
    unet = base.diffusion_model.to(args.device).float()
    family = type(base).__name__
    unet_config = model.model.model_config.unet_config
    mid_scale = args.mid_dim_scale if args.mid_dim_scale is not None else (16 if family == "SDXL" else None)
    specs = specs_for(unet, unet_config["num_res_blocks"], mid_scale)
    layers = make_student_layers(unet, specs, args.init)
    gen = torch.Generator().manual_seed(args.seed)
    latent_format = base.latent_format

    def encode(text: str) -> dict:
        cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        out = {"c_crossattn": cond.to(args.device)}
        px = args.resolution
        y = base.encode_adm(pooled_output=pooled, width=px, height=px, crop_w=0, crop_h=0, target_width=px, target_height=px)
        if y is not None:
            out["y"] = y.to(args.device)
        return out

    def denoiser(x, sigma, **cond):
        return base.apply_model(x, sigma, **cond)

    sigmas = base.model_sampling.sigmas.float().cpu()
    if args.images:
        pairs = image_caption_pairs(args.images)
        data = [(latent_format.process_in(_load_image_latent(vae, p, args.resolution)).to(args.device), encode(c)) for p, c in pairs]
    else:
        prompts = [p.strip() for p in args.prompts.split("|")] or [""]
        data = []
        lat = args.resolution // 8
        for i in range(args.pool):
            cond = encode(prompts[i % len(prompts)])
            data.append((teacher_latents(denoiser, (1, 4, lat, lat), cond, sigmas, generator=gen, device=args.device), cond))
    distiller = Distiller(unet, denoiser, layers, sigmas=sigmas, config=DistillConfig(lr=args.lr, w_noise=args.noise_weight))
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
            print(f"step {step + 1}/{args.steps} " + " ".join(f"{k} {v:.4f}" for k, v in terms.items())
                  + f" ({time.time() - start:.0f}s)", flush=True)
    after = distiller.layer_errors(data[0][0], data[0][1], sigma=[float(sigmas[i]) for i in (100, 500, 900)])
    print(f"mean per-layer attn1 relative error: {sum(before.values()) / len(before):.4f} -> "
          f"{sum(after.values()) / len(after):.4f}")
    written = save_linfusion(args.out, [specs[p] for p in specs], [layers[p] for p in specs], dtype=torch.float16)
    print(f"wrote {written} ({len(specs)} layers, {family})")
    return 0


if __name__ == "__main__":
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
