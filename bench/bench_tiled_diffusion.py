"""FSTD vs overlapping-tile baselines: work per step, seconds per step, peak memory.

Same model for every method (the tiny SD1.5-architecture UNet: real block layout, reduced width;
512 px tiles = 64x64 latent, where self-attention over 4,096 tokens dominates, as in SD1.5),
same sampler (euler, CFG 7: cond+uncond per tile). MultiDiffusion uses the overlap
ComfyUI-TiledDiffusion defaults to (64 px on 768 px tiles) scaled to 512 px tiles: 40 px.

The "flux" block repeats the comparison on a DiT: a Flux-architecture model built from ComfyUI's own
classes (``comfy.supported_models.Flux``: double- then single-stream blocks, RoPE, guidance embedding)
wider than the test one (hidden 384, 6 heads of 64, 2 double + 4 single blocks), sampled the way
Flux-dev graphs are (cfg 1, one cond group, FluxGuidance 3.5, euler/simple) through KSampler on the
model patched by the real UltraResTiledDiffusion node. Flux's native tile is 1024 px; on CPU it uses
256 px tiles (24 px overlap, the same scaling) on 512 and 1024 px images: the tile grids of 1024 px
tiles on 2048 and 4096 px images. Each sample is one KSampler call of 2 steps: step 0 (a reset step,
which also warms up) is discarded and step 1 (a shifted-grid step) is timed, wall-clock and CPU time,
from ComfyUI's progress hook, on one torch thread; methods run interleaved, in a rotated order, and
the median of the rounds is recorded.
"""

from __future__ import annotations

import gc
import os
import statistics
import time

from _common import PeakRSS, boot, timer, tiny

METHODS = ["FSTD", "FSTD (full coverage)", "MultiDiffusion", "Mixture of Diffusers", "SpotDiffusion"]
TILE_PX = 512
OVERLAP_PX = 40  # 64 * 512 / 768 = 42.7, rounded to a multiple of 8


def area_ratio(method: str, side: int) -> float:
    import ultrares.kernels.tiled_diffusion as tiled

    key = {
        "FSTD": "fstd",
        "FSTD (full coverage)": "fstd_full",
        "MultiDiffusion": "multidiffusion",
        "Mixture of Diffusers": "mixture_of_diffusers",
        "SpotDiffusion": "spotdiffusion",
    }[method]
    lat = side // 8
    planner = tiled.TilePlanner(key, lat, lat, TILE_PX // 8, TILE_PX // 8, overlap=OVERLAP_PX // 8, seed=0)
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
            (patched,) = comfy.run_node(
                "UltraResTiledDiffusion",
                model=model,
                method=method,
                tile_width=TILE_PX,
                tile_height=TILE_PX,
                overlap=OVERLAP_PX,
                tile_batch_size=4,
                reset_interval=4,
                seed=0,
            )
            args = dict(
                model=patched,
                seed=0,
                cfg=7.0,
                sampler_name="euler",
                scheduler="normal",
                positive=pos,
                negative=neg,
                latent_image=latent,
                denoise=1.0,
            )
            comfy.run_node("KSampler", steps=1, **args)  # warm-up (allocator, caches)
            gc.collect()
            with PeakRSS() as mem, timer() as t:
                comfy.run_node("KSampler", steps=steps, **args)
            per_step[(side, method)] = t["s"] / steps
            rows.append(
                [
                    f"{side}x{side}",
                    method,
                    round(area_ratio(method, side), 3),
                    round(t["s"] / steps, 2),
                    round(mem.mib, 1),
                ]
            )
    for row in rows:
        side = int(row[0].split("x")[0])
        row.append(round(per_step[(side, "MultiDiffusion")] / per_step[(side, row[1])], 2))
    fstd = {s: per_step[(s, "FSTD")] for s in sizes}
    md = {s: per_step[(s, "MultiDiffusion")] for s in sizes}
    result = {
        "title": "Tiled diffusion: FSTD vs baselines (tiny SD1.5-architecture UNet, 512 px tiles, CPU)",
        "columns": [
            "image",
            "method",
            "tile area / image area",
            "s / step",
            "peak RSS MiB",
            "speed-up vs MultiDiffusion",
        ],
        "rows": rows,
        "targets": {
            "fstd_area_overhead_max": 1.15,
            "fstd_speedup_vs_multidiffusion_min": 1.8,
            "measured_area_overhead": {str(s): round(area_ratio("FSTD", s), 3) for s in sizes},
            "measured_speedup": {str(s): round(md[s] / fstd[s], 2) for s in sizes},
        },
        "notes": [
            "seconds are wall-clock on this machine, compared only within this run",
            "peak RSS = highest resident memory above the level before the run, sampled every 5 ms",
            f"MultiDiffusion/Mixture of Diffusers overlap: {OVERLAP_PX} px",
        ],
    }
    result["flux"] = run_flux(quick)
    print(format_flux(result["flux"]), flush=True)  # run_all prints the top-level table only
    return result


# --- Flux (DiT) ------------------------------------------------------------------------------------
# Flux-dev's layout (guidance embedding, patch 2, 16-channel latent, RoPE axes in 16/56/56 proportion)
# at reduced width and depth; text side = the tiny CLIP-L of tests/comfy_packs (context = pooled = 64).
FLUX_WIDTHS = {  # over the running ComfyUI's own detected FLUX.1 config (tiny_models.DITS["flux"])
    "hidden_size": 384,
    "num_heads": 6,
    "depth": 2,
    "depth_single_blocks": 4,
    "axes_dim": [8, 28, 28],
}
FLUX_TILE_PX = 256  # native 1024; reduced so a CPU run fits in minutes
FLUX_OVERLAP_PX = 24  # 64 * 256 / 768 = 21.3, rounded up to a multiple of 8
FLUX_TIMED_STEP = 1  # of a 2-step run: step 0 is the reset step (and the warm-up)
# One compute thread: its CPU time is then the work done, whatever else runs on the machine (with two
# OpenMP threads, one thread spins while the other waits for a core, and both clocks swing 3x under load).
FLUX_THREADS = 1


def plan_ratio(method: str, side: int, tile_px: int, overlap_px: int, step: int) -> float:
    """Tile area / image area of ``method``'s plan at ``step`` (the node's seed 0, reset_interval 4)."""
    import ultrares.kernels.tiled_diffusion as tiled

    key = {
        "FSTD": "fstd",
        "FSTD (full coverage)": "fstd_full",
        "MultiDiffusion": "multidiffusion",
        "Mixture of Diffusers": "mixture_of_diffusers",
        "SpotDiffusion": "spotdiffusion",
    }[method]
    lat, tile = side // 8, tile_px // 8
    planner = tiled.TilePlanner(key, lat, lat, tile, tile, overlap=overlap_px // 8, seed=0)
    return planner.plan(step).tile_area_ratio


def build_flux(seed: int = 0):
    """A ModelPatcher around ComfyUI's Flux model (the version's FLUX.1 config at FLUX_WIDTHS), seeded weights, output calibrated to
    unit std as the test pack's tiny models are; (model, clip) with the test pack's tiny CLIP-L."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    _, clip, _ = tiny("flux")  # boots ComfyUI and puts the test pack's tiny_models on sys.path
    import tiny_models

    config = comfy.supported_models.Flux({**tiny_models.DITS["flux"], **FLUX_WIDTHS})
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, "", device=torch.device("cpu"))
    model.diffusion_model.load_state_dict(
        tiny_models.seeded_state_dict(model.diffusion_model, seed), strict=True
    )
    tiny_models._calibrate_output(model, "flux", seed)  # its probe inputs use the same 64-wide text side
    patcher = comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )
    return patcher, clip


def run_flux(quick: bool) -> dict:
    import torch

    comfy = boot()
    import comfy.utils as comfy_utils  # after boot: ComfyUI's folder is put on sys.path there

    load_before = os.getloadavg()
    model, clip = build_flux()
    text = comfy.run_node("CLIPTextEncode", clip=clip, text="an aerial photograph of a city")[0]
    pos = comfy.run_node("FluxGuidance", conditioning=text, guidance=3.5)[0]
    neg = comfy.run_node("ConditioningZeroOut", conditioning=text)[0]  # unused at cfg 1, as in Flux graphs
    plan = {512: METHODS} if quick else {512: METHODS, 1024: METHODS}  # quick: the smaller image, one round
    rounds = 1 if quick else 3
    marks: list[tuple[float, float]] = []  # (wall, process CPU) at each progress update

    def hook(value, total, preview=None, **_):
        marks.append((time.perf_counter(), time.process_time()))

    samples: dict[tuple[int, str], list[float]] = {}
    cpu: dict[tuple[int, str], list[float]] = {}
    previous, threads = comfy_utils.PROGRESS_BAR_HOOK, torch.get_num_threads()
    comfy_utils.set_progress_bar_global_hook(hook)
    torch.set_num_threads(FLUX_THREADS)
    try:
        for side, methods in plan.items():
            latent = {"samples": torch.zeros(1, 16, side // 8, side // 8)}
            patched = {
                m: comfy.run_node(
                    "UltraResTiledDiffusion",
                    model=model,
                    method=m,
                    tile_width=FLUX_TILE_PX,
                    tile_height=FLUX_TILE_PX,
                    overlap=FLUX_OVERLAP_PX,
                    tile_batch_size=4,
                    reset_interval=4,
                    seed=0,
                )[0]
                for m in methods
            }
            for r in range(rounds):
                for method in methods[r % len(methods) :] + methods[: r % len(methods)]:  # rotated order
                    marks.clear()
                    gc.collect()
                    comfy.run_node(
                        "KSampler",
                        model=patched[method],
                        seed=0,
                        steps=FLUX_TIMED_STEP + 1,
                        cfg=1.0,
                        sampler_name="euler",
                        scheduler="simple",
                        positive=pos,
                        negative=neg,
                        latent_image=latent,
                        denoise=1.0,
                    )
                    if len(marks) != FLUX_TIMED_STEP + 1:
                        raise RuntimeError(
                            f"expected {FLUX_TIMED_STEP + 1} progress updates, got {len(marks)}"
                        )
                    (w0, c0), (w1, c1) = marks[FLUX_TIMED_STEP - 1], marks[FLUX_TIMED_STEP]
                    samples.setdefault((side, method), []).append(w1 - w0)
                    cpu.setdefault((side, method), []).append(c1 - c0)
    finally:
        comfy_utils.set_progress_bar_global_hook(previous)
        torch.set_num_threads(threads)

    load_after = os.getloadavg()
    median = {k: statistics.median(v) for k, v in samples.items()}
    cpu_median = {k: statistics.median(v) for k, v in cpu.items()}
    rows = []
    for side, methods in plan.items():
        for method in methods:
            rows.append(
                [
                    f"{side}x{side}",
                    method,
                    round(plan_ratio(method, side, FLUX_TILE_PX, FLUX_OVERLAP_PX, FLUX_TIMED_STEP), 3),
                    round(median[(side, method)], 3),
                    [round(s, 3) for s in samples[(side, method)]],
                    round(median[(side, "MultiDiffusion")] / median[(side, method)], 2),
                    round(cpu_median[(side, method)], 3),
                    round(cpu_median[(side, "MultiDiffusion")] / cpu_median[(side, method)], 2),
                ]
            )
    return {
        "title": (
            f"Tiled diffusion on a DiT: FSTD vs baselines (Flux architecture, hidden {FLUX_WIDTHS['hidden_size']}, "
            f"{FLUX_WIDTHS['depth']}+{FLUX_WIDTHS['depth_single_blocks']} blocks, {FLUX_TILE_PX} px tiles, CPU)"
        ),
        "columns": [
            "image",
            "method",
            "tile area / image area",
            "s / step (median)",
            "s / step (each round)",
            "speed-up vs MultiDiffusion",
            "CPU s / step (median)",
            "CPU-time speed-up vs MultiDiffusion",
        ],
        "rows": rows,
        "model": {
            "class": "comfy.supported_models.Flux",
            **FLUX_WIDTHS,
            "parameters_M": round(sum(p.numel() for p in model.model.diffusion_model.parameters()) / 1e6, 2),
        },
        "sampling": {
            "sampler": "KSampler euler/simple",
            "cfg": 1.0,
            "flux_guidance": 3.5,
            "tile_px": FLUX_TILE_PX,
            "native_tile_px": 1024,
            "overlap_px": FLUX_OVERLAP_PX,
            "tile_batch_size": 4,
            "timed_step": FLUX_TIMED_STEP,
            "rounds": rounds,
        },
        "measured_speedup": {
            str(s): round(median[(s, "MultiDiffusion")] / median[(s, "FSTD")], 2) for s in plan
        },
        # the same grids at Flux's native size (all lengths x4): what the measured ratios stand for
        "native_tile_area_ratio": {
            f"{4 * s}x{4 * s} (1024 px tiles, {4 * FLUX_OVERLAP_PX} px overlap)": {
                m: round(plan_ratio(m, 4 * s, 4 * FLUX_TILE_PX, 4 * FLUX_OVERLAP_PX, FLUX_TIMED_STEP), 3)
                for m in plan[s]
            }
            for s in plan
        },
        "measured_cpu_time_speedup": {
            str(s): round(cpu_median[(s, "MultiDiffusion")] / cpu_median[(s, "FSTD")], 2) for s in plan
        },
        "notes": [
            f"CPU run: {FLUX_TILE_PX} px tiles (Flux's native tile is 1024 px) on {', '.join(f'{s}x{s}' for s in plan)} images",
            "cfg 1 with FluxGuidance: one cond group per step (no uncond pass), as Flux-dev graphs sample",
            f"s / step = step {FLUX_TIMED_STEP} of a {FLUX_TIMED_STEP + 1}-step KSampler run (step 0, the FSTD reset "
            "step, is the warm-up), between ComfyUI progress-hook calls; median over rounds, methods "
            "interleaved in rotated order within each round",
            f"{FLUX_THREADS} torch thread; CPU s / step = this process's CPU time over the same step: the work "
            "done, nearly independent of other jobs on the machine (wall-clock is not)",
            "tile area ratio is that of the timed step (FSTD: no overlap; FSTD (full coverage): plus the "
            "strips the step's grid shift uncovers)",
            f"1-min load average before / after: {load_before[0]:.1f} / {load_after[0]:.1f} on {os.cpu_count()} CPUs"
            + (
                " (other jobs were loading the machine: absolute seconds are inflated and noisy; compare only "
                "within this run, as ratios)"
                if load_before[0] > 0.5 * (os.cpu_count() or 1)
                else ""
            ),
            f"MultiDiffusion/Mixture of Diffusers overlap: {FLUX_OVERLAP_PX} px",
        ],
    }


def format_flux(flux: dict) -> str:
    from run_all import format_table

    return f"### {flux['title']}\n{format_table(flux)}"
