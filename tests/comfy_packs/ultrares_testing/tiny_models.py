"""Reduced-width but real-architecture test models of every image family, built by the running ComfyUI.

How a model is built (the same path as ``comfy.sd.load_diffusion_model_state_dict``): a *skeleton*
state dict in the family's official checkpoint key layout (the keys and shapes real files have, the
stable contract between checkpoints and ComfyUI; shapes at the reduced widths where detection reads a
width from a shape, zero-memory ``expand``-ed tensors) goes through the running version's
``comfy.model_detection.detect_unet_config``; the detected config picks the version's
``supported_models`` class (``model_config_from_unet_config``); where detection hard-codes full-size
widths (Flux's heads and rope axes, Qwen-Image's head count...) only those width fields are overridden
(``WIDTH_OVERRIDES``) before the class builds the model. Every other constructor field (0.30's
``txt_ids_dims``, ...) comes from the version. Weights are seeded random values (bit-identical per
seed), and the output layer is scaled so the raw prediction has unit std (``_calibrate_output``).
The UNet families ("sd15", "sdxl", "sd15_inpaint") use ``UNETS``: configs in exactly the form (and with
the values) the version's detection returns for those layouts, checked by ``tests/comfy/test_harness.py``
by running detection on the built model's full state dict.

Public API (stable, used across the suite):
- ``build(family, seed=0) -> (MODEL: ModelPatcher, CLIP | None, VAE | None)``, cached per
  (family, seed): ``clone()`` before patching.
- ``FAMILIES``: the families the running ComfyUI has (``ALL_FAMILIES``: every family known here).
  "sd15", "sdxl", "sd15_inpaint" (9-channel UNet), "sd3" (tiny SDXL CLIP), "flux" (tiny CLIP-L:
  context = pooled width = 64), "flux_fill" (Flux Fill: 96 input channels = 16 latent + 16 masked
  image + 64 packed mask; tiny CLIP-L), "flux2", "qwen_image", "zimage", "chroma",
  "chroma_radiance" (pixel space), "hidream", "hunyuan_image21".
- ``FAMILY_INFO[family]``: ``{"latent_channels", "pixels_per_latent" (the version's latent format's
  ``spacial_downscale_ratio`` where it states one, else the family's real ratio), "latent_ndim"
  (4, or 5 for Qwen-Image's [B, C, 1, H, W]), "versions" (ComfyUI versions having the family),
  "model_class" (``comfy.model_base`` class name), "clip" (True when build() returns a CLIP)}``.
  ``latent_shape(family, batch, height_px, width_px)`` gives a latent's shape for an image size.
- CLIP: real tiny ComfyUI text encoders for sd15/sdxl/sd3/flux/flux_fill. The 2026 families' real
  encoders (Qwen2.5-VL, Mistral, T5-XXL, Llama...) are large: ``build()`` returns ``clip=None`` for
  them, and ``family_conditioning(family, batch=1, seed=0)`` returns ComfyUI conditioning
  ``[[cross_attn[B, T, C], {extras}]]`` with the family's keys (``pooled_output``, ``guidance``,
  ``attention_mask``, HiDream's ``conditioning_llama3``...) at the tiny widths; it works for every
  family.
- VAE: a tiny ``AutoencoderKL`` (8x) with 4 or 16 channels for sd15/sdxl/sd3/flux/flux_fill and the
  8x 16-channel families (zimage, chroma, hidream); for "qwen_image" a tiny real Wan 2.1 VAE
  (``build_wan_vae``: images -> [B, 16, 1, H/8, W/8]); ``None`` for Flux.2 and HunyuanImage 2.1
  (ComfyUI's detection of their VAEs hard-codes full-size encoders) and Chroma Radiance (pixel space).
- ``build_model(family, seed)``, ``build_clip(family, seed)``, ``build_vae(seed, channels)``,
  ``model_config(family)`` (the version's configured ``supported_models`` instance),
  ``skeleton_state_dict(family)``, ``family_conditioning``.
- ``build_controlnet(family="sd15")``: a real ``comfy.controlnet.ControlNet`` (``cldm.ControlNet``
  with the family's reduced UNet config); ``build_t2i_adapter()``: a real SD1.5 ``T2IAdapter``;
  ``build_flux_controlnet(kind="xlabs"|"instantx")``: a real Flux ControlNet as
  ``load_controlnet_flux_xlabs_mistoline`` / ``load_controlnet_flux_instantx`` build it (InstantX
  takes a VAE-encoded hint: pass ``vae=`` to ``set_cond_hint``); ``build_control_lora()``: a real
  ``comfy.controlnet.ControlLora`` for the tiny SDXL.
- ``seeded_state_dict``, ``UNETS``, ``DITS`` (the resolved DiT configs), ``LATENT_CHANNELS``,
  ``CONFIG_CLASSES``.
"""

from __future__ import annotations

import functools
import math

import comfy.model_detection
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
UNETS["sd15_inpaint"] = {**UNETS["sd15"], "in_channels": 9}

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

# Tiny DiT widths: hidden 64 with 2 heads of 32 everywhere (rope axes summing to 32 in each family's
# own proportions), one block of each kind, text width 64.
HIDDEN = 64
HEAD = 32
TEXT = 64


def _t(*shape: int) -> torch.Tensor:
    """A zero-memory stand-in tensor: detection reads only shapes (and key names)."""
    return torch.zeros(()).expand(*shape)


def _flux_like(prefix_keys: dict, in_features: int | None, *, guidance: bool, vector: bool) -> dict:
    sd = {
        "double_blocks.0.img_attn.norm.key_norm.scale": _t(HEAD),
        "double_blocks.0.img_attn.qkv.weight": _t(3 * HIDDEN, HIDDEN),
        "single_blocks.0.norm.key_norm.scale": _t(HEAD),
        "single_blocks.0.linear1.weight": _t(3 * HIDDEN + 4 * HIDDEN, HIDDEN),
        "txt_in.weight": _t(HIDDEN, TEXT),
        "final_layer.linear.weight": _t(64, HIDDEN),
    }
    if in_features is not None:
        sd["img_in.weight"] = _t(HIDDEN, in_features)
    if guidance:
        sd["guidance_in.in_layer.weight"] = _t(HIDDEN, 256)
    if vector:
        sd["vector_in.in_layer.weight"] = _t(HIDDEN, CLIP_L["hidden_size"])
    sd.update(prefix_keys)
    return sd


def _skel_sd3() -> dict:
    # SD3 MMDiT: detection reads hidden = 64 * depth from x_embedder; depth 2 -> hidden 128, 2 heads.
    return {
        "joint_blocks.0.context_block.attn.qkv.weight": _t(384, 128),
        "joint_blocks.1.context_block.attn.qkv.weight": _t(384, 128),
        "x_embedder.proj.weight": _t(128, 16, 2, 2),
        "final_layer.linear.weight": _t(2 * 2 * 16, 128),
        "y_embedder.mlp.0.weight": _t(128, CLIP_G["projection_dim"]),
        "context_embedder.weight": _t(128, CLIP_L["hidden_size"] + CLIP_G["hidden_size"]),
        "pos_embed": _t(1, 96 * 96, 128),
    }


def _skel_flux() -> dict:
    return _flux_like({}, 16 * 4, guidance=True, vector=True)


def _skel_flux_fill() -> dict:
    # Flux Fill: img_in takes 16 noise + 16 masked-image + 64 packed-mask channels per 2x2 patch.
    return _flux_like({}, 96 * 4, guidance=True, vector=True)


def _skel_flux2() -> dict:
    # Flux.2: 128-channel latents (32 x 2x2 patchified by the VAE), patch 1, global modulation.
    return _flux_like(
        {
            "double_stream_modulation_img.lin.weight": _t(6 * HIDDEN, HIDDEN),
            "double_stream_modulation_txt.lin.weight": _t(6 * HIDDEN, HIDDEN),
            "single_stream_modulation.lin.weight": _t(3 * HIDDEN, HIDDEN),
        },
        128,
        guidance=True,
        vector=False,
    )


def _skel_chroma() -> dict:
    return _flux_like(
        {
            "distilled_guidance_layer.in_proj.weight": _t(HIDDEN, 64),
            "distilled_guidance_layer.norms.0.scale": _t(HIDDEN),
        },
        16 * 4,
        guidance=False,
        vector=False,
    )


def _skel_chroma_radiance() -> dict:
    sd = _skel_chroma()
    del sd["img_in.weight"]  # pixel space: a 16x16 patch conv instead
    sd.update(
        {
            "img_in_patch.weight": _t(HIDDEN, 3, 16, 16),
            "nerf_blocks.0.norm.scale": _t(16),
            "nerf_final_layer_conv.norm.scale": _t(16),
        }
    )
    return sd


def _skel_qwen_image() -> dict:
    return {
        "txt_norm.weight": _t(TEXT),
        "img_in.weight": _t(HIDDEN, 16 * 4),
        "transformer_blocks.0.attn.to_q.weight": _t(HIDDEN, HIDDEN),
        "proj_out.weight": _t(16 * 4, HIDDEN),
    }


def _skel_zimage() -> dict:
    # Detection recognises Z-Image by its full width (cap_embedder 2560 -> 3840); the width fields
    # are then reduced by WIDTH_OVERRIDES.
    return {
        "cap_embedder.1.weight": _t(3840, TEXT),
        "cap_pad_token": _t(1, 3840),
        "x_pad_token": _t(1, 3840),
        "noise_refiner.0.attention.k_norm.weight": _t(128),
        "context_refiner.0.attention.k_norm.weight": _t(128),
        "layers.0.attention.qkv.weight": _t(3 * 3840, 3840),
    }


def _skel_hidream() -> dict:
    return {
        "caption_projection.0.linear.weight": _t(HIDDEN, TEXT),
        "double_stream_blocks.0.block.ff_i.gate.weight": _t(4, HIDDEN),
        "single_stream_blocks.0.block.ff_i.gate.weight": _t(4, HIDDEN),
    }


def _skel_hunyuan_image21() -> dict:
    # HunyuanImage 2.1: 64-channel latents at 32x, patch 1x1 (2-D), Qwen2.5-VL text (3584 -> 64).
    return {
        "txt_in.individual_token_refiner.blocks.0.norm1.weight": _t(HIDDEN),
        "txt_in.input_embedder.weight": _t(HIDDEN, TEXT),
        "img_in.proj.weight": _t(HIDDEN, 64, 1, 1),
        "final_layer.linear.weight": _t(64, HIDDEN),
        "double_blocks.0.img_attn_q_norm.weight": _t(HEAD),
        "single_blocks.0.q_norm.weight": _t(HEAD),
    }


SKELETONS = {
    "sd3": _skel_sd3,
    "flux": _skel_flux,
    "flux_fill": _skel_flux_fill,
    "flux2": _skel_flux2,
    "qwen_image": _skel_qwen_image,
    "zimage": _skel_zimage,
    "chroma": _skel_chroma,
    "chroma_radiance": _skel_chroma_radiance,
    "hidream": _skel_hidream,
    "hunyuan_image21": _skel_hunyuan_image21,
}

# Only the width fields that the versions' detection hard-codes at full size.
_FLUX_AXES = {"axes_dim": [4, 14, 14], "num_heads": HIDDEN // HEAD}  # Flux's 16/56/56 proportion
WIDTH_OVERRIDES = {
    "flux": _FLUX_AXES,
    "flux_fill": _FLUX_AXES,
    "flux2": {"axes_dim": [8, 8, 8, 8], "num_heads": HIDDEN // HEAD},  # Flux.2: 32/32/32/32
    "chroma": {**_FLUX_AXES, "out_dim": HIDDEN, "hidden_dim": HIDDEN, "n_layers": 1},
    "chroma_radiance": {
        **_FLUX_AXES,
        "out_dim": HIDDEN,
        "hidden_dim": HIDDEN,
        "n_layers": 1,
        "nerf_hidden_size": 16,
        "nerf_depth": 1,
    },
    "qwen_image": {
        "num_attention_heads": HIDDEN // HEAD,
        "attention_head_dim": HEAD,
        "joint_attention_dim": TEXT,
        "axes_dims_rope": [4, 14, 14],  # Qwen-Image's 16/56/56
    },
    # Z-Image's modulation is min(dim, 256) wide but its timestep embedder always 256: dim >= 256.
    "zimage": {
        "dim": 256,
        "n_heads": 256 // HEAD,
        "n_kv_heads": 256 // HEAD,
        "axes_dims": [8, 12, 12],  # Z-Image's 32/48/48
    },
    "hidream": {
        "attention_head_dim": HEAD,
        "num_attention_heads": HIDDEN // HEAD,
        "axes_dims_rope": [16, 8, 8],  # HiDream's 64/32/32
        "caption_channels": [TEXT, TEXT],
        "text_emb_dim": TEXT,
        "num_layers": 1,
        "num_single_layers": 1,
        "llama_layers": [0, 1],
    },
    "hunyuan_image21": {"num_heads": HIDDEN // HEAD, "axes_dim": [16, 16]},  # HunyuanImage's 64/64
}

# Where the family exists: (model_base class, ComfyUI versions). Every family is in both trees.
FAMILY_CLASSES = {
    "sd15": "BaseModel",
    "sd15_inpaint": "BaseModel",
    "sdxl": "SDXL",
    "sd3": "SD3",
    "flux": "Flux",
    "flux_fill": "Flux",
    "flux2": "Flux2",
    "qwen_image": "QwenImage",
    "zimage": "Lumina2",
    "chroma": "Chroma",
    "chroma_radiance": "ChromaRadiance",
    "hidream": "HiDream",
    "hunyuan_image21": "HunyuanImage21",
}
# The family's supported_models class (what detection must pick).
CONFIG_CLASSES = {
    "sd15": "SD15",
    "sd15_inpaint": "SD15",
    "sdxl": "SDXL",
    "sd3": "SD3",
    "flux": "Flux",
    "flux_fill": "FluxInpaint",
    "flux2": "Flux2",
    "qwen_image": "QwenImage",
    "zimage": "ZImage",
    "chroma": "Chroma",
    "chroma_radiance": "ChromaRadiance",
    "hidream": "HiDream",
    "hunyuan_image21": "HunyuanImage21",
}
CLIP_FAMILY = {"sd15": "sd15", "sd15_inpaint": "sd15", "sdxl": "sdxl", "sd3": "sdxl", "flux": "sd15"}
CLIP_FAMILY["flux_fill"] = "sd15"
ALL_FAMILIES = tuple(CONFIG_CLASSES)
# Real pixels per latent pixel, for versions whose latent formats do not state it (0.3.75).
_RATIO = {"flux2": 16, "hunyuan_image21": 32, "chroma_radiance": 1}
_VAE_CHANNELS = {"sd15": 4, "sd15_inpaint": 4, "sdxl": 4, "sd3": 16, "flux": 16, "flux_fill": 16}
_VAE_CHANNELS.update({"zimage": 16, "chroma": 16, "hidream": 16})


def _version() -> str:
    try:
        import comfyui_version

        return comfyui_version.__version__
    except ImportError:  # pragma: no cover - every supported tree has it
        return "unknown"


def _exists(family: str) -> bool:
    import comfy.model_base

    return hasattr(comfy.supported_models, CONFIG_CLASSES[family]) and hasattr(
        comfy.model_base, FAMILY_CLASSES[family]
    )


FAMILIES = tuple(f for f in ALL_FAMILIES if _exists(f))


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
        else:
            out[name] = torch.ones(t.shape)
    return out


def skeleton_state_dict(family: str) -> dict[str, torch.Tensor]:
    """The family's detection skeleton: official checkpoint keys, zero-memory tensors."""
    return SKELETONS[family]()


def _detected_config(family: str):
    """(supported_models class, unet config) as the running version detects the family's skeleton,
    with the full-size width fields reduced."""
    sd = skeleton_state_dict(family)
    detected = comfy.model_detection.detect_unet_config(sd, "")
    if detected is None:
        raise RuntimeError(f"ComfyUI {_version()} does not detect the {family} layout")
    matched = comfy.model_detection.model_config_from_unet_config(dict(detected), sd)
    if matched is None:
        raise RuntimeError(f"ComfyUI {_version()} has no model config for {detected}")
    return type(matched), {**detected, **WIDTH_OVERRIDES.get(family, {})}


def model_config(family: str):
    """The running version's ``supported_models`` instance for the tiny ``family`` (float32)."""
    if family in UNETS:
        cls, unet_config = getattr(comfy.supported_models, CONFIG_CLASSES[family]), dict(UNETS[family])
    else:
        cls, unet_config = _detected_config(family)
    config = cls(unet_config)
    config.set_inference_dtype(torch.float32, None)
    return config


_model_config = model_config  # old private name


class _ResolvedDits(dict):
    """``DITS[family]``: the resolved unet config of a DiT family (detected on first use)."""

    def __missing__(self, family):
        if family not in SKELETONS:
            raise KeyError(family)
        config = dict(model_config(family).unet_config)
        config.pop("dtype", None)  # set_inference_dtype's entry, not part of the architecture
        self[family] = config
        return self[family]


DITS = _ResolvedDits()


def _latent_format(family: str):
    return getattr(comfy.supported_models, CONFIG_CLASSES[family]).latent_format


def _ratio(family: str) -> int:
    fmt = _latent_format(family)
    stated = getattr(fmt, "spacial_downscale_ratio", None)
    return int(stated) if stated is not None else _RATIO.get(family, 8)


def _family_info(family: str) -> dict:
    fmt = _latent_format(family)
    return {
        "latent_channels": fmt.latent_channels,
        "pixels_per_latent": _ratio(family),
        "latent_ndim": 2 + getattr(fmt, "latent_dimensions", 2) if family == "qwen_image" else 4,
        "versions": ("0.3.75", "0.30.0"),
        "model_class": FAMILY_CLASSES[family],
        "clip": family in CLIP_FAMILY,
    }


FAMILY_INFO = {f: _family_info(f) for f in FAMILIES}
LATENT_CHANNELS = {f: FAMILY_INFO[f]["latent_channels"] for f in FAMILIES}


def latent_shape(family: str, batch: int, height: int, width: int) -> tuple[int, ...]:
    """Shape of the family's latent for an image of ``height`` x ``width`` pixels."""
    info = FAMILY_INFO[family]
    r = info["pixels_per_latent"]
    hw = (height // r, width // r)
    if info["latent_ndim"] == 5:
        return (batch, info["latent_channels"], 1, *hw)
    return (batch, info["latent_channels"], *hw)


def family_conditioning(family: str, batch: int = 1, seed: int = 0, tokens: int = 8) -> list:
    """ComfyUI conditioning ``[[cross_attn, extras]]`` of the family's shapes at the tiny widths."""
    gen = torch.Generator().manual_seed(seed + 21)
    cfg = {} if family in UNETS else DITS[family]

    def rnd(*shape):
        return torch.randn(shape, generator=gen)

    if family in UNETS:
        width = UNETS[family]["context_dim"]
        extras = {}
        if family == "sdxl":
            extras["pooled_output"] = rnd(batch, CLIP_G["projection_dim"])
        return [[rnd(batch, tokens, width), extras]]
    if family == "sd3":
        ctx = cfg["context_embedder_config"]["params"]["in_features"]
        return [[rnd(batch, tokens, ctx), {"pooled_output": rnd(batch, cfg["adm_in_channels"])}]]
    if family == "hidream":
        # t5 context + the Llama hidden states of the layers the blocks read + CLIP-L/G pooled.
        n_llama = max(cfg["llama_layers"]) + 1
        extras = {
            "pooled_output": rnd(batch, cfg["text_emb_dim"]),
            "conditioning_llama3": rnd(batch, n_llama, tokens, cfg["caption_channels"][0]),
        }
        return [[rnd(batch, tokens, cfg["caption_channels"][1]), extras]]
    width = {
        "qwen_image": cfg.get("joint_attention_dim"),
        "zimage": cfg.get("cap_feat_dim"),
        "hunyuan_image21": cfg.get("context_in_dim"),
    }.get(family) or cfg.get("context_in_dim", TEXT)
    # Text encoders without a pooled output still give the key (None), as CLIPTextEncode does.
    extras = {"pooled_output": rnd(batch, cfg["vec_in_dim"]) if cfg.get("vec_in_dim") else None}
    if cfg.get("guidance_embed") or family in ("chroma", "chroma_radiance"):
        extras["guidance"] = 3.5
    if family in ("qwen_image", "hunyuan_image21", "zimage"):
        extras["attention_mask"] = torch.ones(batch, tokens, dtype=torch.long)
    return [[rnd(batch, tokens, width), extras]]


def denoiser_kwargs(model, family: str, x: torch.Tensor, cond: list | None = None, **more) -> dict:
    """What the sampler passes to ``model.apply_model`` for ``cond`` (default: family_conditioning):
    the model's own ``extra_conds`` of the conditioning, as ``comfy.samplers`` encodes it."""
    cond = cond or family_conditioning(family, x.shape[0])
    ctx, extras = cond[0]
    kwargs = {"cross_attn": ctx, "noise": x, "device": x.device, "latent_image": x, **extras, **more}
    if "guidance" in extras:
        kwargs["guidance"] = extras["guidance"]
    out = model.extra_conds(**kwargs)
    return {k: v.process_cond(batch_size=x.shape[0], device=x.device, area=None).cond for k, v in out.items()}


def _calibrate_output(model, family: str, seed: int) -> None:
    """Scale the output layer so the raw prediction (noise, or velocity for flow models) has unit std
    on random inputs, as a trained model's does (random residual stacks otherwise predict with std
    ~100, and sampled latents blow up)."""
    gen = torch.Generator().manual_seed(seed + 3)
    net = model.diffusion_model
    cfg = model.model_config.unet_config
    if family in ("sd15", "sd15_inpaint", "sdxl", "sd3", "flux"):
        # The original probe (unchanged numbers): the net called directly.
        channels = 16 if family in ("sd3", "flux") else 4
        x = torch.randn(2, channels, 16, 16, generator=gen)
        sigma = torch.tensor([0.5, 0.5]) if family in SKELETONS else torch.tensor([5.0, 5.0])
        x_in = model.model_sampling.calculate_input(sigma, x)
        if family == "flux":
            ctx = torch.randn(2, 77, cfg["context_in_dim"], generator=gen)
            kwargs = {
                "y": torch.randn(2, cfg["vec_in_dim"], generator=gen),
                "guidance": torch.full((2,), 3.5),
            }
            last = net.final_layer.linear
        elif family == "sd3":
            ctx = torch.randn(2, 77, cfg["context_embedder_config"]["params"]["in_features"], generator=gen)
            kwargs = {"y": torch.randn(2, cfg["adm_in_channels"], generator=gen)}
            last = net.final_layer.linear
        else:
            ctx = torch.randn(2, 77, cfg["context_dim"], generator=gen)
            kwargs = {}
            if cfg.get("adm_in_channels"):
                kwargs["y"] = torch.randn(2, cfg["adm_in_channels"], generator=gen)
            if cfg["in_channels"] != channels:  # inpaint: noise + mask + masked image
                x_in = torch.cat(
                    [x_in, torch.randn(2, cfg["in_channels"] - channels, 16, 16, generator=gen)], 1
                )
            last = net.out[2]
        with torch.no_grad():
            out = net(x_in, model.model_sampling.timestep(sigma), context=ctx, **kwargs)
    else:
        shape = latent_shape(family, 2, 16 * _ratio(family), 16 * _ratio(family))
        if family == "chroma_radiance":
            shape = latent_shape(family, 2, 32, 32)
        x = torch.randn(shape, generator=gen)
        sigma = torch.tensor([0.5, 0.5])
        extra = {}
        if family == "flux_fill":
            extra["concat_latent_image"] = torch.randn(shape, generator=gen)
            extra["concat_mask"] = torch.ones(2, 1, shape[-2] * 8, shape[-1] * 8)
        kwargs = denoiser_kwargs(model, family, x, family_conditioning(family, 2, seed), **extra)
        captured = []
        hook = net.register_forward_hook(lambda _m, _i, o: captured.append(o))
        try:
            with torch.no_grad():
                model.apply_model(x, sigma, **kwargs)
        finally:
            hook.remove()
        out = captured[-1]
        last = _last_layer(net, family)
    with torch.no_grad():
        scale = 1.0 / float(out.std())
        last.weight.mul_(scale)
        if last.bias is not None:
            last.bias.mul_(scale)


def _last_layer(net, family: str):
    if family == "qwen_image":
        return net.proj_out
    if family == "chroma_radiance":
        final = getattr(net, "nerf_final_layer_conv", None) or net.nerf_final_layer
        return getattr(final, "conv", None) or final.linear
    if family == "zimage":
        return net.final_layer.linear
    return net.final_layer.linear


def build_model(family: str, seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    config = model_config(family)
    model = config.get_model({}, "", device=torch.device("cpu"))
    model.diffusion_model.load_state_dict(seeded_state_dict(model.diffusion_model, seed), strict=True)
    _calibrate_output(model, family, seed)
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


def build_clip(family: str, seed: int = 0) -> comfy.sd.CLIP | None:
    """The tiny real CLIP text encoder of ``family``; ``None`` for the families whose real encoders
    are large LLMs/T5 (use ``family_conditioning``)."""
    if family not in CLIP_FAMILY:
        return None
    family = CLIP_FAMILY[family]
    target = model_config(family).clip_target(state_dict={})
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


def build_wan_vae(seed: int = 0) -> comfy.sd.VAE:
    """Qwen-Image's VAE kind: a tiny Wan 2.1 VAE (``comfy.ldm.wan.vae.WanVAE``, dim 16, 16 latent
    channels, 8x, one latent frame per image) whose seeded state dict goes through ``comfy.sd.VAE``'s
    own detection, so it encodes images to [B, 16, 1, H/8, W/8] as the real one does."""
    from comfy.ldm.wan.vae import WanVAE

    template = WanVAE(
        dim=16,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        dropout=0.0,
    )
    return comfy.sd.VAE(sd=seeded_state_dict(template, seed + 2))


@functools.lru_cache(maxsize=16)
def _cached(family: str, seed: int):
    channels = _VAE_CHANNELS.get(family)
    if family == "qwen_image":
        vae = build_wan_vae(seed)
    else:
        vae = build_vae(seed, channels) if channels else None
    return build_model(family, seed), build_clip(family, seed), vae


def build(family: str, seed: int = 0):
    """(MODEL, CLIP, VAE) for ``family`` in ``FAMILIES``; cached per (family, seed), so callers
    must ``clone()`` before patching (as every ComfyUI node does). CLIP / VAE are None where the
    module docstring says so."""
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


def build_flux_controlnet(kind: str = "instantx", seed: int = 0):
    """A real Flux ControlNet for the tiny "flux" model, built as the running ComfyUI's
    ``load_controlnet_flux_instantx`` (``kind="instantx"``: the hint is VAE-encoded into 16-channel
    latents, compression 1, Flux latent format; give ``set_cond_hint(..., vae=vae)``) or
    ``load_controlnet_flux_xlabs_mistoline`` (``kind="xlabs"``: a pixel hint, 3 channels) builds one:
    ``comfy.ldm.flux.controlnet.ControlNetFlux`` on the tiny Flux config (one double block), seeded
    weights with the zero-initialised output projections at a small random value."""
    import comfy.controlnet
    import comfy.latent_formats
    import comfy.ldm.flux.controlnet
    import comfy.ops

    unet_config = dict(model_config("flux").unet_config)
    unet_config.pop("dtype", None)  # set_inference_dtype's entry; the loaders pass dtype apart
    common = {
        "operations": comfy.ops.disable_weight_init,
        "device": torch.device("cpu"),
        "dtype": torch.float32,
    }
    if kind == "instantx":
        net = comfy.ldm.flux.controlnet.ControlNetFlux(
            latent_input=True, num_union_modes=0, control_latent_channels=16, **common, **unet_config
        )
    elif kind == "xlabs":
        net = comfy.ldm.flux.controlnet.ControlNetFlux(mistoline=False, **common, **unet_config)
    else:
        raise ValueError(f"kind must be 'instantx' or 'xlabs', not {kind!r}")
    sd = seeded_state_dict(net, seed + 17)
    for name in sd:
        if name.startswith(("controlnet_blocks", "controlnet_single_blocks", "pos_embed_input")):
            sd[name] = sd[name] * 0.1
    net.load_state_dict(sd, strict=True)
    extra_conds = ["y", "guidance"]
    load = {"load_device": mm.get_torch_device(), "manual_cast_dtype": None, "extra_conds": extra_conds}
    if kind == "instantx":
        return comfy.controlnet.ControlNet(
            net, compression_ratio=1, latent_format=comfy.latent_formats.Flux(), concat_mask=False, **load
        )
    return comfy.controlnet.ControlNet(net, **load)


def build_control_lora(seed: int = 0, rank: int = 4):
    """A real ``comfy.controlnet.ControlLora`` for the tiny "sdxl" model (as ``load_controlnet`` makes
    one from a file with ``lora_controlnet``): the ControlNet-only weights (hint block, zero convs,
    middle out) seeded, and rank-``rank`` LoRA up/down pairs on the attention projections; the rest
    comes from the model it is applied to, as with real ControlLoRA files."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.ops

    config = dict(UNETS["sdxl"])
    config.pop("out_channels")
    template = comfy.cldm.cldm.ControlNet(
        **config, hint_channels=3, operations=comfy.ops.disable_weight_init, device=torch.device("meta")
    )
    shapes = {k: v.shape for k, v in template.state_dict().items()}
    gen = torch.Generator().manual_seed(seed + 19)
    weights = {"lora_controlnet": torch.tensor([])}
    for name, shape in shapes.items():
        if name.startswith(("input_hint_block", "zero_convs", "middle_block_out")):
            if name.endswith("bias") or len(shape) < 2:
                weights[name] = torch.zeros(shape)
            else:
                scale = 0.1 if not name.startswith("input_hint_block") else 1.0
                weights[name] = torch.randn(shape, generator=gen) * scale / math.prod(shape[1:]) ** 0.5
        elif name.endswith(("to_q.weight", "to_k.weight", "to_v.weight")) and len(shape) == 2:
            base = name[: -len(".weight")]
            weights[base + ".up"] = torch.randn(shape[0], rank, generator=gen) * 0.1
            weights[base + ".down"] = torch.randn(rank, shape[1], generator=gen) / shape[1] ** 0.5
    return comfy.controlnet.ControlLora(weights, global_average_pooling=False)
