"""Sample grid from an HDiT inference file (comfy-free): one row per class, plus an unconditional row.

    .venv/bin/python scripts/hdit_sample_grid.py models/hdit/ultrares-emoji64.safetensors \
        docs/images/hdit_samples.png --per-class 8 --steps 30 --cfg 2.5
"""

from __future__ import annotations

import argparse

import torch
from PIL import Image
from ultrares.kernels import hdit as H
from ultrares.kernels import hdit_format, schedules


def sample(model, cfg, n, class_id, steps, cfg_scale, seed):
    """``n`` samples of ``class_id`` (None = unconditional): uint8 ``[n, 3, S, S]``."""
    den = H.Denoiser(model, cfg.sigma_data)
    g = torch.Generator().manual_seed(seed)
    size = cfg.input_size
    noise = torch.randn(n, cfg.input_channels, size[0], size[1], generator=g)
    sig = schedules.karras_sigmas(steps, cfg.sigma_min, cfg.sigma_max, convention="k-diffusion")
    uncond = cfg.num_classes
    cls = None
    if cfg.num_classes:
        cls = torch.full((n,), uncond if class_id is None else class_id, dtype=torch.long)
    scale = 1.0 if class_id is None else cfg_scale
    x = schedules.sample_dpmpp_2m(den, noise, sig, cls, cfg_scale=scale, uncond_class=uncond)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def grid(rows: list[torch.Tensor], pad: int = 2) -> Image.Image:
    n = max(r.shape[0] for r in rows)
    s = rows[0].shape[-1]
    canvas = torch.full((3, len(rows) * (s + pad) + pad, n * (s + pad) + pad), 255, dtype=torch.uint8)
    for i, r in enumerate(rows):
        for j in range(r.shape[0]):
            y, x = pad + i * (s + pad), pad + j * (s + pad)
            canvas[:, y : y + s, x : x + s] = r[j]
    return Image.fromarray(canvas.permute(1, 2, 0).numpy())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("out")
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--cfg", type=float, default=2.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", default="all", help="comma-separated class ids, or 'all'")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, cfg = hdit_format.load_checkpoint(args.weights)
    ids = list(range(cfg.num_classes)) if args.classes == "all" else [int(c) for c in args.classes.split(",")]
    rows = []
    with torch.no_grad():
        for k, c in enumerate(ids + [None]):
            rows.append(sample(model, cfg, args.per_class, c, args.steps, args.cfg, args.seed + k))
    grid(rows).save(args.out)
    print(f"wrote {args.out}: rows = classes {ids} + unconditional")


if __name__ == "__main__":
    main()
