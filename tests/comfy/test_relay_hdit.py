"""Relay up-scaling on an EDM pixel-space model: the embedded HDiT (Twemoji, 64 px) through
UltraResHDiTLoader, ComfyUI's EDM model_sampling and our relay nodes, 32 -> 64 px."""

from __future__ import annotations

import os

import pytest
import torch
from node_support import record_sigmas as _record_sigmas
from ultrares.kernels import relay as R
from ultrares.kernels import schedules

EMBEDDED = "ultrares-emoji64.safetensors"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(ROOT, "models", "hdit", EMBEDDED)),
    reason="embedded HDiT model not built yet (make embedded-models)",
)


def test_relay_upscale_on_edm_pixel_model(comfy):
    model, vae, _ = comfy.run_node("UltraResHDiTLoader", model_name=EMBEDDED, weight_dtype="float32")
    pos, neg = comfy.run_node("UltraResHDiTClass", class_id=3, unconditional=False)
    ms = model.get_model_object("model_sampling")
    assert type(ms).__name__.startswith("ModelSampling") and hasattr(ms, "sigma_data")
    m, seen = _record_sigmas(model)
    g = torch.Generator().manual_seed(0)
    coarse = (
        torch.rand(1, 3, 4, 4, generator=g) * 2 - 1
    ) * 0.8  # a smooth stand-in stage-one image in [-1, 1]
    low = {
        "samples": torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=True)
    }
    (out,) = comfy.run_node(
        "UltraResRelayUpscale",
        model=m,
        positive=pos,
        negative=neg,
        latent=low,
        factor=2,
        seed=0,
        steps=12,
        truncation_sigma=0.9,
        rho=7.0,
        cfg=2.0,
        blur_sigma_max=0.0,
        prob_length=0.93,
        s_block=0.15,
        s_noise=0.2,
        s_churn=0.0,
        s_tmin=0.0,
        s_tmax=1000.0,
        s_churn_noise=1.0,
    )
    x = out["samples"]
    assert x.shape == (1, 3, 64, 64) and torch.isfinite(x).all()
    (sig,) = comfy.run_node("UltraResRelaySigmas", model=model, steps=12, truncation_sigma=0.9, rho=7.0)
    grid = schedules.karras_sigmas(12, float(ms.sigma_min), float(ms.sigma_max), 7.0, convention="edm")
    assert torch.allclose(sig[:-1].double(), grid[grid < 0.9], rtol=1e-5)
    assert seen[0] == pytest.approx(float(sig[0]), rel=1e-4) and max(seen) < 0.9
    assert len(seen) == 2 * (len(sig) - 1) - 1
    # stage two keeps the up-sampled image's coarse content (it starts from it at sigma < 0.9)
    up = R.upsample_nearest(low["samples"], 2)
    pool = torch.nn.functional.avg_pool2d
    err = (pool(x, 8) - pool(up, 8)).abs().mean()
    assert err < (pool(up, 8) - pool(up, 8).mean()).abs().mean(), err
    (image,) = comfy.run_node("VAEDecode", samples=out, vae=vae)
    assert image.shape == (1, 64, 64, 3)
