"""FSTD vs overlapping-tile baselines: work per step, seconds per step, peak memory.

Same model for every method (the tiny SD1.5-architecture UNet: real block layout, reduced width;
512 px tiles = 64x64 latent, where self-attention over 4,096 tokens dominates, as in SD1.5),
same sampler (euler, CFG 7: cond+uncond per tile). MultiDiffusion uses the overlap
ComfyUI-TiledDiffusion defaults to (64 px on 768 px tiles) scaled to 512 px tiles: 40 px.
"""

from __future__ import annotations

import gc

from _common import PeakRSS, boot, timer, tiny

METHODS = ["FSTD", "FSTD (full coverage)", "MultiDiffusion", "Mixture of Diffusers", "SpotDiffusion"]
TILE_PX = 512
OVERLAP_PX = 40  # 64 * 512 / 768 = 42.7, rounded to a multiple of 8


def area_ratio(method: str, side: int) -> float:
    import ultrares.kernels.tiling as tiling

    key = {"FSTD": "fstd", "FSTD (full coverage)": "fstd_full", "MultiDiffusion": "multidiffusion",
           "Mixture of Diffusers": "mixture_of_diffusers", "SpotDiffusion": "spotdiffusion"}[method]
    lat = side // 8
    planner = tiling.TilePlanner(key, lat, lat, TILE_PX // 8, TILE_PX // 8, overlap=OVERLAP_PX // 8, seed=0)
    ratios = [planner.plan(s).tile_area_ratio for s in range(16)]
    return sum(ratios) / len(ratios)


def run(quick: bool) -> dict:
    import torch

    comfy = boot()
    model, clip, _ = tiny("sd15")
    pos = comfy.run_node("CLIPTextEncode", clip=clip, text="a city")[0]
    neg = comfy.run_node("CLIPTextEncode", clip=clip, text="")[0]
    sizes = [1024] if quick else [1024, 2048]
    steps = 1 if quick else 2
    rows, per_step = [], {}
    for side in sizes:
        latent = {"samples": torch.zeros(1, 4, side // 8, side // 8)}
        for method in METHODS:
            (patched,) = comfy.run_node("UltraResTiledDiffusion", model=model, method=method, tile_width=TILE_PX,
                                        tile_height=TILE_PX, overlap=OVERLAP_PX, tile_batch_size=4,
                                        reset_interval=4, seed=0)
            args = dict(model=patched, seed=0, cfg=7.0, sampler_name="euler", scheduler="normal", positive=pos,
                        negative=neg, latent_image=latent, denoise=1.0)
            comfy.run_node("KSampler", steps=1, **args)  # warm-up (allocator, caches)
            gc.collect()
            with PeakRSS() as mem, timer() as t:
                comfy.run_node("KSampler", steps=steps, **args)
            per_step[(side, method)] = t["s"] / steps
            rows.append([f"{side}x{side}", method, round(area_ratio(method, side), 3), round(t["s"] / steps, 2),
                         round(mem.mib, 1)])
    for row in rows:
        side = int(row[0].split("x")[0])
        row.append(round(per_step[(side, "MultiDiffusion")] / per_step[(side, row[1])], 2))
    fstd = {s: per_step[(s, "FSTD")] for s in sizes}
    md = {s: per_step[(s, "MultiDiffusion")] for s in sizes}
    return {
        "title": "Tiled diffusion: FSTD vs baselines (tiny SD1.5-architecture UNet, 512 px tiles, CPU)",
        "columns": ["image", "method", "tile area / image area", "s / step", "peak RSS MiB", "speed-up vs MultiDiffusion"],
        "rows": rows,
        "targets": {"fstd_area_overhead_max": 1.15, "fstd_speedup_vs_multidiffusion_min": 1.8,
                    "measured_area_overhead": {str(s): round(area_ratio("FSTD", s), 3) for s in sizes},
                    "measured_speedup": {str(s): round(md[s] / fstd[s], 2) for s in sizes}},
        "notes": ["seconds are wall-clock on this machine, compared only within this run",
                  "peak RSS = highest resident memory above the level before the run, sampled every 5 ms",
                  f"MultiDiffusion/Mixture of Diffusers overlap: {OVERLAP_PX} px"],
    }
