"""GPU bench (one command, under 10 min on one H100/H200): writes bench_results/gpu.json.

    .venv/bin/python bench/bench_gpu.py            # CUDA, full sizes (make bench-gpu)
    .venv/bin/python bench/bench_gpu.py --smoke    # any device, tiny sizes (CI check that it runs)

Sections (each records seconds and peak memory; a section or size that would overrun the time
budget is recorded as skipped, and the JSON is rewritten after every measurement):

1. ``linfusion_op``: one SDXL level-1 self-attention layer (width 640, 10 heads, batch 1, fp16):
   ComfyUI's ``CrossAttention`` (``optimized_attention``) vs ``LinFusionAttention`` (mid = C/16,
   the compiled core on CUDA) at 4k-262k tokens.
2. ``unet_step``: the full SDXL-architecture UNet (ComfyUI's classes, random weights, fp16, batch 1,
   one ``apply_model`` call) at 1024^2, 2048^2, 4096^2 px, softmax vs every attn1 patched by
   ``UltraResLinFusionApply``'s ``patch_model`` (random official-layout LinFusion weights).
3. ``hdit_neighborhood`` (run last: one FlexAttention compilation per size): HDiT's level-0 neighborhood attention (kernel 7, 2 heads x 64, patch 4,
   fp16) at 256-2048 px: FlexAttention (compiled) vs the blocked reference vs global SDPA.
4. ``fstd_vs_multidiffusion``: one sampler step of the SDXL UNet over a 4096^2 px latent in
   1024 px tiles (``TilePlanner``/``run_tiles``): FSTD (non-overlapping, shifted) vs MultiDiffusion
   (overlap 32 latent px).
5. ``sdxl_linfusion_fstd_16k``: SDXL + LinFusion + FSTD at 16384^2 px (2048 px tiles) for a few
   steps; ``extrapolated_20_steps_s`` is labelled as an extrapolation (mean step x 20).
6. ``flux_clear``: one FLUX.1 attention (24 x 128 heads, +512 text) at 2K/4K/8K px: full SDPA vs
   CLEAR window 16 + down 4 (FlexAttention, cached block mask), seconds, peak memory, speed-up.

``--smoke`` uses the test pack's tiny SDXL layout and tiny sizes so the whole script runs on a CPU
in well under a minute (tests/cuda/test_bench_gpu_smoke.py runs it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TESTS = os.path.join(ROOT, "tests")

SDXL_FULL = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
    "in_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10,
    "use_linear_in_transformer": True,
    "context_dim": 2048,
    "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

FULL = {
    "op_tokens": [4096, 16384, 65536, 262144],
    "op_dim": 640,
    "op_heads": 10,
    "unet_px": [1024, 2048, 4096],
    "hdit_px": [256, 512, 1024, 2048],
    "hdit_heads": 2,
    "hdit_dim": 64,
    "tile_image_px": 4096,
    "tile_px": 1024,
    "md_overlap": 32,  # overlap in latent px "tile_steps": 2, "tile_batch": 4,
    "big_px": 16384,
    "big_tile_px": 2048,
    "big_steps": 2,
    "dtype": "fp16",
    "repeats": 3,
    "clear_px": [2048, 4096, 8192],  # FLUX attention (section flux_clear): 16k, 65k, 262k image tokens
    "clear_heads": 24,
    "clear_dim": 128,
}
SMOKE = {
    "op_tokens": [256, 1024],
    "op_dim": 64,
    "op_heads": 2,
    "unet_px": [64, 128],
    "hdit_px": [64, 96],
    "hdit_heads": 2,
    "hdit_dim": 16,
    "tile_image_px": 256,
    "tile_px": 128,
    "md_overlap": 4,
    "tile_steps": 1,
    "tile_batch": 4,
    "big_px": 384,
    "big_tile_px": 128,
    "big_steps": 1,
    "dtype": "fp32",
    "repeats": 1,
    "clear_px": [128, 256],
    "clear_heads": 2,
    "clear_dim": 16,
}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


# ---------------------------------------------------------------------------------------------
# ComfyUI as a library (on the requested device) and models


def boot(device: str, comfy_args: tuple[str, ...] = ()) -> None:
    """Put ComfyUI on sys.path and set its CLI args for ``device`` (plus ``comfy_args``, ComfyUI's own
    flags such as ``--disable-dynamic-vram``) -- unless it is already imported (inside the test session,
    which booted it on the CPU)."""
    if "comfy.model_management" in sys.modules:
        return
    from ultrares.devtools.comfy_host import comfy_root, put_comfy_on_path

    put_comfy_on_path(comfy_root())
    import utils.extra_config  # noqa: F401  (claim ComfyUI's "utils" package first, as main.py does)
    from comfy.cli_args import args

    args.cpu = device == "cpu"
    args.use_pytorch_cross_attention = True  # "ComfyUI attention" = torch SDPA (flash on CUDA)
    args.disable_all_custom_nodes = True
    for flag in comfy_args:
        name = flag.lstrip("-").replace("-", "_")
        if not hasattr(args, name):
            raise SystemExit(f"--comfy-arg {flag}: this ComfyUI has no such flag")
        setattr(args, name, True)


def versions() -> dict:
    """What every figure was measured with: ComfyUI's version and path, the driver, torch and CUDA."""
    import subprocess

    from ultrares.devtools.comfy_host import comfy_version

    out = {"comfyui": comfy_version(), "torch": torch.__version__}
    out["cuda"] = torch.version.cuda
    try:
        smi = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        out["nvidia_smi"] = subprocess.run(smi, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out["nvidia_smi"] = None
    import comfy.cli_args

    dynamic = getattr(comfy.cli_args, "enables_dynamic_vram", None)  # 0.30+; 0.3.75 has no dynamic VRAM
    out["dynamic_vram"] = bool(dynamic()) if dynamic else False
    return out


def tiny_sdxl_config() -> dict:
    sys.path.insert(0, os.path.join(TESTS, "comfy_packs", "ultrares_testing"))
    import tiny_models

    return dict(tiny_models.UNETS["sdxl"])


@torch.no_grad()
def init_random_(module: torch.nn.Module, seed: int = 0) -> None:
    """N(0, 1/fan_in) matrices/kernels, unit norm scales, zero biases (ComfyUI's ops skip init)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for name, p in module.named_parameters():
        if p.ndim >= 2:
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) / math.sqrt(p[0].numel()))
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.fill_(1.0)


def build_sdxl(unet_config: dict, dtype: torch.dtype, device: torch.device):
    """A ComfyUI MODEL (ModelPatcher) of the SDXL architecture in ``dtype`` with random weights."""
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SDXL(dict(unet_config))
    config.set_inference_dtype(dtype, None)
    base = config.get_model({}, "", device=torch.device("cpu"))
    init_random_(base.diffusion_model)
    base.diffusion_model.requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=torch.device("cpu"))


def random_linfusion(model, mid_dim_scale: int = 16, seed: int = 0):
    """Random LinFusion weights in the official layout for every attn1 of ``model``."""
    from ultrares.kernels import linfusion_format as fmt
    from ultrares.nodes.linfusion import LinFusionWeights

    specs = fmt.attn1_specs(
        model.model.diffusion_model, model.model.model_config.unet_config["num_res_blocks"], mid_dim_scale
    )
    torch.manual_seed(seed)
    layers = [{k: v.half() for k, v in fmt.build_layer(s).state_dict().items()} for s in specs]
    return LinFusionWeights("random-bench", specs, layers)


# ---------------------------------------------------------------------------------------------
# measuring


class Bench:
    def __init__(self, device: torch.device, out: str, budget_s: float, config: dict, mode: str):
        self.device, self.out, self.budget_s, self.config = device, out, budget_s, config
        self.start = time.perf_counter()
        self.results = {
            "mode": mode,
            "device": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "dtype": config["dtype"],
            "budget_s": budget_s,
            "config": config,
            "sections": {},
        }

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def measure(self, fn, repeats: int | None = None, warmup: int = 1) -> dict:
        """Median seconds of ``fn()`` and peak memory above the level before it (CUDA: allocator
        peak; CPU: not measured here, see bench_linfusion.py for RSS)."""
        repeats = repeats or self.config["repeats"]
        for _ in range(warmup):
            fn()
        self.sync()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        rec = {"s": sorted(times)[len(times) // 2], "runs": len(times)}
        if self.device.type == "cuda":
            rec["peak_mib"] = (torch.cuda.max_memory_allocated(self.device) - base) / 2**20
        return rec

    def record(self, section: str, key: str, value) -> None:
        self.results["sections"].setdefault(section, {})[key] = value
        self.results["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        os.makedirs(os.path.dirname(os.path.abspath(self.out)), exist_ok=True)
        with open(self.out, "w", encoding="utf-8") as f:
            json.dump(self.results, f, indent=1, default=str)
        print(
            f"[{self.results['elapsed_s']:7.1f}s] {section} {key}: {json.dumps(value, default=str)}",
            flush=True,
        )

    def guarded(self, section: str, key: str, need_s: float, fn) -> None:
        """Run ``fn() -> dict`` and record it, or record why not (budget, out of memory)."""
        if self.left() < need_s:
            self.record(
                section, key, {"skipped": f"time budget ({self.left():.0f} s left, ~{need_s:.0f} s needed)"}
            )
            return
        try:
            self.record(section, key, fn())
        except torch.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            self.record(section, key, {"skipped": f"out of memory: {str(exc).splitlines()[0][:160]}"})


def _ratio(a: dict, b: dict) -> float | None:
    return round(a["s"] / b["s"], 3) if "s" in a and "s" in b and b["s"] > 0 else None


# ---------------------------------------------------------------------------------------------
# sections


def bench_linfusion_op(b: Bench, dtype):
    import comfy.ldm.modules.attention as A
    import comfy.ops
    from ultrares.kernels import linfusion as L

    c, heads = b.config["op_dim"], b.config["op_heads"]
    softmax = A.CrossAttention(
        c,
        heads=heads,
        dim_head=c // heads,
        operations=comfy.ops.disable_weight_init,
        dtype=dtype,
        device=b.device,
    )
    init_random_(softmax)
    lin = L.LinFusionAttention(c, heads, c // 16).to(b.device, dtype)
    with torch.no_grad():
        for n in b.config["op_tokens"]:
            x = torch.randn(1, n, c, device=b.device, dtype=dtype)
            rec = {}

            def run_softmax(x=x, rec=rec):
                rec["softmax"] = b.measure(lambda: softmax(x))
                return rec["softmax"]

            def run_lin(x=x, rec=rec):
                rec["linfusion"] = b.measure(lambda: lin(x))
                rec["linfusion"]["impl"] = L.resolve_impl("auto", b.device)
                rec["speedup"] = _ratio(rec.get("softmax", {}), rec["linfusion"])
                return rec

            b.guarded("linfusion_op", f"{n}_tokens_softmax", 20, run_softmax)
            b.guarded("linfusion_op", f"{n}_tokens", 20, run_lin)


def _unet_inputs(model, px: int, batch: int, device, seed: int = 0):
    cfg = model.model.model_config.unet_config
    gen = torch.Generator().manual_seed(seed)
    lat = px // 8
    x = torch.randn(batch, 4, lat, lat, generator=gen).to(device)
    ctx = torch.randn(batch, 77, cfg["context_dim"], generator=gen).to(device)
    y = torch.randn(batch, cfg["adm_in_channels"], generator=gen).to(device)
    return x, torch.full((batch,), 2.0, device=device), {"c_crossattn": ctx, "y": y}


def bench_unet_step(b: Bench, models):
    import comfy.model_management as mm

    for px in b.config["unet_px"]:
        for label, model in models.items():

            def run(model=model, px=px):
                mm.load_models_gpu([model], force_full_load=True)
                x, sigma, cond = _unet_inputs(model, px, 1, b.device)
                with torch.no_grad():
                    rec = b.measure(lambda: model.model.apply_model(x, sigma, **cond))
                    out = model.model.apply_model(x, sigma, **cond)
                rec["finite"] = bool(torch.isfinite(out).all())
                return rec

            need = 30 if px <= 2048 else 90
            b.guarded("unet_step", f"{px}px_{label}", need, run)
        sec = b.results["sections"].get("unet_step", {})
        r = _ratio(sec.get(f"{px}px_softmax", {}), sec.get(f"{px}px_linfusion", {}))
        if r is not None:
            b.record("unet_step", f"{px}px_speedup", r)


def bench_hdit_neighborhood(b: Bench, dtype):
    from ultrares.kernels import neighborhood as N
    from ultrares.kernels import neighborhood_flex as NF

    heads, d = b.config["hdit_heads"], b.config["hdit_dim"]
    for px in b.config["hdit_px"]:
        side = px // 4  # patch 4: one token per 4x4 pixels
        gen = torch.Generator().manual_seed(px)
        qkv = tuple(torch.randn(1, heads, side, side, d, generator=gen).to(b.device, dtype) for _ in range(3))
        impls = {
            "blocked": lambda t=qkv: N.neighborhood_attention_2d(*t, 7, method="blocked"),
            "global": lambda t=qkv: N.global_attention_2d(*t),
        }
        if NF.available():
            impls = {"flex": lambda t=qkv: NF.neighborhood_attention_flex(*t, 7), **impls}
        with torch.no_grad():
            for name, fn in impls.items():
                b.guarded(
                    "hdit_neighborhood",
                    f"{px}px_{name}",
                    60 if name == "flex" else 20,
                    lambda fn=fn: b.measure(fn),
                )
        sec = b.results["sections"]["hdit_neighborhood"]
        r = _ratio(sec.get(f"{px}px_blocked", {}), sec.get(f"{px}px_flex", {}))
        if r is not None:
            b.record("hdit_neighborhood", f"{px}px_flex_speedup_over_blocked", r)


def bench_flux_clear(b: Bench, dtype):
    """FLUX.1 attention (24 heads x 128, 512 text tokens, batch 1) at 2K/4K/8K px (16k/65k/262k image
    tokens): full SDPA (ComfyUI's FLUX attention) vs CLEAR window 16 + down 4 with proportional
    attention (kernels/clear.py: FlexAttention with the cached block mask on CUDA; the blocked path
    elsewhere). The first CLEAR call per size compiles the block mask (the warm-up)."""
    import torch.nn.functional as F
    from ultrares.kernels import clear as C

    heads, d, text = b.config.get("clear_heads", 24), b.config.get("clear_dim", 128), 512
    for px in b.config.get("clear_px", [2048, 4096, 8192]):
        side = px // 16  # 8x VAE, 2x2 patches
        lay = C.Layout(text, side, side)
        gen = torch.Generator(device=b.device).manual_seed(px)
        q, k, v = (
            torch.randn(1, heads, lay.seq, d, generator=gen, device=b.device, dtype=dtype) for _ in range(3)
        )
        sw = torch.full((16,), 1.0 / 16, device=b.device)
        scale = C.attention_scale(d, lay.seq, True, True)
        extra = {"full": {"impl": "sdpa"}, "clear": {"impl": C.choose_impl(q)}}

        def full(q=q, k=k, v=v, scale=scale):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)

        def clear(q=q, k=k, v=v, lay=lay, sw=sw, scale=scale):
            return C.clear_attention(q, k, v, lay, 16, 4, sw, scale=scale)

        with torch.no_grad():
            for name, fn in (("full", full), ("clear", clear)):
                info = {**extra[name], "image_tokens": side * side}
                b.guarded(
                    "flux_clear",
                    f"{px}px_{name}",
                    90 if name == "clear" else 30,
                    lambda fn=fn, info=info: {**b.measure(fn), **info},
                )
        sec = b.results["sections"].get("flux_clear", {})
        r = _ratio(sec.get(f"{px}px_full", {}), sec.get(f"{px}px_clear", {}))
        if r is not None:
            b.record("flux_clear", f"{px}px_speedup", r)
        del q, k, v
        if b.device.type == "cuda":
            torch.cuda.empty_cache()


def _tiled_steps(
    b: Bench, model, method: str, image_px: int, tile_px: int, overlap: int, steps: int, batch: int
) -> dict:
    """``steps`` sampler steps' worth of tiled model evaluations (one evaluation per step, cond only)."""
    import comfy.model_management as mm
    from ultrares.kernels.tiled_diffusion import TilePlanner, run_tiles

    mm.load_models_gpu([model], force_full_load=True)
    lat, tile = image_px // 8, tile_px // 8
    planner = TilePlanner(method, lat, lat, tile, tile, overlap=overlap, seed=0)
    x, _, cond = _unet_inputs(model, image_px, 1, b.device)

    def predict(tiles_x, tiles):
        n = tiles_x.shape[0]
        sigma = torch.full((n,), 2.0, device=b.device)
        return [
            model.model.apply_model(tiles_x, sigma, **{k: v.expand(n, *v.shape[1:]) for k, v in cond.items()})
        ]

    times, tiles_per_step, prev = [], [], None
    with torch.no_grad():
        for step in range(steps + 1):  # step 0 = warm-up (compilation, cuDNN autotuning)
            plan = planner.plan(step)
            b.sync()
            t0 = time.perf_counter()
            prev = run_tiles(x, plan, predict, batch_size=batch, reference=None if prev is None else [prev])[
                0
            ]
            b.sync()
            if step:
                times.append(time.perf_counter() - t0)
                tiles_per_step.append(len(plan.tiles))
    return {
        "s_per_step": sum(times) / len(times),
        "steps_measured": len(times),
        "tiles_per_step": tiles_per_step,
        "finite": bool(torch.isfinite(prev).all()),
    }


def bench_tiled_diffusion(b: Bench, softmax_model, lin_model):
    c = b.config
    for method, overlap in (("fstd", 0), ("multidiffusion", c["md_overlap"])):
        b.guarded(
            "fstd_vs_multidiffusion",
            method,
            60,
            lambda method=method, overlap=overlap: _tiled_steps(
                b,
                softmax_model,
                method,
                c["tile_image_px"],
                c["tile_px"],
                overlap,
                c["tile_steps"],
                c["tile_batch"],
            ),
        )
    sec = b.results["sections"].get("fstd_vs_multidiffusion", {})
    if "s_per_step" in sec.get("fstd", {}) and "s_per_step" in sec.get("multidiffusion", {}):
        b.record(
            "fstd_vs_multidiffusion",
            "fstd_speedup",
            round(sec["multidiffusion"]["s_per_step"] / sec["fstd"]["s_per_step"], 3),
        )

    def big():
        rec = _tiled_steps(b, lin_model, "fstd", c["big_px"], c["big_tile_px"], 0, c["big_steps"], 1)
        rec["extrapolated_20_steps_s"] = round(rec["s_per_step"] * 20, 1)
        rec["note"] = (
            f"measured {rec['steps_measured']} steps (after one warm-up step); extrapolated_20_steps_s = "
            "mean measured step x 20 (an extrapolation, not a measurement); one model evaluation per step "
            "(no CFG; CFG doubles it)"
        )
        return rec

    b.guarded("sdxl_linfusion_fstd_16k", f"{c['big_px']}px", 120, big)


def table(results: dict) -> dict:
    """``results`` in bench/run_all.py's table format (title, columns, rows, notes)."""
    rows = []
    for section, entries in results["sections"].items():
        for key, rec in entries.items():
            if isinstance(rec, dict) and "linfusion" in rec:  # linfusion_op pairs
                rec = {**rec["linfusion"], "speedup": rec.get("speedup")}
            if not isinstance(rec, dict):
                rec = {"value": rec}
            secs = rec.get("s", rec.get("s_per_step"))
            rows.append(
                [
                    section,
                    key,
                    "" if secs is None else round(secs, 4),
                    rec.get("peak_mib", ""),
                    rec.get("skipped")
                    or rec.get("speedup")
                    or rec.get("value")
                    or rec.get("extrapolated_20_steps_s")
                    or "",
                ]
            )
    mode = results["mode"]
    return {
        "title": f"GPU bench ({mode} mode on {results['device']}, {results['dtype']})"
        + ("" if mode == "full" else ": tiny sizes, a check that the script runs -- not GPU figures"),
        "columns": ["section", "case", "s (per step)", "peak MiB", "speedup / note"],
        "rows": rows,
        "notes": [
            "Full run: `make bench-gpu` on a CUDA machine writes bench_results/gpu.json (see docs/notes/gpu.md)."
        ],
        **results,
    }


def run(quick: bool = False) -> dict:
    """bench/run_all.py entry: the full bench on CUDA (``quick``: smoke sizes), else the CPU smoke run."""
    import tempfile

    smoke = quick or not torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "gpu.json")
        main((["--smoke"] if smoke else []) + ["--out", out])
        with open(out, encoding="utf-8") as f:
            return table(json.load(f))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes and the tiny SDXL layout (runs on a CPU)"
    )
    parser.add_argument(
        "--device", default=None, help="default: cuda (full) / cuda if available else cpu (smoke)"
    )
    parser.add_argument("--out", default=os.path.join(ROOT, "bench_results", "gpu.json"))
    parser.add_argument(
        "--budget-s", type=float, default=540.0, help="stop starting new measurements after this"
    )
    parser.add_argument("--only", default="", help="comma-separated sections (op,unet,hdit,tiling)")
    parser.add_argument(
        "--comfy-arg",
        action="append",
        default=[],
        help="a ComfyUI boolean flag to set, e.g. --comfy-arg=--disable-dynamic-vram (repeatable)",
    )
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not args.smoke and not device.startswith("cuda"):
        parser.error("the full bench needs a CUDA device; use --smoke to check it runs on the CPU")
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {device}: torch sees no CUDA device")
    boot(device, tuple(args.comfy_arg))
    warnings.filterwarnings("ignore", message=".*flex_attention.*")
    config = dict(SMOKE if args.smoke else FULL)
    dtype = DTYPES[config["dtype"]]
    b = Bench(torch.device(device), args.out, args.budget_s, config, "smoke" if args.smoke else "full")
    b.results["versions"] = {**versions(), "comfy_args": list(args.comfy_arg)}
    only = set(filter(None, args.only.split(",")))

    def want(section: str) -> bool:
        return not only or section in only

    if want("op"):
        bench_linfusion_op(b, dtype)
    if want("unet") or want("tiling"):
        from ultrares.nodes.linfusion import patch_model

        softmax_model = build_sdxl(tiny_sdxl_config() if args.smoke else SDXL_FULL, dtype, b.device)
        lin_model = patch_model(softmax_model, random_linfusion(softmax_model))
        b.record(
            "models",
            "sdxl",
            {
                "params_m": round(sum(p.numel() for p in softmax_model.model.parameters()) / 1e6, 1),
                "model_size_mib": round(softmax_model.model_size() / 2**20, 1),
                "with_linfusion_mib": round(lin_model.model_size() / 2**20, 1),
            },
        )
        if want("unet"):
            bench_unet_step(b, {"softmax": softmax_model, "linfusion": lin_model})
        if want("tiling"):
            bench_tiled_diffusion(b, softmax_model, lin_model)
        del softmax_model, lin_model
        import comfy.model_management as mm

        mm.unload_all_models()
        mm.soft_empty_cache()
    if want("hdit"):  # last: one FlexAttention compilation per size
        bench_hdit_neighborhood(b, dtype)
    if want("clear"):  # FLUX attention, CLEAR (FlexAttention block masks compiled per size)
        bench_flux_clear(b, dtype)
    b.record("done", "elapsed_s", round(time.perf_counter() - b.start, 1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
