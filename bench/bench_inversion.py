"""DDIM inversion (UnseenDiffusion): reconstruction PSNR and seconds vs steps on the embedded emoji HDiT.

Three out-of-domain photos bundled with scikit-image (astronaut, coffee, chelsea; centre-cropped and
area-resized to 64x64) and three in-domain Twemoji (composited on the training background, as the
model saw them) are inverted with ``UltraResDDIMInvert`` (level 1.0 = sigma_max, karras schedule,
unconditional) and generated back with ``UltraResDDIMGenerate``, all six in one batch. PSNR is on
[0, 1] RGB against the 64x64 input. Seconds are for invert + generate; the ratio column divides
them (smallest step count only) by twice one stock ``KSamplerAdvanced`` euler run of the same steps on
the same batch in the same process (the same number of model evaluations): our loop's overhead.

``python bench/bench_inversion.py --figure docs/images/inversion_ood.png`` also writes the
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "hdit", "ultrares-twemoji64.safetensors")
PHOTOS = ("astronaut", "coffee", "chelsea")
EMOJI = ("1f600", "1f98a", "1f355")  # grinning face, fox, pizza
DOMAIN_STEPS = 10


def _boot():
    from ultrares.devtools import comfy_host

    return comfy_host.boot(cpu=True)


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


def emoji(size: int = 64, codes=EMOJI) -> torch.Tensor:
    """``[N, size, size, 3]`` float in [0, 1]: Twemoji on the embedded model's training background."""
    from PIL import Image
    from ultrares.kernels import hdit_train

    files = {os.path.basename(f)[:-4]: f for f in hdit_train.twemoji_files()}
    out = []
    for code in codes:
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


def run(
    quick: bool, figure: str | None = None, steps: tuple[int, ...] | None = None, lite: bool = False
) -> dict:
    """``lite``: photos only, no stock-sampler baseline and no domain score (for a loaded machine)."""
    if not os.path.exists(MODEL):
        raise FileNotFoundError(f"{MODEL} is missing: train/export the embedded HDiT model first")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    rt = _boot()
    model, vae, _ = rt.run_node("UltraResHDiTLoader", model_name=os.path.basename(MODEL))
    cond, _ = rt.run_node("UltraResHDiTClass", class_id=0, unconditional=True)
    images = photos() if lite else torch.cat([photos(), emoji()])
    steps_list = steps or ((2, 4) if quick else (10, 25, 50))
    rows, recs = [], {}
    for k, steps in enumerate(steps_list):
        start = time.perf_counter()
        out, _ = reconstruct(rt, model, vae, cond, images, steps)
        ours = time.perf_counter() - start
        ratio = ""
        if (
            k == 0 and not lite
        ):  # one stock run at the smallest step count (CPU time is scarce on 2 shared cores)
            (lat,) = rt.run_node("VAEEncode", pixels=images, vae=vae)
            start = time.perf_counter()
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
            ratio = round(ours / (2 * (time.perf_counter() - start)), 2)
        p = psnr_each(out, images)
        recs[steps] = out
        print(f"steps {steps}: PSNR {[round(v, 2) for v in p]}, {ours:.1f} s", flush=True)
        rows.append(
            [
                steps,
                *[round(v, 2) for v in p[:3]],
                round(float(np.mean(p[3:])), 2) if not lite else "",
                round(ours, 1),
                ratio,
            ]
        )
    notes = []
    if not quick and not lite:
        notes.append(domain_note(rt, model, vae, cond))
    if figure:
        save_figure(images[:3], recs[steps_list[-1]][:3], steps_list[-1], figure)
    return {
        "title": "DDIM inversion -> generation on the embedded emoji HDiT (64x64, karras, level 1.0): PSNR dB",
        "columns": [
            "steps",
            *PHOTOS,
            "emoji (mean of 3)",
            f"seconds ({len(images)} images)",
            "x 2 KSampler runs",
        ],
        "rows": rows,
        "notes": [
            "photos are out of the model's domain (emoji); PSNR against the 64x64 input in [0, 1]",
            "ratio (first row) = our invert + generate seconds / twice one stock euler KSamplerAdvanced run (same evaluations)",
            *notes,
        ],
        "targets": {
            "psnr rises with steps": all(a[c] < b[c] for a, b in zip(rows, rows[1:]) for c in (1, 2, 3))
        },
    }


def domain_note(rt, model, vae, cond, n_ref: int = 24, n_test: int = 8) -> str:
    """Invert emoji (reference + held-out) and the photos; score them with UltraResDomainScore."""
    from ultrares.kernels import hdit_train

    codes = [os.path.basename(f)[:-4] for f in hdit_train.twemoji_files()]
    pick = np.random.default_rng(0).choice(len(codes), n_ref + n_test, replace=False)
    images = torch.cat([emoji(codes=[codes[i] for i in pick]), photos()])
    (lat,) = rt.run_node("VAEEncode", pixels=images, vae=vae)
    (noise,) = rt.run_node(
        "UltraResDDIMInvert",
        model=model,
        latent=lat,
        steps=DOMAIN_STEPS,
        level=1.0,
        scheduler="karras",
        positive=cond,
    )
    z = noise["samples"]
    meta = {"ultrares_inversion": noise["ultrares_inversion"]}
    report, _, _ = rt.run_node(
        "UltraResDomainScore",
        latents={"samples": z[n_ref:], **meta},
        percentile=95.0,
        reference={"samples": z[:n_ref], **meta},
    )
    verdicts = [ln.split()[-1] == "in-domain" for ln in report.splitlines() if ln[:5].strip().isdigit()]
    held, ood = verdicts[:n_test], verdicts[n_test:]
    return (
        f"domain score ({DOMAIN_STEPS}-step inversions, reference = {n_ref} random emoji, 95th percentile): "
        f"{sum(held)}/{n_test} held-out emoji and {sum(ood)}/{len(ood)} photos judged in-domain"
    )


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
    parser.add_argument(
        "--steps", default="", help="comma-separated step counts (default 10,25,50; quick 2,4)"
    )
    parser.add_argument("--lite", action="store_true", help="photos only, no baseline, no domain score")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import json
    import platform

    from run_all import format_table

    start = time.perf_counter()
    steps = tuple(int(v) for v in args.steps.split(",") if v) or None
    result = run(args.quick, figure=args.figure, steps=steps, lite=args.lite)
    result["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "quick": args.quick}
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(format_table(result))
    for note in result["notes"]:
        print("-", note)
    os.makedirs(os.path.join(ROOT, "bench_results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench_results", "inversion.json"), "w") as f:
        json.dump(result, f, indent=2)
