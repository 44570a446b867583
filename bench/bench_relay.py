"""Relay Diffusion: model evaluations and seconds for a x4 up-scale (512 -> 2048 px in full mode),
relay stage two vs a standard hires fix vs generating at the target size from noise.

All paths run on the tiny SD1.5-architecture model of the test harness through ComfyUI's own
sampling code (CFGGuider.sample), with the same sampler (UltraResRelaySampler: stochastic Heun,
s_noise 0.2, blur off as for any model not trained for blurring) and the same nominal Karras grid
of ``STEPS`` levels over the model's sigma range:

- ``relay``: nearest x4 up-sampling, noise + block noise at the truncation sigma 0.9, then only the
  grid levels below it (UltraResRelayUpscale);
- ``hires fix``: x4 up-sampling + ``STEPS`` steps at denoise 0.55 (ComfyUI's KSampler semantics:
  the grid is stretched so that all ``STEPS`` steps run in the last 55 %), and the same at the
  nominal grid's density (only the grid levels in the last 55 %);
- ``from noise``: the full grid at the target size.

A "model evaluation" is one call of the guider (one CFG pair), counted with a PREDICT_NOISE
wrapper. Full mode samples 512 -> 2048 px with UltraResTiledDiffusion (512 px tiles) on every
path, since the tiny model's full attention at 256x256 latents is out of reach on 2 CPU cores;
quick mode samples 64 -> 256 px without tiling. The evaluation counts depend only on the
schedules, so they are the same at every size.
"""

from __future__ import annotations

import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 20
TRUNCATION = 0.9
DENOISE = 0.55
FACTOR = 4


def _boot():
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from harness import boot

    runtime = boot.boot()
    sys.path.insert(0, os.path.join(ROOT, "tests", "comfy_packs", "ultrares_testing"))
    import tiny_models

    return runtime, tiny_models


def run(quick: bool) -> dict:
    rt, tiny_models = _boot()
    import comfy.k_diffusion.sampling as kd
    import comfy.patcher_extension as pe
    import comfy.samplers as comfy_samplers

    model, clip, _ = tiny_models.build("sd15")
    steps = 12 if quick else STEPS
    low_px = 64 if quick else 512
    high_px = low_px * FACTOR
    (pos,) = rt.run_node("CLIPTextEncode", clip=clip, text="a lighthouse on a cliff at sunset")
    (neg,) = rt.run_node("CLIPTextEncode", clip=clip, text="blurry")
    if not quick:
        (model,) = rt.run_node(
            "UltraResTiledDiffusion",
            model=model,
            method="FSTD",
            tile_width=512,
            tile_height=512,
            overlap=0,
            tile_batch_size=4,
            reset_interval=4,
            seed=0,
        )
    counter = {"n": 0}

    def count(executor, *args, **kwargs):
        counter["n"] += 1
        return executor(*args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(pe.WrappersMP.PREDICT_NOISE, "ultrares_bench_count", count)
    ms = m.get_model_object("model_sampling")
    s_min, s_max = float(ms.sigma_min), float(ms.sigma_max)
    relay_opts = dict(
        block_size=FACTOR,
        blur_sigma_max=0.0,
        prob_length=0.93,
        s_block=0.15,
        s_noise=0.2,
        s_churn=0.0,
        s_tmin=0.0,
        s_tmax=1000.0,
        s_churn_noise=1.0,
    )
    (sampler,) = rt.run_node("UltraResRelaySampler", **(relay_opts | {"s_block": 0.0}))
    (guider,) = rt.run_node("CFGGuider", model=m, positive=pos, negative=neg, cfg=6.0)
    (noise,) = rt.run_node("RandomNoise", noise_seed=1)

    def sample(sigmas, latent):
        counter["n"] = 0
        t = time.perf_counter()
        out, _ = rt.run_node(
            "SamplerCustomAdvanced",
            noise=noise,
            guider=guider,
            sampler=sampler,
            sigmas=sigmas,
            latent_image=latent,
        )
        return out, counter["n"], time.perf_counter() - t

    rows = []
    full_grid = kd.get_sigmas_karras(steps, s_min, s_max, rho=7.0)
    # stage one: the low-resolution image every up-scaling path starts from
    low, n1, t1 = sample(full_grid, {"samples": torch.zeros(1, 4, low_px // 8, low_px // 8)})
    rows.append([f"stage one: {low_px} px from noise", len(full_grid) - 1, n1, round(t1, 2), "-"])

    # from noise at the target size (the baseline)
    _, n_noise, t_noise = sample(full_grid, {"samples": torch.zeros(1, 4, high_px // 8, high_px // 8)})
    rows.append([f"from noise at {high_px} px", len(full_grid) - 1, n_noise, round(t_noise, 2), 1.0])

    up = {"samples": torch.nn.functional.interpolate(low["samples"], scale_factor=FACTOR, mode="nearest")}
    # hires fix, ComfyUI KSampler semantics (denoise stretches the schedule: all `steps` run)
    stretched = comfy_samplers.calculate_sigmas(ms, "karras", int(steps / DENOISE)).cpu()[-(steps + 1) :]
    _, n_h1, t_h1 = sample(stretched, up)
    rows.append(
        [
            f"hires fix, denoise {DENOISE}, {steps} steps (KSampler)",
            steps,
            n_h1,
            round(t_h1, 2),
            round(n_h1 / n_noise, 3),
        ]
    )
    # hires fix at the nominal grid's density: only the levels in the last 55 %
    start = int(round((1 - DENOISE) * steps))
    dense = full_grid[start:]
    _, n_h2, t_h2 = sample(dense, up)
    rows.append(
        [
            f"hires fix, denoise {DENOISE}, same grid density",
            len(dense) - 1,
            n_h2,
            round(t_h2, 2),
            round(n_h2 / n_noise, 3),
        ]
    )

    # relay stage two (the all-in-one node, with block noise)
    counter["n"] = 0
    t = time.perf_counter()
    (out,) = rt.run_node(
        "UltraResRelayUpscale",
        model=m,
        positive=pos,
        negative=neg,
        latent=low,
        factor=FACTOR,
        seed=1,
        steps=steps,
        truncation_sigma=TRUNCATION,
        rho=7.0,
        cfg=6.0,
        **{k: v for k, v in relay_opts.items() if k != "block_size"},
    )
    t_relay, n_relay = time.perf_counter() - t, counter["n"]
    (relay_sig,) = rt.run_node(
        "UltraResRelaySigmas", model=m, steps=steps, truncation_sigma=TRUNCATION, rho=7.0
    )
    assert out["samples"].shape[-1] == high_px // 8
    rows.append(
        [
            f"relay stage two, truncation {TRUNCATION}",
            len(relay_sig) - 1,
            n_relay,
            round(t_relay, 2),
            round(n_relay / n_noise, 3),
        ]
    )

    ratio = n_relay / n_noise
    return {
        "title": f"Relay up-scaling x{FACTOR} ({low_px} -> {high_px} px), tiny SD1.5, {steps}-level Karras grid, "
        "UltraResRelaySampler (Heun)",
        "columns": ["path", "steps", "model evaluations", "seconds", "evaluations vs from noise"],
        "rows": rows,
        "notes": [
            "model evaluation = one guider call (cond + uncond batched); Heun: 2 per step, 1 for the last.",
            "seconds: wall-clock on this machine in this process (shared CPU: compare ratios only).",
            "full mode tiles every path with UltraResTiledDiffusion (FSTD, 512 px tiles); quick mode does not.",
            f"relay stage two uses {ratio:.0%} of the evaluations of generating from noise (target <= 50%).",
        ],
        "targets": {
            "relay_evals_vs_noise": {"value": round(ratio, 3), "target": "<= 0.5", "met": ratio <= 0.5}
        },
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
