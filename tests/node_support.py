"""Test helpers shared by several test modules (a test module never imports another one): official-layout
LinFusion files for a tiny model, a sigma-recording model clone, the relay sampler's defaults, the DiGIT
workflow's example image."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
from ultrares.kernels import linfusion_format as fmt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_specs(model, mid_dim_scale=None):
    """Official-format specs for every attn1 of ``model`` (a ModelPatcher), read through
    get_model_object so a clone that is currently loaded with object patches does not matter."""
    unet = model.get_model_object("diffusion_model")
    res = model.model.model_config.unet_config["num_res_blocks"]
    specs = {}
    for path in [n for n, _ in unet.named_modules() if n.rsplit(".", 1)[-1] == "attn1"]:
        m = model.get_model_object(f"diffusion_model.{path}")
        dim = m.to_q.weight.shape[1]
        specs[path] = fmt.LayerSpec(
            fmt.ldm_to_diffusers(path, res),
            dim,
            int(m.heads),
            None if not mid_dim_scale else dim // mid_dim_scale,
        )
    return specs


def write_lf_file(model, path, mid_dim_scale=None, heads=None, seed=0, dtype=torch.float16):
    """Random LinFusion weights in the official layout, sized for ``model`` (a ModelPatcher)."""
    specs = tiny_specs(model, mid_dim_scale)
    if heads is not None:
        specs = {
            p: fmt.LayerSpec(s.module_name, s.dim_n, heads(s.dim_n), s.projection_mid_dim)
            for p, s in specs.items()
        }
    torch.manual_seed(seed)
    layers = [fmt.build_layer(s) for s in specs.values()]
    fmt.save_linfusion(str(path), list(specs.values()), layers, dtype=dtype)
    return specs


def record_sigmas(model):
    """A clone whose every model call appends its sigma (first batch entry) to a list."""
    m = model.clone()
    seen: list[float] = []

    def wrapper(apply_model, args):
        seen.append(float(args["timestep"].reshape(-1)[0]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    m.set_model_unet_function_wrapper(wrapper)
    return m, seen


SAMPLER_DEFAULTS = dict(
    block_size=2,
    blur_sigma_max=0.0,
    prob_length=0.93,
    s_block=0.0,
    s_noise=0.0,
    s_churn=0.0,
    s_tmin=0.0,
    s_tmax=1000.0,
    s_churn_noise=1.0,
)


def write_example(path) -> np.ndarray:
    """A Twemoji (fox face) on a grey background, 200 x 240, as the workflow's input PNG."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import digit_assets
    from PIL import Image

    files = [f for f in digit_assets.twemoji_files() if f.endswith("1f98a.png")]
    scene = digit_assets.emoji_scene(files[0], np.random.default_rng(0), size=240)
    arr = (scene.permute(1, 2, 0).numpy()[20:220] * 255).round().astype(np.uint8)  # 200 x 240
    Image.fromarray(arr).save(path)
    return arr
