"""bench/bench_gpu.py --smoke runs end to end on the CPU (tiny sizes, the tiny SDXL layout) and
writes every section of bench_results/gpu.json, so the GPU run (make bench-gpu) is known to work."""

from __future__ import annotations

import importlib.util
import json

import torch
from harness.paths import ROOT


def test_bench_gpu_smoke_mode_writes_every_section(comfy, tmp_path):
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "bench_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "gpu.json"
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--smoke", "--device", "cpu", "--out", str(out), "--budget-s", "600"]) == 0
    finally:
        torch.set_num_threads(threads)
    data = json.loads(out.read_text())
    assert data["mode"] == "smoke"
    sec = data["sections"]
    cfg = bench.SMOKE
    for n in cfg["op_tokens"]:
        assert sec["linfusion_op"][f"{n}_tokens"]["linfusion"]["s"] > 0
        assert sec["linfusion_op"][f"{n}_tokens"]["linfusion"]["impl"] == "reference"  # CPU
    for px in cfg["unet_px"]:
        for label in ("softmax", "linfusion"):
            rec = sec["unet_step"][f"{px}px_{label}"]
            assert rec["s"] > 0 and rec["finite"], rec
    for px in cfg["hdit_px"]:
        for impl in ("flex", "blocked", "global"):
            assert sec["hdit_neighborhood"][f"{px}px_{impl}"]["s"] > 0
    assert sec["fstd_vs_multidiffusion"]["fstd"]["tiles_per_step"] == [4]  # 32/16 = 2 x 2, non-overlapping
    assert sec["fstd_vs_multidiffusion"]["multidiffusion"]["tiles_per_step"] == [9]  # stride 12: 3 x 3
    big = sec["sdxl_linfusion_fstd_16k"][f"{cfg['big_px']}px"]
    assert big["extrapolated_20_steps_s"] > 0 and "extrapolation" in big["note"] and big["finite"]
    # the LinFusion-patched model reports its extra weights to ComfyUI
    assert sec["models"]["sdxl"]["with_linfusion_mib"] > sec["models"]["sdxl"]["model_size_mib"]
