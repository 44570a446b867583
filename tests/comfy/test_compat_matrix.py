"""The compatibility matrix (devtools/compat_matrix.py), cell by cell, on real ComfyUI parts.

Every model is a reduced-architecture build of ComfyUI's own classes (SD1.5, SDXL, SD3 MMDiT, Flux,
the 9-channel SD1.5 inpaint UNet) or the pack's shipped pixel-space HDiT; every add-on is the stock
ComfyUI node (ControlNetApplyAdvanced with a real comfy.controlnet.ControlNet / T2IAdapter,
SelfAttentionGuidance, PerturbedAttentionGuidance, SkipLayerGuidanceSD3/DiT, PerpNegGuider, FreeU_V2,
LoraLoader, ConditioningSetArea/Mask/TimestepRange, InpaintModelConditioning). No stand-ins.

A Tiled Diffusion cell passes when (1) sampling with several tiles gives finite latents and the model
only ever sees tile-sized inputs, and (2) with one tile covering the image the result equals untiled
sampling with the same add-on (so the per-tile conditioning, controls and references are exact).
"""

from __future__ import annotations

import functools
import os
import re
import uuid

import pytest
import torch
from safetensors.torch import save_file
from ultrares.devtools import compat_matrix as M

NODE = "UltraResTiledDiffusion"
# (height, width) in pixels; pixel space is small and slow per pixel
IMAGE_PX = {"pixel": (64, 128), "chroma_radiance": (96, 128)}
DEFAULT_PX = (192, 256)
TILE_PX = {"pixel": 64, "chroma_radiance": 64}
DEFAULT_TILE = 128
CHANNELS = {"sd3": 16, "flux": 16, "pixel": 3}
RATIO = {"pixel": 1}
FLOW = {"sd3", "flux", *M.NEW_FAMILIES}  # flow-matching families: sigmas (and relay's t) in (0, 1)


# one_thread: tests/conftest.py; floor: the matrix also runs in the floor run on ComfyUI 0.3.75
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.floor]


def _tiny_models():
    from harness.boot import tiny_models_module

    return tiny_models_module()


def require_family(family: str) -> None:
    """Skip a cell whose family the running ComfyUI does not have (the harness builds only those)."""
    if family == "pixel":
        return
    tm = _tiny_models()
    if family not in tm.FAMILIES:
        import comfyui_version

        pytest.skip(f"{family} is not in ComfyUI {comfyui_version.__version__}")


def ratio(family: str) -> int:
    """Pixels per latent pixel: the harness's statement of the family (independent of the node's)."""
    if family in RATIO:
        return RATIO[family]
    return _tiny_models().FAMILY_INFO[family]["pixels_per_latent"]


@functools.cache
def _pixel_model():
    from harness import boot

    rt = boot.boot()
    model, vae, num_classes = rt.run_node(
        "UltraResHDiTLoader", model_name="ultrares-emoji64.safetensors", weight_dtype="float32"
    )
    return model, None, vae


def family_parts(family: str):
    """(MODEL, CLIP or None, VAE) for a matrix family."""
    if family == "pixel":
        return _pixel_model()
    require_family(family)
    from harness import boot

    return boot.tiny(family)


def latent(family: str, batch: int = 1, noise: bool = False, px=None) -> dict:
    h, w = px or IMAGE_PX.get(family, DEFAULT_PX)
    if family in CHANNELS or family in ("sd15", "sdxl"):
        r = ratio(family)
        shape = (batch, CHANNELS.get(family, 4), h // r, w // r)
    else:  # the family's own latent shape ([B, C, 1, H, W] for Qwen-Image)
        shape = _tiny_models().latent_shape(family, batch, h, w)
    if noise:
        return {"samples": torch.randn(shape, generator=torch.Generator().manual_seed(7))}
    return {"samples": torch.zeros(shape)}


def conds(comfy, family: str, model, clip, text: str = "a castle on a hill"):
    """(positive, negative) as a user wires them for the family."""
    if family == "pixel":
        pos, neg = comfy.run_node("UltraResHDiTClass", class_id=1, unconditional=False)
        return pos, neg
    if clip is None:  # the 2026 families' text encoders are large: conditioning of their shapes
        tm = _tiny_models()
        return tm.family_conditioning(family, 1, seed=1), tm.family_conditioning(family, 1, seed=2)
    (pos,) = comfy.run_node("CLIPTextEncode", clip=clip, text=text)
    (neg,) = comfy.run_node("CLIPTextEncode", clip=clip, text="blurry")
    if family in ("flux", "flux_fill"):
        (pos,) = comfy.run_node("FluxGuidance", conditioning=pos, guidance=3.5)
    return pos, neg


def ksample(comfy, model, pos, neg, lat, cfg=4.0, steps=2, sampler="euler", scheduler="simple", denoise=1.0):
    (out,) = comfy.run_node(
        "KSampler",
        model=model,
        seed=3,
        steps=steps,
        cfg=cfg,
        sampler_name=sampler,
        scheduler=scheduler,
        positive=pos,
        negative=neg,
        latent_image=lat,
        denoise=denoise,
    )
    return out["samples"]


def tiled(comfy, model, family, method, one_tile=False):
    tile = TILE_PX.get(family, DEFAULT_TILE)
    if one_tile:
        tile = 4096  # larger than the image: clamped to it, one tile
    (m,) = comfy.run_node(
        NODE,
        model=model,
        method=method,
        tile_width=tile,
        tile_height=tile,
        overlap=32 if tile >= 128 else 16,
        tile_batch_size=2,
        reset_interval=4,
        seed=5,
    )
    return m


def spy(model):
    """A clone that records the spatial size of every diffusion-model input (ComfyUI wrapper API)."""
    import comfy.patcher_extension as pe

    seen = []

    def record(executor, *args, **kwargs):
        seen.append(tuple(args[0].shape))
        return executor(*args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "compat_spy", record)  # every BaseModel goes through it
    return m, seen


_UNTILED: dict = {}  # cell key -> the untiled result, shared by the five methods of a cell


def run_shape(family):
    return latent(family)["samples"].shape


def check_cell(comfy, family, method, run, model=None, key=None):
    """run(model) -> latent: the cell's graph with the model to sample. Checks both properties.
    ``key`` names the graph apart from the method, so its untiled result is computed once."""
    model = model if model is not None else family_parts(family)[0]
    spied, seen = spy(tiled(comfy, model, family, method))
    out = run(spied)
    assert torch.isfinite(out).all(), "non-finite latent"
    r = ratio(family)
    tile = TILE_PX.get(family, DEFAULT_TILE) // r  # the requested pixels in the family's latent units
    full = tuple(run_shape(family))
    assert seen and all(s[-2] <= tile and s[-1] <= tile and len(s) == len(full) for s in seen), (
        f"model saw a non-tile input: {set(seen)} (tile {tile} latent px, latent {full})"
    )
    if min(full[-2:]) > tile:  # the image spans several tiles on both axes: some are exactly the tile
        assert any(s[-2:] == (tile, tile) for s in seen), f"no {tile}x{tile} tile among {set(seen)}"
    if key is not None and key in _UNTILED:
        plain = _UNTILED[key]
    else:
        plain = _UNTILED[key] = run(model)
    one = run(tiled(comfy, model, family, method, one_tile=True))
    torch.testing.assert_close(one, plain, rtol=2e-4, atol=2e-4)


# ---------------------------------------------------------------- node x family (Tiled Diffusion)


@pytest.mark.parametrize("cfg", [1.0, 4.0], ids=["cfg1", "cfg4"])
@pytest.mark.parametrize("family", list(M.FAMILIES))
@pytest.mark.parametrize("method", M.TILING_METHODS)
def test_tiled_diffusion_on_every_family(comfy, family, method, cfg):
    assert M.status(f"Tiled Diffusion: {method}", family) == "works"
    model, clip, _ = family_parts(family)
    pos, neg = conds(comfy, family, model, clip)
    lat = latent(family)
    check_cell(
        comfy,
        family,
        method,
        lambda m: ksample(comfy, m, pos, neg, lat, cfg=cfg),
        key=("family", family, cfg),
    )


# ---------------------------------------------------------------- add-ons


def _image(family, batch=1, px=None):
    h, w = px or IMAGE_PX.get(family, DEFAULT_PX)
    g = torch.Generator().manual_seed(11)
    return torch.rand(batch, h, w, 3, generator=g)


def _apply_control(comfy, pos, neg, control, image, strength=1.0, vae=None):
    return comfy.run_node(
        "ControlNetApplyAdvanced",
        positive=pos,
        negative=neg,
        control_net=control,
        image=image,
        strength=strength,
        start_percent=0.0,
        end_percent=1.0,
        vae=vae,
    )


@functools.cache
def _lora_name(family):
    """A real LoRA file for the tiny model's attention projections, in a temporary folder added to
    ComfyUI's "loras" search paths (one per family for the session)."""
    import tempfile

    import comfy.lora
    import folder_paths

    model = family_parts(family)[0]
    keys = comfy.lora.model_lora_keys_unet(model.model, {})
    sd = model.model.state_dict()
    g = torch.Generator().manual_seed(5)
    lora = {}
    for lora_key, weight_key in keys.items():
        if (
            not isinstance(lora_key, str)
            or not lora_key.startswith("lora_unet_")
            or "attn1_to_q" not in lora_key
        ):
            continue
        out_f, in_f = sd[weight_key].shape[:2]
        lora[f"{lora_key}.lora_up.weight"] = torch.randn(out_f, 4, generator=g) * 0.1
        lora[f"{lora_key}.lora_down.weight"] = torch.randn(4, in_f, generator=g) * 0.1
        lora[f"{lora_key}.alpha"] = torch.tensor(4.0)
    assert lora, "no attention keys found for the LoRA"
    folder = tempfile.mkdtemp(prefix="ultrares-loras-")
    folder_paths.add_model_folder_path("loras", folder)
    name = f"ultrares_compat_{uuid.uuid4().hex[:8]}.safetensors"
    save_file(lora, os.path.join(folder, name))
    return name


def addon_graph(comfy, addon: str, family: str):
    """(run(model) -> latent, the base model) for one add-on cell, built from the stock nodes."""
    import tiny_models

    model, clip, vae = family_parts(family)
    pos, neg = conds(comfy, family, model, clip)
    lat = latent(family)
    cfg = 4.0
    patch = None  # model -> model, applied after the tiling node (the order users wire)
    if addon.startswith("ControlNet"):
        image = _image(family)
        if "T2I" in addon:
            pos, neg = _apply_control(comfy, pos, neg, tiny_models.build_t2i_adapter(), image)
        pos, neg = _apply_control(comfy, pos, neg, tiny_models.build_controlnet(family), image)
        if "cfg 1" in addon:
            cfg = 1.0
    elif addon == "T2I-Adapter":
        pos, neg = _apply_control(comfy, pos, neg, tiny_models.build_t2i_adapter(), _image(family))
    elif addon == "Self-Attention Guidance":

        def patch(m):
            return comfy.run_node("SelfAttentionGuidance", model=m, scale=0.5, blur_sigma=2.0)[0]
    elif addon == "Perturbed-Attention Guidance":

        def patch(m):
            return comfy.run_node("PerturbedAttentionGuidance", model=m, scale=3.0)[0]
    elif addon == "Skip Layer Guidance (SD3)":

        def patch(m):
            return comfy.run_node(
                "SkipLayerGuidanceSD3", model=m, layers="1", scale=3.0, start_percent=0.0, end_percent=1.0
            )[0]
    elif addon == "Skip Layer Guidance DiT":
        cfg = 2.0

        def patch(m):
            return comfy.run_node(
                "SkipLayerGuidanceDiT",
                model=m,
                double_layers="0",
                single_layers="0",
                scale=3.0,
                start_percent=0.0,
                end_percent=1.0,
                rescaling_scale=0.0,
            )[0]
    elif addon == "FreeU v2":

        def patch(m):
            return comfy.run_node("FreeU_V2", model=m, b1=1.3, b2=1.4, s1=0.9, s2=0.2)[0]
    elif addon == "LoRA":
        name = _lora_name(family)
        model_lora, clip_lora = comfy.run_node(
            "LoraLoader", model=model, clip=clip, lora_name=name, strength_model=1.0, strength_clip=1.0
        )
        pos, neg = conds(comfy, family, model_lora, clip_lora)
        return _run_with(comfy, model_lora, pos, neg, lat, cfg), model_lora
    elif addon == "area conditioning":
        (area,) = comfy.run_node("CLIPTextEncode", clip=clip, text="a red door")
        (area,) = comfy.run_node(
            "ConditioningSetArea", conditioning=area, width=96, height=64, x=64, y=32, strength=1.0
        )
        (pos,) = comfy.run_node("ConditioningCombine", conditioning_1=pos, conditioning_2=area)
    elif addon == "mask conditioning":
        (masked,) = comfy.run_node("CLIPTextEncode", clip=clip, text="a red door")
        mask = torch.zeros(1, *DEFAULT_PX)
        mask[:, 40:150, 30:200] = 1.0
        (masked,) = comfy.run_node(
            "ConditioningSetMask", conditioning=masked, mask=mask, strength=1.0, set_cond_area="default"
        )
        (pos,) = comfy.run_node("ConditioningCombine", conditioning_1=pos, conditioning_2=masked)
    elif addon == "timestep-range conditioning":
        (late,) = comfy.run_node("CLIPTextEncode", clip=clip, text="fine detail")
        (early,) = comfy.run_node("ConditioningSetTimestepRange", conditioning=pos, start=0.0, end=0.5)
        (late,) = comfy.run_node("ConditioningSetTimestepRange", conditioning=late, start=0.5, end=1.0)
        (pos,) = comfy.run_node("ConditioningCombine", conditioning_1=early, conditioning_2=late)
    elif addon == "batch size 2":
        lat = latent(family, batch=2, noise=True)
        return _run_with(comfy, model, pos, neg, lat, cfg, denoise=0.8), model
    elif addon == "img2img (denoise 0.5)":
        return _run_with(comfy, model, pos, neg, latent(family, noise=True), cfg, denoise=0.5), model
    elif addon == "9-channel inpaint model" or addon.startswith("Flux Fill"):  # inpaint concat
        mask = torch.zeros(1, *DEFAULT_PX)
        mask[:, 48:160, 64:192] = 1.0
        pos, neg, lat = comfy.run_node(
            "InpaintModelConditioning",
            positive=pos,
            negative=neg,
            vae=vae,
            pixels=_image(family),
            mask=mask,
            noise_mask=True,
        )
    elif addon == "PerpNeg guider":
        return _perpneg(comfy, clip, pos, neg, lat), model
    elif "reference latent" in addon:  # Kontext / Qwen-Image-Edit: an image latent of another size
        ref = latent(family, noise=True, px=(128, 192))["samples"]
        (pos,) = comfy.run_node("ReferenceLatent", conditioning=pos, latent={"samples": ref})
    elif addon.startswith("Flux ControlNet with a VAE"):
        control = tiny_models.build_flux_controlnet("instantx")
        pos, neg = _apply_control(comfy, pos, neg, control, _image(family), vae=vae)
    elif addon == "ControlLoRA":
        pos, neg = _apply_control(comfy, pos, neg, tiny_models.build_control_lora(), _image(family))
    else:
        raise AssertionError(f"add-on {addon!r} has no graph")
    return _run_with(comfy, model, pos, neg, lat, cfg, patch=patch), model


def _run_with(comfy, base, pos, neg, lat, cfg, denoise=1.0, patch=None):
    """run(m): sample with ``m`` (the base model, tiled or not) after the add-on's model patch."""

    def run(m):
        if patch is not None:
            m = patch(m)
        return ksample(comfy, m, pos, neg, lat, cfg=cfg, denoise=denoise)

    return run


def _perpneg(comfy, clip, pos, neg, lat):
    (empty,) = comfy.run_node("CLIPTextEncode", clip=clip, text="")

    def run(m):
        (guider,) = comfy.run_node(
            "PerpNegGuider",
            model=m,
            positive=pos,
            negative=neg,
            empty_conditioning=empty,
            cfg=4.0,
            neg_scale=1.0,
        )
        (noise,) = comfy.run_node("RandomNoise", noise_seed=3)
        (sampler,) = comfy.run_node("KSamplerSelect", sampler_name="euler")
        (sigmas,) = comfy.run_node("BasicScheduler", model=m, scheduler="simple", steps=2, denoise=1.0)
        out, _ = comfy.run_node(
            "SamplerCustomAdvanced",
            noise=noise,
            guider=guider,
            sampler=sampler,
            sigmas=sigmas,
            latent_image=lat,
        )
        return out["samples"]

    return run


ADDON_CELLS = [(a, f, m) for a, (fams, methods) in M.ADDONS.items() for f in fams for m in methods]


@pytest.mark.parametrize("addon,family,method", ADDON_CELLS, ids=[f"{a}-{f}-{m}" for a, f, m in ADDON_CELLS])
def test_tiled_diffusion_with_addon(comfy, addon, family, method):
    run, model = addon_graph(comfy, addon, family)
    check_cell(comfy, family, method, run, model, key=("addon", addon, family))


@pytest.mark.parametrize("sampler", M.SAMPLERS)
@pytest.mark.parametrize("family", ["sd15", "flux"])
@pytest.mark.parametrize("method", M.SAMPLER_METHODS)
def test_tiled_diffusion_with_every_sampler_family(comfy, method, family, sampler):
    model, clip, _ = family_parts(family)
    pos, neg = conds(comfy, family, model, clip)
    lat = latent(family)
    cfg = 1.0 if family == "flux" else 4.0
    check_cell(
        comfy,
        family,
        method,
        lambda m: ksample(comfy, m, pos, neg, lat, cfg=cfg, steps=3, sampler=sampler),
        key=("sampler", family, sampler),
    )


# ---------------------------------------------------------------- the other sampler-facing nodes x family

RELAY_TRUNCATION = dict.fromkeys(FLOW, 0.6)  # flow models: a t in (0, 1); others: a sigma


@pytest.mark.parametrize("cfg", [1.0, 4.0], ids=["cfg1", "cfg4"])
@pytest.mark.parametrize("family", list(M.FAMILIES))
def test_relay_upscale_on_every_family(comfy, family, cfg):
    """Relay Upscale x2 continues a finished low-resolution latent (stage one) on each family."""
    expected = M.status("Relay Upscale", family)
    model, clip, _ = family_parts(family)
    pos, neg = conds(comfy, family, model, clip)
    h, w = (128, 128) if family == "pixel" else DEFAULT_PX  # the pixel HDiT's first stage needs >= 64 px
    first = ksample(comfy, model, pos, neg, latent(family, px=(h // 2, w // 2)), cfg=cfg)
    if expected != "works":
        with pytest.raises(ValueError, match=expected.split(": ", 1)[1]):
            _relay(comfy, model, pos, neg, first, family, cfg)
        return
    samples = _relay(comfy, model, pos, neg, first, family, cfg)
    assert samples.shape[-2:] == (first.shape[-2] * 2, first.shape[-1] * 2) and torch.isfinite(samples).all()


def _relay(comfy, model, pos, neg, first, family, cfg):
    (out,) = comfy.run_node(
        "UltraResRelayUpscale",
        model=model,
        positive=pos,
        negative=neg,
        latent={"samples": first},
        factor=2,
        seed=4,
        steps=4,
        truncation_sigma=RELAY_TRUNCATION.get(family, 2.0),
        rho=1.0 if family in RELAY_TRUNCATION else 7.0,
        cfg=cfg,
        blur_sigma_max=0.0,
        prob_length=0.93,
        s_block=0.15,
        s_noise=0.2,
        s_churn=0.0,
        s_tmin=0.0,
        s_tmax=1000.0,
        s_churn_noise=1.0,
    )
    return out["samples"]


@pytest.mark.parametrize("cfg", [1.0, 4.0], ids=["cfg1", "cfg4"])
@pytest.mark.parametrize("family", list(M.FAMILIES))
def test_ddim_invert_and_generate_on_every_family(comfy, family, cfg):
    """Deterministic inversion and generation run on each family, and generating from the inverted
    noise moves back towards the input (closer than the noise itself is)."""
    expected = M.status("DDIM Invert + Generate", family)
    model, clip, _ = family_parts(family)
    pos, neg = conds(comfy, family, model, clip)
    x = latent(family, noise=True)
    kw = dict(
        steps=8,
        level=0.9 if family in FLOW else 1.0,
        scheduler="simple",
        positive=pos,
        negative=neg,
        cfg=cfg,
    )
    if expected != "works":
        with pytest.raises(ValueError, match=expected.split(": ", 1)[1]):
            comfy.run_node("UltraResDDIMInvert", model=model, latent=x, refine_iters=0, **kw)
        return
    (noise,) = comfy.run_node("UltraResDDIMInvert", model=model, latent=x, refine_iters=0, **kw)
    (back,) = comfy.run_node("UltraResDDIMGenerate", model=model, noise=noise, **kw)
    src, inv, rec = x["samples"], noise["samples"], back["samples"]
    assert torch.isfinite(inv).all() and torch.isfinite(rec).all() and rec.shape == src.shape
    assert float((rec - src).pow(2).mean()) < float((inv - src).pow(2).mean())


@pytest.mark.parametrize("family", list(M.FAMILIES))
def test_linfusion_apply_on_every_family(comfy, family, lf_dir):
    """LinFusion patches SD1.5 and SDXL (weights sized for the model) and samples; on the DiTs and the
    pixel HDiT it refuses with the family named."""
    from node_support import write_lf_file

    expected = M.status("LinFusion Apply", family)
    model, clip, _ = family_parts(family)
    write_lf_file(model if expected == "works" else family_parts("sd15")[0], lf_dir / "lf_matrix.safetensors")
    (weights,) = comfy.run_node("UltraResLinFusionLoader", lf_name="lf_matrix.safetensors")
    if expected != "works":
        with pytest.raises(ValueError, match=expected.split(": ", 1)[1]):
            comfy.run_node("UltraResLinFusionApply", model=model, linfusion=weights)
        return
    (patched,) = comfy.run_node("UltraResLinFusionApply", model=model, linfusion=weights)
    pos, neg = conds(comfy, family, model, clip)
    for cfg in (1.0, 4.0):
        out = ksample(comfy, patched, pos, neg, latent(family, px=(128, 128)), cfg=cfg)
        assert torch.isfinite(out).all()


# ---------------------------------------------------------------- the README stays in step


def test_readme_table_matches_the_matrix():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md"), encoding="utf-8").read()
    m = re.search(re.escape(M.START) + r"\n(.*?)\n" + re.escape(M.END), readme, re.S)
    assert m, "README has no compatibility matrix section: run scripts/compat_table.py --write"
    assert m.group(1).strip() == M.markdown_table().strip(), (
        "README matrix is stale: run scripts/compat_table.py --write"
    )


# ---------------------------------------------------------------- CLEAR Apply (FLUX.1 only)


@functools.cache
def _clear_weights(down_factor: int = 4):
    """A CLEAR file sized for the tiny FLUX (window 8, official layout) in a temporary "clear" folder,
    loaded with UltraResCLEARLoader; once per session."""
    import tempfile

    import folder_paths
    from clear_support import write_clear_file
    from harness import boot

    folder = tempfile.mkdtemp(prefix="ultrares-clear-")
    name = f"clear_local_8{'_down_4' if down_factor == 4 else ''}.safetensors"
    write_clear_file(os.path.join(folder, name), down_factor=down_factor, dtype=torch.bfloat16)
    folder_paths.add_model_folder_path("clear", folder)
    return boot.boot().run_node("UltraResCLEARLoader", clear_name=name)[0]


@functools.cache
def _flux_lora_name():
    """A real LoRA on the tiny FLUX's fused attention projections (img_attn.qkv, linear1), in a
    temporary folder added to ComfyUI's "loras" paths."""
    import tempfile

    import comfy.lora as comfy_lora
    import folder_paths

    model = family_parts("flux")[0]
    shapes = {k: v.shape for k, v in model.model.state_dict().items()}
    g = torch.Generator().manual_seed(6)
    lora = {}
    for lora_key, weight_key in comfy_lora.model_lora_keys_unet(model.model, {}).items():
        if (
            isinstance(lora_key, str)
            and lora_key.startswith("lora_unet_")
            and lora_key.endswith(("img_attn_qkv", "linear1"))
        ):
            out_f, in_f = shapes[weight_key][:2]
            lora[f"{lora_key}.lora_up.weight"] = torch.randn(out_f, 4, generator=g) * 0.2
            lora[f"{lora_key}.lora_down.weight"] = torch.randn(4, in_f, generator=g) * 0.2
    assert lora, "no FLUX attention keys found for the LoRA"
    folder = tempfile.mkdtemp(prefix="ultrares-loras-")
    folder_paths.add_model_folder_path("loras", folder)
    name = f"ultrares_clear_{uuid.uuid4().hex[:8]}.safetensors"
    save_file(lora, os.path.join(folder, name))
    return name


def _clear(comfy, model):
    return comfy.run_node("UltraResCLEARApply", model=model, clear=_clear_weights())[0]


@pytest.mark.parametrize("family", list(M.FAMILIES))
def test_clear_apply_on_every_family(comfy, family):
    """CLEAR patches FLUX.1 and samples at cfg 1 and 4; every other family is refused by name."""
    expected = M.status("CLEAR Apply", family)
    model, clip, _ = family_parts(family)
    if expected != "works":
        with pytest.raises(ValueError, match=expected.split(": ", 1)[1]):
            _clear(comfy, model)
        return
    patched = _clear(comfy, model)
    if family != "flux":  # e.g. FLUX.1 Fill: patched, sampled by its own graphs
        return
    pos, neg = conds(comfy, family, model, clip)
    for cfg in (1.0, 4.0):
        out = ksample(comfy, patched, pos, neg, latent(family), cfg=cfg)
        plain = ksample(comfy, model, pos, neg, latent(family), cfg=cfg)
        assert torch.isfinite(out).all() and float((out - plain).abs().max()) > 1e-4


@pytest.mark.parametrize("cfg", [1.0, 4.0], ids=["cfg1", "cfg4"])
@pytest.mark.parametrize("addon", M.CLEAR_ADDONS)
def test_clear_composes(comfy, addon, cfg):
    """CLEAR Apply (window 8, down 4) on the tiny FLUX with each tiling method (each tile's token
    grid is what CLEAR masks: one tile covering the image equals untiled CLEAR sampling), Relay
    Upscale, a LoRA loaded after it, a Flux ControlNet and batch 2, at cfg 1 and 4 (FluxGuidance)."""
    import tiny_models

    model, clip, vae = family_parts("flux")
    pos, neg = conds(comfy, "flux", model, clip)
    lat = latent("flux")
    clear = _clear(comfy, model)
    if addon in M.TILING_METHODS:
        check_cell(
            comfy,
            "flux",
            addon,
            lambda m: ksample(comfy, m, pos, neg, lat, cfg=cfg),
            clear,
            key=("clear", cfg),
        )
        return
    if addon == "Relay Upscale":
        first = ksample(comfy, clear, pos, neg, latent("flux", px=(128, 128)), cfg=cfg)
        (out,) = comfy.run_node(
            "UltraResRelayUpscale",
            model=clear,
            positive=pos,
            negative=neg,
            latent={"samples": first},
            factor=2,
            seed=4,
            steps=3,
            truncation_sigma=0.6,
            rho=1.0,
            cfg=cfg,
            blur_sigma_max=0.0,
            prob_length=0.93,
            s_block=0.15,
            s_noise=0.2,
            s_churn=0.0,
            s_tmin=0.0,
            s_tmax=1000.0,
            s_churn_noise=1.0,
        )
        samples = out["samples"]
        assert samples.shape[-2:] == (first.shape[-2] * 2, first.shape[-1] * 2)
    elif addon == "LoRA":
        (with_lora,) = comfy.run_node(
            "LoraLoaderModelOnly", model=clear, lora_name=_flux_lora_name(), strength_model=1.0
        )
        samples = ksample(comfy, with_lora, pos, neg, lat, cfg=cfg)
        assert float((samples - ksample(comfy, clear, pos, neg, lat, cfg=cfg)).abs().max()) > 1e-4
    elif addon == "ControlNet":
        build = getattr(tiny_models, "build_flux_controlnet", None)
        if build is None:
            pytest.skip("this tiny_models has no Flux ControlNet builder")
        pos_c, neg_c = _apply_control(comfy, pos, neg, build(kind="xlabs"), _image("flux"))
        samples = ksample(comfy, clear, pos_c, neg_c, lat, cfg=cfg)
        assert float((samples - ksample(comfy, clear, pos, neg, lat, cfg=cfg)).abs().max()) > 1e-4
    else:  # batch size 2: each item as when sampled alone
        two = latent("flux", batch=2, noise=True)
        samples = ksample(comfy, clear, pos, neg, two, cfg=cfg, denoise=0.8)
        one = ksample(comfy, clear, pos, neg, {"samples": two["samples"][:1]}, cfg=cfg, denoise=0.8)
        assert samples.shape[0] == 2
        torch.testing.assert_close(samples[:1], one, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(samples).all()
