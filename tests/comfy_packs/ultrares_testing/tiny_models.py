"""Reduced-width but real-architecture SD1.5-, SDXL-, SD3- and Flux-family models for tests.

Everything is built from ComfyUI's own classes (``comfy.supported_models.SD15`` / ``SDXL``,
``model_base``, ``sd1_clip``/``sdxl_clip`` text encoders, ``AutoencoderKL``) with the real block
layout (same number of input/middle/output blocks, the same attention placement, so module paths
such as ``input_blocks.1.1.transformer_blocks.0.attn1`` match the full-size models) and only the
widths (and SDXL's transformer depths) reduced. Weights are seeded random values, so every build
with the same seed is bit-identical.

``build(family)`` -> ``(MODEL: ModelPatcher, CLIP: comfy.sd.CLIP, VAE: comfy.sd.VAE)`` for family in
``FAMILIES``: "sd15", "sdxl", "sd15_inpaint" (9-channel UNet), "sd3" (MMDiT, 16-channel latent, SDXL's
tiny CLIP as text encoder), "flux" (guidance-embedded Flux, 16-channel latent, SD1.5's tiny CLIP-L as
text encoder: context width = pooled width = 64).
``build_controlnet(family)``: a real ``comfy.controlnet.ControlNet`` (``comfy.cldm.cldm.ControlNet`` with
the family's reduced UNet config), ``build_t2i_adapter()``: a real SD1.5 ``comfy.controlnet.T2IAdapter``.
"""

from __future__ import annotations

import functools

import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.supported_models
import torch

CLIP_L = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 2,
    "num_hidden_layers": 3,
    "projection_dim": 64,
}
CLIP_G = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 2,
    "num_hidden_layers": 3,
    "projection_dim": 64,
}

UNETS = {
    # SD1.5 block layout (model_detection's SD15 dict) with model_channels 320 -> 32, context 768 -> 64.
    "sd15": {
        "use_checkpoint": False,
        "image_size": 32,
        "out_channels": 4,
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": None,
        "in_channels": 4,
        "model_channels": 32,
        "num_res_blocks": [2, 2, 2, 2],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "channel_mult": [1, 2, 4, 4],
        "transformer_depth_middle": 1,
        "use_linear_in_transformer": False,
        "context_dim": CLIP_L["hidden_size"],
        "num_heads": 8,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    },
    # SDXL block layout with model_channels 320 -> 64 (head width stays 64), transformer depths
    # [0,0,2,2,10,10] -> [0,0,1,1,2,2], context 2048 -> 128, pooled 1280 -> 64 (adm 2816 -> 1600).
    "sdxl": {
        "use_checkpoint": False,
        "image_size": 32,
        "out_channels": 4,
        "use_spatial_transformer": True,
        "legacy": False,
        "num_classes": "sequential",
        "adm_in_channels": CLIP_G["projection_dim"] + 6 * 256,
        "in_channels": 4,
        "model_channels": 64,
        "num_res_blocks": [2, 2, 2],
        "transformer_depth": [0, 0, 1, 1, 2, 2],
        "channel_mult": [1, 2, 4],
        "transformer_depth_middle": 1,
        "use_linear_in_transformer": True,
        "context_dim": CLIP_L["hidden_size"] + CLIP_G["hidden_size"],
        "num_head_channels": 64,
        "transformer_depth_output": [0, 0, 0, 1, 1, 1, 2, 2, 2],
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    },
}

VAE_CONFIG = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 1,
    "attn_resolutions": [],
    "dropout": 0.0,
}


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


UNETS["sd15_inpaint"] = {**UNETS["sd15"], "in_channels": 9}

# DiTs. SD3: depth 2 -> hidden 128, 2 heads (model_detection: hidden = 64 * depth); the context
# embedder maps the tiny SDXL CLIP's 128-wide context, the y embedder its 64-wide pooled output.
DITS = {
    "sd3": {
        "in_channels": 16,
        "out_channels": 16,
        "patch_size": 2,
        "depth": 2,
        "input_size": None,
        "adm_in_channels": CLIP_G["projection_dim"],
        "pos_embed_max_size": 96,
        "num_patches": 96 * 96,
        "pos_embed_scaling_factor": None,
        "x_block_self_attn_layers": [],
        "context_embedder_config": {
            "target": "torch.nn.Linear",
            "params": {"in_features": CLIP_L["hidden_size"] + CLIP_G["hidden_size"], "out_features": 128},
        },
    },
    # Flux: hidden 64, 2 heads of 32 (axes 4/14/14 in Flux's 16/56/56 proportion), one double and one
    # single block; text = tiny CLIP-L (context 64, pooled 64).
    "flux": {
        "image_model": "flux",
        "in_channels": 16,
        "out_channels": 16,
        "vec_in_dim": CLIP_L["hidden_size"],
        "context_in_dim": CLIP_L["hidden_size"],
        "hidden_size": 64,
        "mlp_ratio": 4.0,
        "num_heads": 2,
        "depth": 1,
        "depth_single_blocks": 1,
        "axes_dim": [4, 14, 14],
        "theta": 10000,
        "patch_size": 2,
        "qkv_bias": True,
        "guidance_embed": True,
    },
}
CONFIG_CLASSES = {"sd15": "SD15", "sd15_inpaint": "SD15", "sdxl": "SDXL", "sd3": "SD3", "flux": "Flux"}
CLIP_FAMILY = {"sd15": "sd15", "sd15_inpaint": "sd15", "sdxl": "sdxl", "sd3": "sdxl", "flux": "sd15"}
FAMILIES = tuple(CONFIG_CLASSES)
LATENT_CHANNELS = {"sd3": 16, "flux": 16}


def _model_config(family: str):
    cls = getattr(comfy.supported_models, CONFIG_CLASSES[family])
    config = cls(dict(UNETS.get(family) or DITS[family]))
    config.set_inference_dtype(torch.float32, None)
    return config


def _calibrate_output(model, family: str, seed: int) -> None:
    """Scale the output layer so the raw prediction (noise, or velocity for flow models) has unit std
    on random inputs, as a trained model's does (random residual stacks otherwise predict with std
    ~100, and sampled latents blow up)."""
    gen = torch.Generator().manual_seed(seed + 3)
    net = model.diffusion_model
    channels = LATENT_CHANNELS.get(family, 4)
    x = torch.randn(2, channels, 16, 16, generator=gen)
    sigma = torch.tensor([0.5, 0.5]) if family in DITS else torch.tensor([5.0, 5.0])
    x_in = model.model_sampling.calculate_input(sigma, x)
    if family == "flux":
        ctx = torch.randn(2, 77, DITS[family]["context_in_dim"], generator=gen)
        kwargs = {
            "y": torch.randn(2, DITS[family]["vec_in_dim"], generator=gen),
            "guidance": torch.full((2,), 3.5),
        }
        last = net.final_layer.linear
    elif family == "sd3":
        ctx = torch.randn(
            2, 77, DITS[family]["context_embedder_config"]["params"]["in_features"], generator=gen
        )
        kwargs = {"y": torch.randn(2, DITS[family]["adm_in_channels"], generator=gen)}
        last = net.final_layer.linear
    else:
        ctx = torch.randn(2, 77, UNETS[family]["context_dim"], generator=gen)
        kwargs = {}
        if UNETS[family].get("adm_in_channels"):
            kwargs["y"] = torch.randn(2, UNETS[family]["adm_in_channels"], generator=gen)
        if UNETS[family]["in_channels"] != channels:  # inpaint: noise + mask + masked image
            x_in = torch.cat(
                [x_in, torch.randn(2, UNETS[family]["in_channels"] - channels, 16, 16, generator=gen)], 1
            )
        last = net.out[2]
    with torch.no_grad():
        out = net(x_in, model.model_sampling.timestep(sigma), context=ctx, **kwargs)
        scale = 1.0 / float(out.std())
        last.weight.mul_(scale)
        last.bias.mul_(scale)


def build_model(family: str, seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    config = _model_config(family)
    model = config.get_model({}, "", device=torch.device("cpu"))
    model.diffusion_model.load_state_dict(seeded_state_dict(model.diffusion_model, seed), strict=True)
    _calibrate_output(model, family, seed)
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


def build_clip(family: str, seed: int = 0) -> comfy.sd.CLIP:
    family = CLIP_FAMILY[family]
    target = _model_config(family).clip_target(state_dict={})
    options = {
        "clip_l_model_config": dict(CLIP_L),
        "clip_g_model_config": dict(CLIP_G),
        "dtype": torch.float32,
    }
    clip = comfy.sd.CLIP(target, model_options=options)
    stage = clip.cond_stage_model
    stage.load_state_dict(seeded_state_dict(stage, seed + 1), strict=True)
    return clip


def build_vae(seed: int = 0, channels: int = 4) -> comfy.sd.VAE:
    """A tiny AutoencoderKL (8x downscale) with ``channels`` latent channels (4: SD1.x/XL, 16: SD3/Flux)."""
    from comfy.ldm.models.autoencoder import AutoencoderKL

    params = {"embed_dim": channels, "ddconfig": {**VAE_CONFIG, "z_channels": channels}}
    template = AutoencoderKL(**params)
    sd = seeded_state_dict(template, seed + 2)
    vae = comfy.sd.VAE(sd=sd, config={"params": params}, dtype=torch.float32)
    vae.latent_channels = channels
    return vae


@functools.lru_cache(maxsize=8)
def _cached(family: str, seed: int):
    return (
        build_model(family, seed),
        build_clip(family, seed),
        build_vae(seed, LATENT_CHANNELS.get(family, 4)),
    )


def build(family: str, seed: int = 0):
    """(MODEL, CLIP, VAE) for ``family`` in ``FAMILIES``; cached per (family, seed), so callers
    must ``clone()`` before patching (as every ComfyUI node does)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny model family {family!r}; expected one of {sorted(FAMILIES)}")
    return _cached(family, seed)


def build_controlnet(family: str = "sd15", seed: int = 0):
    """A real ``comfy.controlnet.ControlNet`` (as ``load_controlnet_state_dict`` builds one) around
    ``comfy.cldm.cldm.ControlNet`` with the family's reduced UNet config and seeded weights. Its zero
    convolutions get random weights too, so the control visibly changes the prediction."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.ops

    config = dict(UNETS[family])
    config.pop("out_channels")
    net = comfy.cldm.cldm.ControlNet(
        **config,
        hint_channels=3,
        operations=comfy.ops.disable_weight_init,
        dtype=torch.float32,
        device=torch.device("cpu"),
    )
    sd = seeded_state_dict(net, seed + 11)
    for name in sd:  # zero convs start at 0 in training; a small random value makes the control matter
        if name.startswith(("zero_convs", "middle_block_out")) and name.endswith("weight"):
            sd[name] = sd[name] * 0.1
    net.load_state_dict(sd, strict=True)
    return comfy.controlnet.ControlNet(
        net, global_average_pooling=False, load_device=mm.get_torch_device(), manual_cast_dtype=None
    )


def build_t2i_adapter(seed: int = 0):
    """A real SD1.5-style ``comfy.controlnet.T2IAdapter`` (full adapter, 8x pixel unshuffle) whose
    feature widths match the tiny SD1.5 UNet (32/64/128/128)."""
    import comfy.controlnet
    import comfy.t2i_adapter.adapter

    ch = UNETS["sd15"]["model_channels"]
    net = comfy.t2i_adapter.adapter.Adapter(
        cin=3 * 64,
        channels=[ch, ch * 2, ch * 4, ch * 4],
        nums_rb=2,
        ksize=1,
        sk=True,
        use_conv=False,
        xl=False,
    )
    net.load_state_dict(seeded_state_dict(net, seed + 13), strict=True)
    return comfy.controlnet.T2IAdapter(
        net, net.input_channels, 8, "nearest-exact", device=torch.device("cpu")
    )
