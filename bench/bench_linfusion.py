"""LinFusion vs ComfyUI's softmax attention: the attention operator alone, and a whole SD1.5 UNet step.

1. Operator: one self-attention layer (projections included on both sides) at 4k, 16k, 65k and
   262k tokens, width 320, 8 heads, batch 1: ComfyUI's ``CrossAttention`` with the attention
   function ComfyUI uses here (``optimized_attention``: torch SDPA under
   ``--use-pytorch-cross-attention``, which the harness and server set; ComfyUI's CPU default is
   sub-quadratic attention, measured too where it is affordable) vs :class:`LinFusionAttention`.
   Softmax sizes whose time, extrapolated quadratically from the previous size, exceeds the
   budget are skipped and reported as estimates.
2. UNet step: the full-width SD1.5 UNet (ComfyUI's classes, random weights, batch 1) at 1024^2
   and 2048^2 (latents 128^2 and 256^2), with and without every attn1 replaced by LinFusion
   (random weights in the official SD1.5 layout: 8 heads, mid = C). ``--quick``: 1024^2 only.

Times are medians of repeated runs; peak memory is the process RSS above the level before the
call (sampled every 5 ms, glibc set to return freed blocks to the OS). Ratios are what the targets check: >= 10x at 65k tokens, memory
linear in tokens, UNet step at 2048^2 >= 2x faster.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import boot, return_freed_memory_to_os, timed_with_peak  # noqa: E402

return_freed_memory_to_os()

DIM, HEADS = 320, 8
BUDGET_S = 1200.0  # skip a softmax size predicted to take longer than this per call
SUB_QUAD_MAX = 16384  # ComfyUI's CPU default is measured up to here only (it is slower than SDPA)


def operator_rows(quick: bool):
    """Per size: LinFusion core (linear attention on given q, k, v) and whole layer; softmax core
    (ComfyUI's attention function on the same q, k, v) and its layer time = core + projections."""
    import comfy.ldm.modules.attention as A
    import comfy.ops
    from ultrares.kernels.linfusion import LinFusionAttention, linear_attention

    torch.manual_seed(0)
    softmax = A.CrossAttention(DIM, heads=HEADS, dim_head=DIM // HEADS, operations=comfy.ops.manual_cast)
    for p in softmax.parameters():
        torch.nn.init.normal_(p, std=DIM**-0.5)
    lin = LinFusionAttention(DIM, HEADS)
    sizes = [4096, 16384] if quick else [4096, 16384, 65536, 262144]
    functions = {"sdpa": A.optimized_attention, "sub_quad": A.attention_sub_quad}
    rows, notes = [], []
    last = {name: None for name in functions}
    results = {}
    for n in sizes:
        x = torch.randn(1, n, DIM)
        reps = 3 if n <= 16384 else 1
        with torch.inference_mode():
            q, k, v = softmax.to_q(x), softmax.to_k(x), softmax.to_v(x)
        t_proj, _ = timed_with_peak(
            lambda x=x: softmax.to_out(softmax.to_v(x) + softmax.to_k(x) + softmax.to_q(x)), reps
        )
        t_core, m_core = timed_with_peak(lambda q=q, k=k, v=v: linear_attention(q, k, v, HEADS), reps)
        t_lin, m_lin = timed_with_peak(lambda x=x: lin(x), reps)
        t_chunk, m_chunk = timed_with_peak(lambda x=x: lin(x, chunk_size=16384), reps)
        row = {
            "tokens": n,
            "linfusion_core_s": t_core,
            "linfusion_core_MiB": m_core,
            "linfusion_s": t_lin,
            "linfusion_MiB": m_lin,
            "linfusion_chunked_MiB": m_chunk,
            "softmax_projections_s": t_proj,
        }
        for name, fn in functions.items():
            prev = last[name]
            predicted = prev[1] * (n / prev[0]) ** 2 if prev else 0.0
            if name == "sub_quad" and n > SUB_QUAD_MAX:
                continue
            if predicted > BUDGET_S:
                notes.append(
                    f"softmax ({name}) at {n} tokens skipped: ~{predicted:.0f} s predicted "
                    f"(quadratic from {prev[0]} tokens)"
                )
                continue
            t, m = timed_with_peak(lambda q=q, k=k, v=v, fn=fn: fn(q, k, v, HEADS), reps)
            row[name + "_core_s"], row[name + "_core_MiB"] = t, m
            last[name] = (n, t)
        results[n] = row
        sd = row.get("sdpa_core_s")
        sq = row.get("sub_quad_core_s")
        rows.append(
            [
                n,
                round(t_core, 4),
                round(t_lin, 3),
                round(m_lin, 1),
                round(m_chunk, 1),
                round(sd, 3) if sd else "skipped",
                round(row["sdpa_core_MiB"], 1) if sd else "-",
                round(sq, 3) if sq else "-",
                f"{sd / t_core:.1f}x" if sd else "-",
                f"{(sd + t_proj) / t_lin:.1f}x" if sd else "-",
            ]
        )
        print(f"  operator {n}: {row}", flush=True)
    return rows, notes, results


def _sd15_full():
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    unet_config = {
        "use_checkpoint": False,
        "image_size": 32,
        "out_channels": 4,
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": None,
        "in_channels": 4,
        "model_channels": 320,
        "num_res_blocks": [2, 2, 2, 2],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "channel_mult": [1, 2, 4, 4],
        "transformer_depth_middle": 1,
        "use_linear_in_transformer": False,
        "context_dim": 768,
        "num_heads": 8,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }
    config = comfy.supported_models.SD15(unet_config)
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, "", device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.diffusion_model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
            else:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


def unet_rows(quick: bool, results_out: dict):
    rt = boot()
    lf_nodes = sys.modules[rt.node_class("UltraResLinFusionApply").__module__]
    from ultrares.kernels import linfusion_distill as ld
    from ultrares.kernels import linfusion_format as fmt

    model = _sd15_full()
    specs = ld.specs_for(model.model.diffusion_model, [2, 2, 2, 2])
    torch.manual_seed(0)
    weights = lf_nodes.LinFusionWeights(
        "bench", list(specs.values()), [fmt.build_layer(s).state_dict() for s in specs.values()]
    )
    patched = lf_nodes.patch_model(model, weights)
    ctx = torch.randn(1, 77, 768)
    rows = []
    for px in [1024] if quick else [1024, 2048]:
        lat = px // 8
        x = torch.randn(1, 4, lat, lat)
        sigma = torch.tensor([5.0])
        timings = {}
        for label, m in (("softmax", model), ("linfusion", patched)):
            m.patch_model()
            try:
                fn = lambda m=m, x=x, sigma=sigma: m.model.apply_model(x, sigma, c_crossattn=ctx)  # noqa: E731
                timings[label] = timed_with_peak(fn, 1 if px >= 2048 else 2)
            finally:
                m.unpatch_model()
            print(f"  unet {px}^2 {label}: {timings[label]}", flush=True)
        (ts, ms), (tl, ml) = timings["softmax"], timings["linfusion"]
        results_out[px] = {"softmax_s": ts, "softmax_MiB": ms, "linfusion_s": tl, "linfusion_MiB": ml}
        rows.append(
            [f"UNet step {px}^2", round(ts, 2), round(ms, 0), round(tl, 2), round(ml, 0), f"{ts / tl:.2f}x"]
        )
    return rows


def run(quick: bool) -> dict:
    boot()  # ComfyUI args (pytorch attention, CPU) before comfy.ldm is imported
    import comfy.ldm.modules.attention as A

    op_rows, notes, op_results = operator_rows(quick)
    unet_results: dict = {}
    u_rows = unet_rows(quick, unet_results)
    targets = {}
    if 65536 in op_results and op_results[65536].get("sdpa_core_s"):
        r = op_results[65536]
        targets["operator_65k_core_speedup>=10x"] = r["sdpa_core_s"] / r["linfusion_core_s"]
        targets["operator_65k_layer_speedup"] = (r["sdpa_core_s"] + r["softmax_projections_s"]) / r[
            "linfusion_s"
        ]
    sizes = sorted(op_results)
    if len(sizes) >= 2:
        a, b = sizes[0], sizes[-1]
        targets["linfusion_memory_ratio_vs_token_ratio"] = (
            op_results[b]["linfusion_MiB"] / max(op_results[a]["linfusion_MiB"], 1e-3)
        ) / (b / a)
    if 2048 in unet_results:
        targets["unet_2048_speedup>=2x"] = unet_results[2048]["softmax_s"] / unet_results[2048]["linfusion_s"]
    notes.append(
        "UNet rows: 'LinFusion layer' columns = the patched UNet step, 'softmax core' columns = the "
        "unpatched step (same model, same input)"
    )
    notes.append(
        f"optimized_attention here = {A.optimized_attention.__name__}; CPU threads {torch.get_num_threads()}"
    )
    notes.append(
        "core = attention on given q/k/v; layer = with projections (LinFusion: to_q_/to_k_ branches "
        "and q/k/v/out; softmax: q/k/v/out). Batch 1, fp32, CPU"
    )
    columns = [
        "tokens / case",
        "LinFusion core s",
        "LinFusion layer s",
        "LinFusion layer MiB",
        "LinFusion chunked MiB",
        "softmax core s",
        "softmax core MiB",
        "sub_quad core s",
        "speed-up core",
        "speed-up layer",
    ]
    rows = op_rows + [[r[0], "-", r[3], r[4], "-", r[1], r[2], "-", "-", r[5]] for r in u_rows]
    return {
        "title": "LinFusion vs softmax self-attention (CPU)",
        "columns": columns,
        "rows": rows,
        "notes": notes,
        "targets": targets,
    }


if __name__ == "__main__":
    import json

    result = run(quick="--quick" in sys.argv)
    print(json.dumps(result, indent=1, default=str))
