"""Reduced-width but real-architecture SD1.5- and SDXL-family models for tests.

Everything is built from ComfyUI's own classes (``comfy.supported_models.SD15`` / ``SDXL``,
``model_base``, ``sd1_clip``/``sdxl_clip`` text encoders, ``AutoencoderKL``) with the real block
layout (same number of input/middle/output blocks, the same attention placement, so module paths
such as ``input_blocks.1.1.transformer_blocks.0.attn1`` match the full-size models) and only the
widths (and SDXL's transformer depths) reduced. Weights are seeded random values, so every build
with the same seed is bit-identical.

``build("sd15")`` / ``build("sdxl")`` -> ``(MODEL: ModelPatcher, CLIP: comfy.sd.CLIP, VAE: comfy.sd.VAE)``
"""

from __future__ import annotations

import functools

import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.supported_models
import torch

CLIP_L = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_hidden_layers": 3,
          "projection_dim": 64}
CLIP_G = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_hidden_layers": 3,
          "projection_dim": 64}

UNETS = {
    # SD1.5 block layout (model_detection's SD15 dict) with model_channels 320 -> 32, context 768 -> 64.
    "sd15": {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 32,
             "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
             "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
             "context_dim": CLIP_L["hidden_size"], "num_heads": 8,
             "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
             "use_temporal_attention": False, "use_temporal_resblock": False},
    # SDXL block layout with model_channels 320 -> 64 (head width stays 64), transformer depths
    # [0,0,2,2,10,10] -> [0,0,1,1,2,2], context 2048 -> 128, pooled 1280 -> 64 (adm 2816 -> 1600).
    "sdxl": {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "num_classes": "sequential",
             "adm_in_channels": CLIP_G["projection_dim"] + 6 * 256, "in_channels": 4, "model_channels": 64,
             "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 1, 1, 2, 2], "channel_mult": [1, 2, 4],
             "transformer_depth_middle": 1, "use_linear_in_transformer": True,
             "context_dim": CLIP_L["hidden_size"] + CLIP_G["hidden_size"], "num_head_channels": 64,
             "transformer_depth_output": [0, 0, 0, 1, 1, 1, 2, 2, 2],
             "use_temporal_attention": False, "use_temporal_resblock": False},
}

VAE_CONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
              "ch_mult": [1, 2, 4, 4], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}


def seeded_state_dict(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random weights in every tensor of ``module.state_dict()``: matrices/kernels ~ N(0, 1/fan_in),
    1-D weights (norm scales) = 1, biases = 0. ComfyUI's ops skip weight init, so this is required."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in module.state_dict().items():
        if not t.is_floating_point():
            out[name] = t
        elif t.ndim >= 2:
            fan_in = t[0].numel()
            out[name] = torch.randn(t.shape, generator=gen) / fan_in**0.5
        elif name.endswith("bias"):
            out[name] = torch.zeros(t.shape)
        elif t.ndim == 1:
            out[name] = torch.ones(t.shape)
        else:
            out[name] = torch.ones(t.shape)
    return out


def _model_config(family: str):
    cls = {"sd15": comfy.supported_models.SD15, "sdxl": comfy.supported_models.SDXL}[family]
    config = cls(dict(UNETS[family]))
    config.set_inference_dtype(torch.float32, None)
    return config


def _calibrate_output(unet: torch.nn.Module, family: str, seed: int) -> None:
    """Scale the last conv so the predicted noise has unit std on random inputs, as a trained
    model's does (random residual stacks otherwise predict noise with std ~100)."""
    gen = torch.Generator().manual_seed(seed + 3)
    x = torch.randn(2, 4, 16, 16, generator=gen)
    ctx = torch.randn(2, 77, UNETS[family]["context_dim"], generator=gen)
    kwargs = {}
    if UNETS[family].get("adm_in_channels"):
        kwargs["y"] = torch.randn(2, UNETS[family]["adm_in_channels"], generator=gen)
    with torch.no_grad():
        eps = unet(x, timesteps=torch.tensor([500.0, 500.0]), context=ctx, **kwargs)
        scale = 1.0 / float(eps.std())
        unet.out[2].weight.mul_(scale)
        unet.out[2].bias.mul_(scale)


def build_model(family: str, seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    config = _model_config(family)
    model = config.get_model({}, "", device=torch.device("cpu"))
    model.diffusion_model.load_state_dict(seeded_state_dict(model.diffusion_model, seed), strict=True)
    _calibrate_output(model.diffusion_model, family, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def build_clip(family: str, seed: int = 0) -> comfy.sd.CLIP:
    target = _model_config(family).clip_target(state_dict={})
    options = {"clip_l_model_config": dict(CLIP_L), "clip_g_model_config": dict(CLIP_G),
               "dtype": torch.float32}
    clip = comfy.sd.CLIP(target, model_options=options)
    stage = clip.cond_stage_model
    stage.load_state_dict(seeded_state_dict(stage, seed + 1), strict=True)
    return clip


def build_vae(seed: int = 0) -> comfy.sd.VAE:
    from comfy.ldm.models.autoencoder import AutoencoderKL

    params = {"embed_dim": 4, "ddconfig": dict(VAE_CONFIG)}
    template = AutoencoderKL(**params)
    sd = seeded_state_dict(template, seed + 2)
    return comfy.sd.VAE(sd=sd, config={"params": params}, dtype=torch.float32)


@functools.lru_cache(maxsize=4)
def _cached(family: str, seed: int):
    return build_model(family, seed), build_clip(family, seed), build_vae(seed)


def build(family: str, seed: int = 0):
    """(MODEL, CLIP, VAE) for ``family`` in {"sd15", "sdxl"}; cached per (family, seed), so callers
    must ``clone()`` before patching (as every ComfyUI node does)."""
    if family not in UNETS:
        raise ValueError(f"unknown tiny model family {family!r}; expected one of {sorted(UNETS)}")
    return _cached(family, seed)
