"""DDIM inversion (UnseenDiffusion): reconstruction PSNR and seconds vs steps on the embedded emoji HDiT.

Three out-of-domain photos bundled with scikit-image (astronaut, coffee, chelsea; centre-cropped and
area-resized to 64x64) and three in-domain Twemoji (composited on the training background, as the
model saw them) are inverted with ``UltraResDDIMInvert`` (level 1.0 = sigma_max, karras schedule,
unconditional) and generated back with ``UltraResDDIMGenerate``, all six in one batch. PSNR is on
[0, 1] RGB against the 64x64 input. Seconds are for invert + generate; the ratio column divides
them by two stock ``KSamplerAdvanced`` euler runs of the same steps on the same batch in the same
process (the same number of model evaluations), so it measures our loop's overhead.

``python tests/bench/bench_inversion.py --figure docs/images/inversion_ood.png`` also writes the
README figure (input | reconstruction per photo, at the largest step count).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "models", "hdit", "ultrares-emoji64.safetensors")
PHOTOS = ("astronaut", "coffee", "chelsea")
EMOJI = ("1f600", "1f98a", "1f355")  # grinning face, fox, pizza


def _boot():
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from harness import boot

    return boot.boot()


def photos(size: int = 64) -> torch.Tensor:
    """``[3, size, size, 3]`` float in [0, 1]: scikit-image's photos, centre square, area-resized."""
    import skimage.data

    out = []
    for name in PHOTOS:
        img = torch.from_numpy(getattr(skimage.data, name)()).float() / 255.0
        h, w = img.shape[:2]
        s = min(h, w)
        img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        out.append(
            F.interpolate(img.permute(2, 0, 1)[None], size=(size, size), mode="area")[0].permute(1, 2, 0)
        )
    return torch.stack(out)


def emoji(size: int = 64) -> torch.Tensor:
    """``[3, size, size, 3]`` float in [0, 1]: Twemoji on the embedded model's training background."""
    from PIL import Image
    from ultrares.kernels import hdit_train

    files = {os.path.basename(f)[:-4]: f for f in hdit_train.twemoji_files()}
    out = []
    for code in EMOJI:
        im = Image.open(files[code]).convert("RGBA")
        bg = Image.new("RGBA", im.size, tuple(hdit_train.BACKGROUND) + (255,))
        im = Image.alpha_composite(bg, im).convert("RGB").resize((size, size), Image.LANCZOS)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0))
    return torch.stack(out)


def reconstruct(rt, model, vae, cond, images, steps, level=1.0, scheduler="karras", refine_iters=0):
    (lat,) = rt.run_node("VAEEncode", pixels=images, vae=vae)
    (noise,) = rt.run_node(
        "UltraResDDIMInvert",
        model=model,
        latent=lat,
        steps=steps,
        level=level,
        scheduler=scheduler,
        positive=cond,
        refine_iters=refine_iters,
    )
    (rec,) = rt.run_node(
        "UltraResDDIMGenerate",
        model=model,
        noise=noise,
        steps=steps,
        level=level,
        scheduler=scheduler,
        positive=cond,
    )
    (out,) = rt.run_node("VAEDecode", samples=rec, vae=vae)
    return out.clamp(0, 1), noise


def psnr_each(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    from ultrares.kernels.inversion import psnr

    return [psnr(x, y) for x, y in zip(a, b)]


def run(quick: bool, figure: str | None = None) -> dict:
    if not os.path.exists(MODEL):
        raise FileNotFoundError(f"{MODEL} is missing: train/export the embedded HDiT model first")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    rt = _boot()
    model, vae, _ = rt.run_node("UltraResHDiTLoader", model_name=os.path.basename(MODEL))
    cond, _ = rt.run_node("UltraResHDiTClass", class_id=0, unconditional=True)
    images = torch.cat([photos(), emoji()])
    steps_list = (5, 10) if quick else (10, 25, 50, 100)
    rows, recs = [], {}
    for steps in steps_list:
        start = time.perf_counter()
        out, _ = reconstruct(rt, model, vae, cond, images, steps)
        ours = time.perf_counter() - start
        (lat,) = rt.run_node("VAEEncode", pixels=images, vae=vae)
        start = time.perf_counter()
        for _ in range(2):
            rt.run_node(
                "KSamplerAdvanced",
                model=model,
                add_noise="disable",
                noise_seed=0,
                steps=steps,
                cfg=1.0,
                sampler_name="euler",
                scheduler="karras",
                positive=cond,
                negative=cond,
                latent_image=lat,
                start_at_step=0,
                end_at_step=10000,
                return_with_leftover_noise="disable",
            )
        base = time.perf_counter() - start
        p = psnr_each(out, images)
        recs[steps] = out
        rows.append(
            [
                steps,
                0,
                *[round(v, 2) for v in p[:3]],
                round(float(np.mean(p[3:])), 2),
                round(ours, 1),
                round(ours / base, 2),
            ]
        )
    mid = steps_list[len(steps_list) // 2]
    out, _ = reconstruct(rt, model, vae, cond, images, mid, refine_iters=1)
    p = psnr_each(out, images)
    rows.append([mid, 1, *[round(v, 2) for v in p[:3]], round(float(np.mean(p[3:])), 2), "", ""])
    if figure:
        save_figure(images[:3], recs[steps_list[-1]][:3], steps_list[-1], figure)
    return {
        "title": "DDIM inversion -> generation on the embedded emoji HDiT (64x64, karras, level 1.0): PSNR dB",
        "columns": [
            "steps",
            "refine",
            *PHOTOS,
            "emoji (mean of 3)",
            "seconds (6 images)",
            "x 2 KSampler runs",
        ],
        "rows": rows,
        "notes": [
            "photos are out of the model's domain (emoji); PSNR against the 64x64 input in [0, 1]",
            "ratio = our invert + generate seconds / two stock euler KSamplerAdvanced runs (same evaluations)",
        ],
        "targets": {
            "psnr rises with steps": all(a[2] < b[2] for a, b in zip(rows, rows[1 : len(steps_list)]))
        },
    }


def save_figure(inputs: torch.Tensor, outputs: torch.Tensor, steps: int, path: str, scale: int = 3) -> None:
    """Input | reconstruction pairs side by side, nearest-upscaled, PSNR under each pair."""
    from PIL import Image, ImageDraw

    n, h, w, _ = inputs.shape
    gap, label = 8, 16
    canvas = Image.new("RGB", (n * (2 * w * scale + gap) - gap, h * scale + label), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        x = i * (2 * w * scale + gap)
        for j, img in enumerate((inputs[i], outputs[i])):
            arr = (img.numpy() * 255).round().clip(0, 255).astype(np.uint8)
            tile = Image.fromarray(arr).resize((w * scale, h * scale), Image.NEAREST)
            canvas.paste(tile, (x + j * w * scale, 0))
        p = psnr_each(outputs[i : i + 1], inputs[i : i + 1])[0]
        draw.text((x + 4, h * scale + 2), f"{PHOTOS[i]}: input | {steps} steps, {p:.1f} dB", fill=(0, 0, 0))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--figure", default=None, help="write the input | reconstruction figure here")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from run_all import format_table

    result = run(args.quick, figure=args.figure)
    print(format_table(result))
