"""The LinFusion node path in half precision: a tiny SD1.5/SDXL model built the way ComfyUI builds
an fp16/bf16 checkpoint (``set_inference_dtype``), patched by UltraResLinFusionLoader +
UltraResLinFusionApply, loaded by ComfyUI's ModelPatcher onto the device, against the same model
and weights in float32 on the CPU (tolerance UNET_TOL in cuda_cases.py)."""

from __future__ import annotations

import sys

import pytest
import torch
from cuda_cases import CASES, UNET_TOL, rel_err
from ultrares.kernels import linfusion_format as fmt


def _build(family: str, dtype: torch.dtype, load_device: str):
    """(fp32 CPU MODEL, ``dtype`` MODEL with ``load_device``) with the test pack's seeded weights."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    from harness.paths import TEST_PACKS

    sys.path.insert(0, str(TEST_PACKS / "ultrares_testing"))
    import tiny_models

    ref = tiny_models.build_model(family, 0)
    config = getattr(comfy.supported_models, tiny_models.CONFIG_CLASSES[family])(
        dict(tiny_models.UNETS[family])
    )
    config.set_inference_dtype(dtype, None)
    base = config.get_model({}, "", device=torch.device("cpu"))
    base.diffusion_model.load_state_dict(ref.model.diffusion_model.state_dict())
    assert base.get_dtype() == dtype
    half = comfy.model_patcher.ModelPatcher(
        base, load_device=torch.device(load_device), offload_device=mm.unet_offload_device()
    )
    return ref, half


def _write_weights(model, path, mid_dim_scale):
    specs = fmt.attn1_specs(
        model.model.diffusion_model, model.model.model_config.unet_config["num_res_blocks"], mid_dim_scale
    )
    torch.manual_seed(0)
    fmt.save_linfusion(str(path), specs, [fmt.build_layer(s) for s in specs], dtype=torch.float16)


def _eps(patched, device, x, sigma, cond):
    patched.patch_model(device_to=torch.device(device))
    try:
        with torch.no_grad():
            denoised = patched.model.apply_model(
                x.to(device), sigma.to(device), **{k: v.to(device) for k, v in cond.items()}
            )
    finally:
        patched.unpatch_model(patched.offload_device)
    return ((x.to(device) - denoised.float()) / sigma.to(device).view(-1, 1, 1, 1)).cpu()


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("family,mid_scale,ctx_dim,adm", [("sd15", None, 64, None), ("sdxl", 16, 128, 1600)])
def test_linfusion_unet_in_half_precision(comfy, lf_dir, device, dtype, family, mid_scale, ctx_dim, adm):
    ref, half = _build(family, dtype, device)
    _write_weights(ref, lf_dir / f"lf_{family}.safetensors", mid_scale)
    (weights,) = comfy.run_node("UltraResLinFusionLoader", lf_name=f"lf_{family}.safetensors")
    (ref_lf,) = comfy.run_node("UltraResLinFusionApply", model=ref, linfusion=weights)
    (half_lf,) = comfy.run_node("UltraResLinFusionApply", model=half, linfusion=weights)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 32, 32, generator=gen)
    sigma = torch.tensor([1.5])
    cond = {"c_crossattn": torch.randn(1, 77, ctx_dim, generator=gen)}
    if adm:
        cond["y"] = torch.randn(1, adm, generator=gen)
    want = _eps(ref_lf, "cpu", x, sigma, cond)
    got = _eps(half_lf, device, x, sigma, cond)
    err = rel_err(got, want)
    assert err < UNET_TOL[dtype], err
    # LinFusion is active in both: the softmax model predicts something else
    assert rel_err(_eps(ref, "cpu", x, sigma, cond), want) > 10 * err
