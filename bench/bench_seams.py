"""Seams at equal cost: FSTD vs overlapping tiles vs SpotDiffusion on a trained model, relay 256 -> 1024 px.

The task is relay stage two of the shipped relay-trained HDiT (models/hdit/ultrares-emoji-relay256,
trained 64 -> 256 px at factor 4): a held-out 256 px Fluent emoji (kernels/emoji_data, never
trained on), nearest-upsampled x4 to 1024 px and finished by UltraResRelayUpscale with the model's
own relay settings (``relay_settings="model"``: blur_sigma_max 3, prob_length 0.93, s_block 0.15,
s_noise 0.2; factor 4, truncation sigma 0.9, rho 7, cfg 1) on the model patched by
UltraResTiledDiffusion in 256 px tiles (the model's native size), and once untiled as the
reference. Everything runs through ComfyUI in this process (the shared dev-tools host, ``ultrares.devtools.comfy_host``).

Per method:
- seam score (kernels/quality.seam_score): Sobel gradient energy on the tile boundaries / in the
  interior, band 1 px; the boundaries are the union of the tile edges of the **last 3 sampler
  steps'** plans (kernels/quality.tile_boundaries on the node's own plan). 1.0 = invisible. The
  untiled image scored on the same lines is the content's own level (object edges that happen to
  lie on a line); the table shows both, averaged over images x seeds.
- model evaluations: the pixels every diffusion-model call saw (an APPLY_MODEL wrapper counts each
  tile batch) / the image's pixels, per image: tile overlap and FSTD's full-coverage first step
  included. The sampler's denoiser calls (Heun: 2 per level, 1 for the last) are the same for all.
- seconds per image: wall-clock and this process's CPU time, with their ratio to untiled measured
  in the same process. On a shared CPU wall-clock is noisy; CPU time is the work done.

CPU budget: one HDiT evaluation of a 256 px tile takes about a second on 2 cores, so a 1024 px
image costs ~16 s per sampler evaluation. The full run therefore uses 1 image x 1 seed and a
nominal grid of ``STEPS_FULL`` levels (the model's own is 40: 16 levels below the truncation, 31
evaluations), of which those below 0.9 run; quick mode samples 128 -> 512 px with fewer steps.
FD is not computed: it needs hundreds of images, not one or two.
"""

from __future__ import annotations

import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "ultrares-emoji-relay256.safetensors"
METHODS = ["FSTD", "FSTD (full coverage)", "MultiDiffusion", "Mixture of Diffusers", "SpotDiffusion"]
UNTILED = "untiled"
TILE_PX = 256
OVERLAP_PX = 64  # the node's default; at 1024 px the evenly spread 5x5 grid overlaps by 64 px anyway
RESET_INTERVAL = 4  # FSTD's official default
FACTOR = 4
LAST_STEPS = 3  # the steps whose grids count as boundaries
BAND = 1
STEPS_FULL = 10  # nominal Karras levels (the model's own: 40); 4 of them lie below the truncation sigma 0.9
STEPS_QUICK = 3  # 1 level below 0.9 (the final denoise only): a smoke run
FULL = {"side": 1024, "images": 1, "seeds": [0], "steps": STEPS_FULL}
QUICK = {"side": 512, "images": 1, "seeds": [0], "steps": STEPS_QUICK}
PICTURE = os.path.join(ROOT, "docs", "images", "seams_1024.png")
SAVED = os.path.join(
    ROOT, "runs", "seams", "images.pt"
)  # the full run's images (git-ignored), to redraw the picture
CROP = 256  # px around a corner of the 256 px grid in the picture
MAX_PICTURE_BYTES = 600_000


def _boot():
    from ultrares.devtools import comfy_host

    return comfy_host.boot(cpu=True)


def held_out_images(n: int, size: int) -> torch.Tensor:
    """float [n, 3, size, size] in [0, 1]: the ``n`` held-out Fluent emoji with the most detail (mean
    Sobel gradient magnitude at 256 px) among those drawn on at least half of their area (so that
    every tile has content), box-averaged from 256 px to ``size`` when smaller."""
    import kornia
    from ultrares.kernels import emoji_data

    cache = os.path.join(ROOT, "assets", "cache")
    try:
        data = emoji_data.load_fluent_dataset(
            cache_dir=cache, size=256, root=os.path.join(ROOT, emoji_data.FLUENT_DIR)
        )
    except Exception as e:  # not installed: say how to install it
        raise RuntimeError(
            f"the Fluent emoji set is not installed ({e}); run scripts/assets/emoji_data.sh"
        ) from None
    held = data["images"][data["holdout"]]  # uint8 [N, 3, 256, 256]
    drawn = (held < 240).any(dim=1).float().mean(dim=(1, 2))
    detail = (
        kornia.filters.spatial_gradient(held.float() / 255, normalized=True)
        .pow(2)
        .sum(2)
        .sqrt()
        .mean((1, 2, 3))
    )
    detail = torch.where(drawn >= 0.5, detail, torch.zeros_like(detail))
    pick = held[torch.argsort(detail, descending=True, stable=True)[:n]]
    if size < 256:
        pick = emoji_data.box_downscale(pick, 256 // size)
    return pick.float() / 255


def run(quick: bool) -> dict:
    rt = _boot()
    import comfy.patcher_extension as pe
    from ultrares.kernels import hdit_format, quality, relay
    from ultrares.kernels.tiled_diffusion import TiledRun, TileSettings

    conf = QUICK if quick else FULL
    side, steps = conf["side"], conf["steps"]
    low = held_out_images(conf["images"], side // FACTOR)
    model, vae, _ = rt.run_node("UltraResHDiTLoader", model_name=MODEL, weight_dtype="float32")
    pos, _ = rt.run_node("UltraResHDiTClass", class_id=0, unconditional=True)
    trained = hdit_format.trained_relay(model)
    levels = len(relay.relay_sigmas(steps, 0.002, 80.0, trained.rho, trained.truncation_sigma)) - 1

    seen = {"px": 0}

    def count(executor, x, *args, **kwargs):
        seen["px"] += x.shape[0] * x.shape[-2] * x.shape[-1]
        return executor(x, *args, **kwargs)

    base = model.clone()
    base.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "ultrares_bench_seams", count)
    models = {UNTILED: base}
    for m in METHODS:
        models[m] = None  # patched per seed (the tiling seed follows the sampling seed)

    images: dict[str, list[torch.Tensor]] = {k: [] for k in models}
    stats: dict[str, dict[str, list[float]]] = {k: {"evals": [], "wall": [], "cpu": []} for k in models}
    lines: dict[str, list[tuple[list[int], list[int]]]] = {m: [] for m in METHODS}
    for seed in conf["seeds"]:
        for i in range(low.shape[0]):
            latent = {"samples": low[i : i + 1] * 2 - 1}
            for name in [UNTILED, *METHODS]:
                m = base
                if name != UNTILED:
                    (m,) = rt.run_node(
                        "UltraResTiledDiffusion",
                        model=base,
                        method=name,
                        tile_width=TILE_PX,
                        tile_height=TILE_PX,
                        overlap=OVERLAP_PX,
                        tile_batch_size=4,
                        reset_interval=RESET_INTERVAL,
                        seed=seed,
                    )
                    plan = TiledRun(
                        TileSettings.from_label(
                            name,
                            tile_width=TILE_PX,
                            tile_height=TILE_PX,
                            overlap=OVERLAP_PX,
                            reset_interval=RESET_INTERVAL,
                            seed=seed,
                        ),
                        side,
                        side,
                        ratio=1,
                    )
                    lines[name].append(
                        quality.tile_boundaries(plan, range(max(0, levels - LAST_STEPS), levels))
                    )
                seen["px"] = 0
                w0, c0 = time.perf_counter(), time.process_time()
                (out,) = rt.run_node(
                    "UltraResRelayUpscale",
                    model=m,
                    positive=pos,
                    latent=latent,
                    factor=FACTOR,
                    seed=seed,
                    steps=steps,
                    truncation_sigma=trained.truncation_sigma,
                    rho=trained.rho,
                    cfg=1.0,
                    blur_sigma_max=0.0,
                    prob_length=0.93,
                    s_block=0.15,
                    s_noise=0.2,
                    s_churn=0.0,
                    s_tmin=0.0,
                    s_tmax=1000.0,
                    s_churn_noise=1.0,
                    relay_settings="model",
                )
                stats[name]["wall"].append(time.perf_counter() - w0)
                stats[name]["cpu"].append(time.process_time() - c0)
                stats[name]["evals"].append(seen["px"] / (side * side))
                images[name].append(((out["samples"].float() + 1) / 2).clamp(0, 1))
                print(f"  seeds {seed} image {i} {name}: {stats[name]['wall'][-1]:.1f} s", flush=True)

    mean = lambda v: sum(v) / len(v)  # noqa: E731
    ref = stats[UNTILED]
    rows, scores, excess = [], {}, {}
    for name in [UNTILED, *METHODS]:
        if name == UNTILED:
            own = control = rel = "-"
        else:
            own = mean(
                [quality.seam_score(img, *ln, band=BAND) for img, ln in zip(images[name], lines[name])]
            )
            control = mean(
                [quality.seam_score(img, *ln, band=BAND) for img, ln in zip(images[UNTILED], lines[name])]
            )
            scores[name], excess[name] = own, own / control
            own, control, rel = round(own, 3), round(control, 3), round(own / control, 3)
        rows.append(
            [
                name,
                own,
                control,
                rel,
                round(mean(stats[name]["evals"]), 2),
                round(mean(stats[name]["wall"]), 1),
                round(mean(stats[name]["wall"]) / mean(ref["wall"]), 2),
                round(mean(stats[name]["cpu"]), 1),
                round(mean(stats[name]["cpu"]) / mean(ref["cpu"]), 2),
            ]
        )
    evals = {r[0]: r[4] for r in rows}
    fstd, md = scores["FSTD"], scores["MultiDiffusion"]
    cost = evals["FSTD"] / evals["MultiDiffusion"]
    reached = excess["FSTD"] <= excess["MultiDiffusion"]
    claim = {
        "fstd_seam": round(fstd, 3),
        "multidiffusion_seam": round(md, 3),
        "fstd_seam_vs_untiled": round(excess["FSTD"], 3),
        "multidiffusion_seam_vs_untiled": round(excess["MultiDiffusion"], 3),
        "fstd_cost_vs_multidiffusion": round(cost, 3),
        "fstd_reaches_multidiffusion_seam (seam / untiled's on the same lines)": reached,
        "holds (reached at <= 2/3 of MultiDiffusion's evaluations)": reached and cost <= 2 / 3,
    }
    result = {
        "title": f"Seams at equal cost: relay stage two {side // FACTOR} -> {side} px, relay-trained HDiT, "
        f"{TILE_PX} px tiles, CPU",
        "columns": [
            "method",
            "seam score",
            "untiled on the same lines",
            "seam / untiled's",
            "model evaluations (full-image)",
            "s / image",
            "s vs untiled",
            "CPU s / image",
            "CPU s vs untiled",
        ],
        "rows": rows,
        "claim": claim,
        "settings": {
            "model": MODEL,
            "side": side,
            "input_px": side // FACTOR,
            "tile_px": TILE_PX,
            "overlap_px": OVERLAP_PX,
            "reset_interval": RESET_INTERVAL,
            "nominal_steps": steps,
            "levels_below_truncation": levels,
            "sampler_evaluations": 2 * levels - 1,
            "images": conf["images"],
            "seeds": conf["seeds"],
            "last_steps": LAST_STEPS,
            "band_px": BAND,
            "relay": {k: getattr(trained, k) for k in ("truncation_sigma", "rho", "steps")}
            | {
                "blur_sigma_max": trained.settings.blur_sigma_max,
                "prob_length": trained.settings.prob_length,
                "s_block": trained.settings.s_block,
                "s_noise": trained.settings.s_noise,
            },
        },
        "notes": [
            "seam score = mean Sobel gradient magnitude within 1 px of the tile edges of the last "
            f"{LAST_STEPS} sampler steps' plans / the same elsewhere (1.0 = invisible); 'untiled on the same "
            "lines' scores the untiled image on those lines (the content's own level)",
            "model evaluations = pixels seen by the diffusion model / image pixels, per image (tile overlap and "
            "FSTD's full-coverage first step included)",
            f"{conf['images']} held-out image(s) x {len(conf['seeds'])} seed(s); nominal grid of {steps} levels "
            f"(the model's own: {trained.steps}), {levels} below the truncation sigma "
            f"{trained.truncation_sigma}: {2 * levels - 1} sampler evaluations (Heun)",
            "seconds: this process on a shared CPU; compare ratios only. FD not computed (needs hundreds of images)",
        ],
    }
    if not quick:
        first = {m: lines[m][0] for m in METHODS}
        os.makedirs(os.path.dirname(SAVED), exist_ok=True)
        torch.save({"images": {k: v[0] for k, v in images.items()}, "scores": scores, "lines": first}, SAVED)
        result["picture"] = os.path.relpath(
            save_picture({k: v[0] for k, v in images.items()}, scores, first), ROOT
        )
    return result


def save_picture(
    images: dict[str, torch.Tensor], scores: dict[str, float], lines: dict[str, tuple[list[int], list[int]]]
) -> str:
    """One column per method: a CROP px crop around the interior corner of the 256 px grid where the
    untiled image has the most gradient energy, and below it ``|method - untiled|`` on the same crop,
    scaled by one gain for all methods (the 99.5th percentile of all differences -> white): tile
    structure shows as straight lines there. Below the untiled crop: the whole untiled image with the
    crop's box. Red ticks on the crop's top and left edges mark where that method's scored boundary
    lines cross it. ``images``: name -> float [1, 3, H, W] in [0, 1]. Saved as PNG at PICTURE."""
    import kornia
    from PIL import Image, ImageDraw

    names = [UNTILED, *METHODS]
    ref = images[UNTILED]
    side = ref.shape[-1]
    half, zoom, head = CROP // 2, 1, 22
    mag = kornia.filters.spatial_gradient(ref, normalized=True).pow(2).sum(2).sqrt().mean(1)[0]
    corners = [(y, x) for y in range(TILE_PX, side, TILE_PX) for x in range(TILE_PX, side, TILE_PX)]
    cy, cx = max(
        corners, key=lambda p: float(mag[p[0] - half : p[0] + half, p[1] - half : p[1] + half].mean())
    )
    cell = CROP * zoom
    sheet = Image.new("RGB", (len(names) * cell, 2 * (cell + head)), "white")
    draw = ImageDraw.Draw(sheet)

    def paste(t: torch.Tensor, x: int, y: int, resample=Image.NEAREST) -> None:
        arr = (t.clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        sheet.paste(Image.fromarray(arr).resize((cell, cell), resample), (x, y))

    box = (slice(None), slice(cy - half, cy + half), slice(cx - half, cx + half))
    diffs = {n: (images[n][0][box] - ref[0][box]).abs().mean(0, keepdim=True) for n in METHODS}
    gain = 1.0 / max(float(torch.quantile(torch.cat([d.flatten() for d in diffs.values()]), 0.995)), 1e-6)
    paste(ref[0], 0, 2 * head + cell, Image.BOX)
    s = cell / side
    draw.rectangle(
        [
            (cx - half) * s,
            2 * head + cell + (cy - half) * s,
            (cx + half) * s,
            2 * head + cell + (cy + half) * s,
        ],
        outline=(220, 0, 0),
        width=2,
    )

    for k, name in enumerate(names):
        crop = images[name][0, :, cy - half : cy + half, cx - half : cx + half]
        x = k * cell
        paste(crop, x, head)
        draw.text((x + 4, 5), name if name == UNTILED else f"{name}: seam {scores[name]:.2f}", fill="black")
        if name != UNTILED:
            paste(diffs[name].expand(3, -1, -1) * gain, x, 2 * head + cell)
            draw.text((x + 4, cell + head + 5), f"|{name} - untiled| x{gain:.0f}", fill="black")
        bx, by = lines.get(name, ([], []))
        for v in bx:
            if cx - half <= v < cx + half:
                px = x + (v - (cx - half)) * zoom
                draw.line([(px, head), (px, head + 8)], fill=(220, 0, 0), width=2)
        for v in by:
            if cy - half <= v < cy + half:
                py = head + (v - (cy - half)) * zoom
                draw.line([(x, py), (x + 8, py)], fill=(220, 0, 0), width=2)
    draw.text((4, cell + head + 5), f"untiled {side} px; crop {CROP} px at x, y = {cx}, {cy}", fill="black")
    os.makedirs(os.path.dirname(PICTURE), exist_ok=True)
    sheet.save(PICTURE, optimize=True)
    if (
        os.path.getsize(PICTURE) > MAX_PICTURE_BYTES
    ):  # noisy difference maps: fall back to a 256-colour palette
        sheet.quantize(256, dither=Image.Dither.NONE).save(PICTURE, optimize=True)
    return PICTURE


if __name__ == "__main__":
    import json

    if "--picture" in sys.argv:  # redraw the picture from the last full run's images
        saved = torch.load(SAVED, weights_only=True)
        print(save_picture(saved["images"], saved["scores"], saved["lines"]))
    else:
        print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
