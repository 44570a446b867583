"""The harness itself: ComfyUI boots with the pack, tiny models sample through ComfyUI's own code."""

import torch


def test_pack_loaded_with_v3_nodes(comfy):
    assert comfy.pack_nodes, "no UltraRes node registered"
    assert "UltraResTestCheckpointLoader" in comfy.nodes


def test_tiny_sd15_samples_through_ksampler(comfy, tiny_sd15):
    model, clip, vae = tiny_sd15
    (pos,) = comfy.run_node("CLIPTextEncode", clip=clip, text="a castle")
    (neg,) = comfy.run_node("CLIPTextEncode", clip=clip, text="")
    latent = {"samples": torch.zeros(1, 4, 16, 24)}
    (out,) = comfy.run_node(
        "KSampler",
        model=model,
        seed=1,
        steps=2,
        cfg=5.0,
        sampler_name="euler",
        scheduler="normal",
        positive=pos,
        negative=neg,
        latent_image=latent,
        denoise=1.0,
    )
    assert out["samples"].shape == (1, 4, 16, 24)
    assert torch.isfinite(out["samples"]).all()
    (image,) = comfy.run_node("VAEDecode", samples=out, vae=vae)
    assert image.shape == (1, 128, 192, 3)


def test_tiny_sdxl_is_sdxl_architecture(tiny_sdxl):
    model, clip, _ = tiny_sdxl
    import comfy.latent_formats
    import comfy.model_base

    assert isinstance(model.model, comfy.model_base.SDXL)
    assert isinstance(model.get_model_object("latent_format"), comfy.latent_formats.SDXL)
    names = dict(model.model.diffusion_model.named_modules())
    assert "input_blocks.4.1.transformer_blocks.0.attn1" in names  # first SDXL attention block
    assert "input_blocks.1.1" not in names  # SDXL has no attention at the first level


# --- The tiny families follow the running ComfyUI (issue 20) -------------------------------------

import pytest  # noqa: E402
from harness.boot import tiny_models_module  # noqa: E402

TM = tiny_models_module()
# A small latent per family (16x16 latent pixels; Chroma Radiance works in pixels: 32x32).
SIZES_PX = {f: 16 * TM.FAMILY_INFO[f]["pixels_per_latent"] for f in TM.FAMILIES}
SIZES_PX["chroma_radiance"] = 32
# The UNet families sample in the tests above and across the suite; the per-family calls below cover
# the DiT families (each a second or two on 2 cores).
DIT_FAMILIES = [f for f in TM.FAMILIES if f not in TM.UNETS]


def _version():
    import comfyui_version

    return comfyui_version.__version__


@pytest.mark.parametrize("family", TM.FAMILIES)
def test_family_builds_as_the_versions_real_class(comfy, family):
    import comfy.model_base
    import comfy.model_detection
    import comfy.supported_models

    assert _version() in TM.FAMILY_INFO[family]["versions"]
    model, clip, vae = TM.build(family)
    real = getattr(comfy.model_base, TM.FAMILY_INFO[family]["model_class"])
    assert type(model.model) is real
    assert type(model.model.model_config) is getattr(comfy.supported_models, TM.CONFIG_CLASSES[family])
    assert (clip is not None) == TM.FAMILY_INFO[family]["clip"]
    fmt = model.get_model_object("latent_format")
    assert fmt.latent_channels == TM.FAMILY_INFO[family]["latent_channels"]
    if hasattr(fmt, "spacial_downscale_ratio"):  # 0.30 states the ratio; the table must agree
        assert fmt.spacial_downscale_ratio == TM.FAMILY_INFO[family]["pixels_per_latent"]
    # The built model's full state dict is detected by this version as the same family, and the
    # widths detection reads from shapes are the ones the model has (Z-Image excepted: detection
    # recognises it by its full 3840 width only).
    if family != "zimage":
        sd = model.model.diffusion_model.state_dict()
        detected = comfy.model_detection.detect_unet_config(sd, "")
        assert detected is not None
        resolved = {**detected, **TM.WIDTH_OVERRIDES.get(family, {})}
        config = model.model.model_config.unet_config
        assert {k: config.get(k) for k in resolved} == resolved
        if family not in TM.UNETS:  # the UNet class table matches full widths only (320, 768...)
            matched = comfy.model_detection.model_config_from_unet_config(detected, sd)
            assert type(matched) is type(model.model.model_config)


@pytest.mark.parametrize("family", DIT_FAMILIES)
def test_family_denoiser_call_has_the_latents_shape(comfy, family):
    model, _, _ = TM.build(family)
    px = SIZES_PX[family]
    x = torch.randn(TM.latent_shape(family, 1, px, px), generator=torch.Generator().manual_seed(0))
    assert x.ndim == TM.FAMILY_INFO[family]["latent_ndim"]
    extra = {}
    if family == "flux_fill":
        extra = {"concat_latent_image": torch.zeros_like(x), "concat_mask": torch.ones(1, 1, px, px)}
    kwargs = TM.denoiser_kwargs(model.model, family, x, **extra)
    with torch.no_grad():
        out = model.model.apply_model(x, torch.tensor([0.5]), **kwargs)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("family", DIT_FAMILIES)
def test_family_samples_through_the_stock_ksampler(comfy, family):
    model, _, _ = TM.build(family)
    px = SIZES_PX[family]
    pos = TM.family_conditioning(family, 1, seed=1)
    neg = TM.family_conditioning(family, 1, seed=2)
    latent = {"samples": torch.zeros(TM.latent_shape(family, 1, px, px))}
    (out,) = comfy.run_node(
        "KSampler",
        model=model,
        seed=1,
        steps=2,
        cfg=1.0,
        sampler_name="euler",
        scheduler="simple",
        positive=pos,
        negative=neg,
        latent_image=latent,
        denoise=1.0,
    )
    assert out["samples"].shape == latent["samples"].shape
    assert torch.isfinite(out["samples"]).all()
    assert out["samples"].std() > 0.1


def test_qwen_image_edit_reference_latent_reaches_the_model(comfy):
    """Qwen-Image edit: a reference latent added with the stock ReferenceLatent node is handed to
    the model whole (as ``ref_latents``) next to the [B, C, 1, H, W] noise latent."""
    model, _, _ = TM.build("qwen_image")
    ref = torch.randn(TM.latent_shape("qwen_image", 1, 128, 128), generator=torch.Generator().manual_seed(3))
    (pos,) = comfy.run_node(
        "ReferenceLatent", conditioning=TM.family_conditioning("qwen_image"), latent={"samples": ref}
    )
    seen = []

    def wrapper(apply_model, args):
        seen.append([r.shape for r in args["c"].get("ref_latents", [])])
        return apply_model(args["input"], args["timestep"], **args["c"])

    m = model.clone()
    m.set_model_unet_function_wrapper(wrapper)
    latent = {"samples": torch.zeros(TM.latent_shape("qwen_image", 1, 128, 128))}
    (out,) = comfy.run_node(
        "KSampler",
        model=m,
        seed=1,
        steps=1,
        cfg=1.0,
        sampler_name="euler",
        scheduler="simple",
        positive=pos,
        negative=TM.family_conditioning("qwen_image", seed=2),
        latent_image=latent,
        denoise=1.0,
    )
    assert torch.isfinite(out["samples"]).all()
    assert seen and seen[0] == [ref.shape]


def _sample(comfy, model, pos, neg, latent, cfg=1.0, steps=2):
    (out,) = comfy.run_node(
        "KSampler",
        model=model,
        seed=1,
        steps=steps,
        cfg=cfg,
        sampler_name="euler",
        scheduler="simple",
        positive=pos,
        negative=neg,
        latent_image={"samples": latent},
        denoise=1.0,
    )
    return out["samples"]


@pytest.mark.parametrize("kind", ["instantx", "xlabs"])
def test_flux_controlnet_changes_the_flux_sample(comfy, tiny_flux, kind):
    """A Flux ControlNet built as ComfyUI's loaders build one; InstantX's hint is VAE-encoded (the
    node gets the VAE), XLabs' is pixels."""
    model, clip, vae = tiny_flux
    (pos,) = comfy.run_node("CLIPTextEncode", clip=clip, text="a castle")
    (pos,) = comfy.run_node("FluxGuidance", conditioning=pos, guidance=3.5)
    (neg,) = comfy.run_node("CLIPTextEncode", clip=clip, text="")
    image = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(4))
    control = TM.build_flux_controlnet(kind)
    inputs = {"vae": vae} if kind == "instantx" else {}
    cpos, cneg = comfy.run_node(
        "ControlNetApplyAdvanced",
        positive=pos,
        negative=neg,
        control_net=control,
        image=image,
        strength=1.0,
        start_percent=0.0,
        end_percent=1.0,
        **inputs,
    )
    latent = torch.zeros(1, 16, 16, 16)
    plain = _sample(comfy, model, pos, neg, latent)
    controlled = _sample(comfy, model, cpos, cneg, latent)
    assert torch.isfinite(controlled).all()
    assert (controlled - plain).abs().max() > 1e-3


def test_control_lora_changes_the_sdxl_sample(comfy, tiny_sdxl):
    from comfy.controlnet import ControlLora

    model, clip, _ = tiny_sdxl
    control = TM.build_control_lora()
    assert isinstance(control, ControlLora)
    (pos,) = comfy.run_node("CLIPTextEncode", clip=clip, text="a castle")
    (neg,) = comfy.run_node("CLIPTextEncode", clip=clip, text="")
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(5))
    cpos, cneg = comfy.run_node(
        "ControlNetApplyAdvanced",
        positive=pos,
        negative=neg,
        control_net=control,
        image=image,
        strength=1.0,
        start_percent=0.0,
        end_percent=1.0,
    )
    latent = torch.zeros(1, 4, 8, 8)
    plain = _sample(comfy, model, pos, neg, latent, steps=1)
    controlled = _sample(comfy, model, cpos, cneg, latent, steps=1)
    assert torch.isfinite(controlled).all()
    assert (controlled - plain).abs().max() > 1e-3


def test_qwen_image_vae_gives_a_frame_axis_and_round_trips(comfy):
    """The tiny Qwen-Image VAE is a real Wan 2.1 VAE: VAEEncode gives [B, 16, 1, H/8, W/8], the model
    samples it, VAEDecode gives the image back at full size."""
    model, _, vae = TM.build("qwen_image")
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(6))
    (latent,) = comfy.run_node("VAEEncode", pixels=image, vae=vae)
    assert latent["samples"].shape == (1, 16, 1, 8, 8)
    cond = TM.family_conditioning("qwen_image")
    samples = _sample(comfy, model, cond, cond, latent["samples"], steps=1)
    (decoded,) = comfy.run_node("VAEDecode", samples={"samples": samples}, vae=vae)
    assert decoded.shape[-3:] == (64, 64, 3) and decoded.numel() == 64 * 64 * 3
    assert torch.isfinite(decoded).all()


def test_tiny_family_fixture_gives_the_family_and_its_ratio(tiny_family):
    import comfy.model_base

    model, clip, vae = tiny_family("hunyuan_image21")
    assert isinstance(model.model, comfy.model_base.HunyuanImage21)
    assert clip is None and vae is None  # Qwen2.5-VL text side and the 32x VAE are not built
    assert tiny_family.tm.FAMILY_INFO["hunyuan_image21"]["pixels_per_latent"] == 32
    assert tiny_family.tm.latent_shape("hunyuan_image21", 1, 512, 256) == (1, 64, 16, 8)
