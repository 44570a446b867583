"""LinFusion nodes on the tiny SD1.5/SDXL models: loading official-format files, patching every attn1
and nothing else, refusing mismatches, the min_tokens switch, value/output projections, precision."""

from __future__ import annotations

import logging
import sys

import folder_paths
import pytest
import torch
from node_support import tiny_specs, write_lf_file  # noqa: F401  (re-exported to this file's tests)
from ultrares.kernels import linfusion as L
from ultrares.kernels import linfusion_format as fmt

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _lf_module(comfy):
    """The nodes module ComfyUI loaded (same class identities as the node outputs)."""
    cls = comfy.node_class("UltraResLinFusionApply")
    return sys.modules[cls.__module__]


def _sample(comfy, model, clip, seed=1, size=16, steps=1):
    (pos,) = comfy.run_node("CLIPTextEncode", clip=clip, text="a lighthouse")
    (neg,) = comfy.run_node("CLIPTextEncode", clip=clip, text="")
    (out,) = comfy.run_node(
        "KSampler",
        model=model,
        seed=seed,
        steps=steps,
        cfg=4.0,
        sampler_name="euler",
        scheduler="normal",
        positive=pos,
        negative=neg,
        latent_image={"samples": torch.zeros(1, 4, size, size)},
        denoise=1.0,
    )
    return out["samples"]


@pytest.mark.parametrize("family,n_layers,mid_scale", [("sd15", 16, None), ("sdxl", 16, 16)])
def test_official_file_patches_every_attn1_and_nothing_else(
    comfy, request, lf_dir, family, n_layers, mid_scale
):
    model, clip, _ = request.getfixturevalue(f"tiny_{family}")
    specs = write_lf_file(model, lf_dir / f"lf_{family}.safetensors", mid_dim_scale=mid_scale)
    assert f"lf_{family}.safetensors" in folder_paths.get_filename_list("linfusion")
    (weights,) = comfy.run_node("UltraResLinFusionLoader", lf_name=f"lf_{family}.safetensors")
    assert len(weights.specs) == n_layers
    (patched,) = comfy.run_node(
        "UltraResLinFusionApply",
        model=model,
        linfusion=weights,
        min_tokens=0,
        keep_base_value_output=False,
        chunk_size=0,
        precision="auto",
    )
    mod = _lf_module(comfy)
    attn1 = {f"diffusion_model.{p}" for p in specs}
    assert set(patched.object_patches) - set(model.object_patches) == attn1
    assert patched.patches == model.patches and not model.object_patches.keys() & attn1
    for key in attn1:
        wrapper = patched.object_patches[key]
        assert isinstance(wrapper, mod.LinFusionAttn1)
        base = model.get_model_object(key)
        assert wrapper.base is base and wrapper.to_q is base.to_q and wrapper.to_out is base.to_out
        spec = specs[key.removeprefix("diffusion_model.")]
        assert wrapper.linfusion.heads == spec.heads and wrapper.linfusion.mid_dim == spec.mid_dim
    # the file's weights are what runs (cast to the model's fp32)
    (_, sd_layers) = fmt.load_linfusion(str(lf_dir / f"lf_{family}.safetensors"))
    first = patched.object_patches[f"diffusion_model.{next(iter(specs))}"].linfusion
    torch.testing.assert_close(first.to_q_[3].weight, sd_layers[0]["to_q_.3.weight"].float())
    # while patched, the UNet really holds the wrappers; afterwards the originals are back
    patched.patch_model()
    try:
        unet = patched.model.diffusion_model
        kinds = {type(m).__name__ for n, m in unet.named_modules() if n.endswith("attn1")}
        assert kinds == {"LinFusionAttn1"}
        assert {type(m).__name__ for n, m in unet.named_modules() if n.endswith("attn2")} == {
            "CrossAttention"
        }
    finally:
        patched.unpatch_model()
    assert {
        type(m).__name__ for n, m in model.model.diffusion_model.named_modules() if n.endswith("attn1")
    } == {"CrossAttention"}
    # and the sampled result changes
    assert not torch.allclose(_sample(comfy, patched, clip), _sample(comfy, model, clip))


def test_wrapper_equals_kernel_and_base_below_min_tokens(comfy, tiny_sd15, lf_dir):
    model, _, _ = tiny_sd15
    specs = write_lf_file(model, lf_dir / "lf.safetensors", dtype=torch.float32)
    (weights,) = comfy.run_node("UltraResLinFusionLoader", lf_name="lf.safetensors")
    key = "input_blocks.1.1.transformer_blocks.0.attn1"
    (patched,) = comfy.run_node(
        "UltraResLinFusionApply",
        model=model,
        linfusion=weights,
        min_tokens=100,
        keep_base_value_output=False,
        chunk_size=0,
        precision="auto",
    )
    wrapper = patched.object_patches[f"diffusion_model.{key}"]
    ref = fmt.build_layer(specs[key], fmt.load_linfusion(str(lf_dir / "lf.safetensors"))[1][0])
    x_big = torch.randn(2, 256, 32)
    torch.testing.assert_close(wrapper(x_big), ref(x_big))
    x_small = torch.randn(2, 64, 32)  # below min_tokens: the original softmax attention
    torch.testing.assert_close(wrapper(x_small), wrapper.base(x_small))
    assert not torch.allclose(wrapper(x_small), ref(x_small))
    # masked calls fall back too
    assert not wrapper.uses_linfusion(x_big, mask=torch.ones(2, 256, 256))


def test_min_tokens_switch_in_sampling(comfy, tiny_sd15, lf_dir):
    model, clip, _ = tiny_sd15
    write_lf_file(model, lf_dir / "lf.safetensors")
    (weights,) = comfy.run_node("UltraResLinFusionLoader", lf_name="lf.safetensors")

    def apply(min_tokens):
        return comfy.run_node(
            "UltraResLinFusionApply",
            model=model,
            linfusion=weights,
            min_tokens=min_tokens,
            keep_base_value_output=False,
            chunk_size=0,
            precision="auto",
        )[0]

    base = _sample(comfy, model, clip)
    # 16x16 latent: 256 tokens at level 0, 64 and 16 below. Above every size: identical to the base model.
    assert torch.equal(_sample(comfy, apply(1 << 20), clip), base)
    only_top = _sample(comfy, apply(200), clip)
    everywhere = _sample(comfy, apply(0), clip)
    assert not torch.allclose(only_top, base) and not torch.allclose(only_top, everywhere)
    # count which layers used LinFusion in a real forward
    patched = apply(200)
    used = []
    for key, wrapper in patched.object_patches.items():
        wrapper.register_forward_hook(
            lambda mod, args, out, k=key: used.append((k, mod.uses_linfusion(args[0])))
        )
    _sample(comfy, patched, clip)
    on = {k for k, u in used if u}
    assert on == {
        f"diffusion_model.{p}.transformer_blocks.0.attn1"
        for p in (
            "input_blocks.1.1",
            "input_blocks.2.1",
            "output_blocks.9.1",
            "output_blocks.10.1",
            "output_blocks.11.1",
        )
    }


def test_keep_base_value_output(comfy, tiny_sd15, lf_dir):
    model, _, _ = tiny_sd15
    write_lf_file(model, lf_dir / "lf.safetensors", dtype=torch.float32)
    (weights,) = comfy.run_node("UltraResLinFusionLoader", lf_name="lf.safetensors")
    (patched,) = comfy.run_node(
        "UltraResLinFusionApply",
        model=model,
        linfusion=weights,
        min_tokens=0,
        keep_base_value_output=True,
        chunk_size=0,
        precision="auto",
    )
    wrapper = patched.object_patches["diffusion_model.middle_block.1.transformer_blocks.0.attn1"]
    lin = wrapper.linfusion
    x = torch.randn(1, 16, 128)
    want = wrapper.base.to_out(
        L.linear_attention(lin.project_q(x), lin.project_k(x), wrapper.base.to_v(x), lin.heads)
    )
    torch.testing.assert_close(wrapper(x), want)
    assert not torch.allclose(wrapper(x), lin(x))


def test_chunked_patch_matches_unchunked(comfy, tiny_sd15, lf_dir):
    model, _, _ = tiny_sd15
    write_lf_file(model, lf_dir / "lf.safetensors", dtype=torch.float32)
    (weights,) = comfy.run_node("UltraResLinFusionLoader", lf_name="lf.safetensors")
    outs = []
    for chunk in (0, 50):
        (p,) = comfy.run_node(
            "UltraResLinFusionApply",
            model=model,
            linfusion=weights,
            min_tokens=0,
            keep_base_value_output=False,
            chunk_size=chunk,
            precision="auto",
        )
        outs.append(
            p.object_patches["diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1"](
                torch.ones(1, 256, 32).cumsum(1) / 256
            )
        )
    torch.testing.assert_close(outs[0], outs[1])


def test_mismatched_family_refused_naming_both(comfy, tiny_sd15, tiny_sdxl, lf_dir):
    sd15, sdxl = tiny_sd15[0], tiny_sdxl[0]
    write_lf_file(sdxl, lf_dir / "xl.safetensors", mid_dim_scale=16)
    write_lf_file(sd15, lf_dir / "v15.safetensors")
    write_lf_file(sd15, lf_dir / "v2like.safetensors", heads=lambda c: max(1, c // 16))
    (xl,) = comfy.run_node("UltraResLinFusionLoader", lf_name="xl.safetensors")
    (v15,) = comfy.run_node("UltraResLinFusionLoader", lf_name="v15.safetensors")
    (v2,) = comfy.run_node("UltraResLinFusionLoader", lf_name="v2like.safetensors")
    kw = {"min_tokens": 0, "keep_base_value_output": False, "chunk_size": 0, "precision": "auto"}
    with pytest.raises(ValueError, match=r"xl\.safetensors' \(SDXL layout.*does not fit a SD15 model"):
        comfy.run_node("UltraResLinFusionApply", model=sd15, linfusion=xl, **kw)
    with pytest.raises(ValueError, match=r"SD1\.x layout.*does not fit a SDXL model"):
        comfy.run_node("UltraResLinFusionApply", model=sdxl, linfusion=v15, **kw)
    with pytest.raises(ValueError, match=r"custom layout.*file has 2 heads, model has 8\)"):
        comfy.run_node("UltraResLinFusionApply", model=sd15, linfusion=v2, **kw)
    # applying twice is refused too
    (once,) = comfy.run_node("UltraResLinFusionApply", model=sd15, linfusion=v15, **kw)
    with pytest.raises(ValueError, match="already applied"):
        comfy.run_node("UltraResLinFusionApply", model=once, linfusion=v15, **kw)


def test_bad_files_give_clear_errors(comfy, lf_dir):
    (lf_dir / "corrupt.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    with pytest.raises(ValueError, match=r"lf_name 'corrupt.safetensors'.*corrupt or incomplete") as err:
        comfy.run_node("UltraResLinFusionLoader", lf_name="corrupt.safetensors")
    assert str(lf_dir) not in str(err.value) and "models/linfusion/corrupt.safetensors" in str(err.value)
    assert "weights_only" not in str(err.value) and "Error while" not in str(err.value)
    # run time refuses a file that is not there with the queue's message: the input, the value, where files go
    with pytest.raises(
        ValueError, match=r"^lf_name='missing.safetensors' is not one of: .*models/linfusion/\)\.$"
    ):
        comfy.run_node("UltraResLinFusionLoader", lf_name="missing.safetensors")
    from safetensors.torch import save_file

    save_file({"0.to_q.weight": torch.zeros(2, 2)}, str(lf_dir / "noconfig.safetensors"))
    with pytest.raises(ValueError, match="no LinFusion config") as err:
        comfy.run_node("UltraResLinFusionLoader", lf_name="noconfig.safetensors")
    assert str(lf_dir) not in str(err.value)
    with pytest.raises(ValueError, match="connect the output of LinFusion Loader"):
        comfy.run_node(
            "UltraResLinFusionApply",
            model=None,
            linfusion="nope",
            min_tokens=0,
            keep_base_value_output=False,
            chunk_size=0,
            precision="auto",
        )


def test_official_folder_layout_loads(comfy, tiny_sd15, lf_dir):
    model = tiny_sd15[0]
    specs = tiny_specs(model)
    fmt.save_linfusion(
        str(lf_dir / "LinFusion-tiny"), list(specs.values()), [fmt.build_layer(s) for s in specs.values()]
    )
    names = folder_paths.get_filename_list("linfusion")
    pick = next(n for n in names if n.endswith("config.json"))
    (w,) = comfy.run_node("UltraResLinFusionLoader", lf_name=pick)
    (p,) = comfy.run_node(
        "UltraResLinFusionApply",
        model=model,
        linfusion=w,
        min_tokens=0,
        keep_base_value_output=False,
        chunk_size=0,
        precision="auto",
    )
    assert len(p.object_patches) == 16


def test_sd2_fp16_runs_linfusion_in_fp32_and_warns(comfy, lf_dir, caplog):
    from comfy import model_patcher, supported_models

    unet_config = {
        "use_checkpoint": False,
        "image_size": 32,
        "out_channels": 4,
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": None,
        "in_channels": 4,
        "model_channels": 64,
        "num_res_blocks": [1, 1],
        "transformer_depth": [1, 1, 1, 1],
        "channel_mult": [1, 2],
        "transformer_depth_middle": 1,
        "use_linear_in_transformer": True,
        "context_dim": 64,
        "num_head_channels": 64,
        "transformer_depth_output": [1, 1, 1, 1],
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }
    config = supported_models.SD20(dict(unet_config))
    config.set_inference_dtype(torch.float16, None)
    base = config.get_model({}, "", device=torch.device("cpu"))
    with torch.no_grad():
        for prm in base.diffusion_model.parameters():
            prm.copy_(torch.randn_like(prm) * 0.05)
    model = model_patcher.ModelPatcher(
        base, load_device=torch.device("cpu"), offload_device=torch.device("cpu")
    )
    write_lf_file(model, lf_dir / "v21.safetensors")
    (w,) = comfy.run_node("UltraResLinFusionLoader", lf_name="v21.safetensors")
    with caplog.at_level(logging.WARNING):
        (p,) = comfy.run_node(
            "UltraResLinFusionApply",
            model=model,
            linfusion=w,
            min_tokens=0,
            keep_base_value_output=False,
            chunk_size=0,
            precision="auto",
        )
    assert "float16" in caplog.text and "float32" in caplog.text
    wrapper = next(iter(p.object_patches.values()))
    assert wrapper.compute_fp32 and wrapper.linfusion.to_q.weight.dtype == torch.float32
    x = torch.randn(1, 64, 64, dtype=torch.float16) * 30
    out = wrapper(x)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), wrapper.linfusion(x.float()), rtol=1e-2, atol=1e-2)


SDXL_FULL = {
    "num_res_blocks": [2, 2, 2],
    "channel_mult": [1, 2, 4],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "transformer_depth_middle": 10,
}
SD15_FULL = {
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1,
}


@pytest.mark.parametrize("unet_config,n_attn1", [(SD15_FULL, 16), (SDXL_FULL, 70)])
def test_name_mapping_matches_comfyui_for_full_size_models(comfy, unet_config, n_attn1):
    """Our diffusers -> ComfyUI mapping agrees with ComfyUI's own unet_to_diffusers on the real
    SD1.5 and SDXL layouts (70 attn1 layers on SDXL, none in its first down block)."""
    import comfy.utils as cu

    table = cu.unet_to_diffusers(dict(unet_config))
    attn1 = {
        d[: -len(".to_q.weight")]: c[: -len(".to_q.weight")]
        for d, c in table.items()
        if d.endswith("attn1.to_q.weight")
    }
    assert len(attn1) == n_attn1
    for diffusers_name, comfy_name in attn1.items():
        assert fmt.diffusers_to_ldm(diffusers_name, unet_config["num_res_blocks"]) == comfy_name
        assert fmt.diffusers_to_ldm(diffusers_name) == comfy_name  # the 3i+j+1 / 3i+j shorthand
        assert fmt.ldm_to_diffusers(comfy_name, unet_config["num_res_blocks"]) == diffusers_name
    if n_attn1 == 70:
        assert not any(n.startswith("down_blocks.0.") for n in attn1)
        assert (
            attn1["down_blocks.1.attentions.0.transformer_blocks.1.attn1"]
            == "input_blocks.4.1.transformer_blocks.1.attn1"
        )
        assert (
            attn1["up_blocks.0.attentions.2.transformer_blocks.9.attn1"]
            == "output_blocks.2.1.transformer_blocks.9.attn1"
        )


def test_composes_with_lora_and_tiled_sampling(comfy, tiny_sd15, lf_dir):
    """A LoRA-style weight patch on attn2 (cross-attention) and on attn1's base to_q survives the
    LinFusion patch, and the result runs inside UltraResTiledDiffusion."""
    model, clip, _ = tiny_sd15
    write_lf_file(model, lf_dir / "lf.safetensors")
    (weights,) = comfy.run_node("UltraResLinFusionLoader", lf_name="lf.safetensors")
    attn2_k = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    attn1_q = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    lora = model.clone()
    gen = torch.Generator().manual_seed(0)
    diffs = {}
    for key in (attn2_k, attn1_q):
        shape = model.get_model_object(key.rsplit(".", 1)[0]).weight.shape
        diffs[key] = torch.randn(shape, generator=gen) * 0.5
        lora.add_patches({key: ("diff", (diffs[key],))}, 1.0)
    w0 = model.get_model_object(attn1_q.rsplit(".", 1)[0]).weight.detach().clone()
    kw = {"min_tokens": 0, "keep_base_value_output": False, "chunk_size": 0, "precision": "auto"}
    (lf_only,) = comfy.run_node("UltraResLinFusionApply", model=model, linfusion=weights, **kw)
    (lf_lora,) = comfy.run_node("UltraResLinFusionApply", model=lora, linfusion=weights, **kw)
    assert attn2_k in lf_lora.patches and attn1_q in lf_lora.patches
    a, b = _sample(comfy, lf_only, clip, size=16), _sample(comfy, lf_lora, clip, size=16)
    assert torch.isfinite(b).all() and not torch.allclose(a, b)  # the attn2 LoRA still acts
    # while patched, the attn1 LoRA lands on the base projection the wrapper shares (used below min_tokens)
    lf_lora.patch_model()
    try:
        wrapper = lf_lora.model.diffusion_model.input_blocks[1][1].transformer_blocks[0].attn1
        assert type(wrapper).__name__ == "LinFusionAttn1"
        torch.testing.assert_close(wrapper.to_q.weight.detach(), w0 + diffs[attn1_q])
        assert wrapper.to_q is wrapper.base.to_q
    finally:
        lf_lora.unpatch_model()
    (tiled,) = comfy.run_node(
        "UltraResTiledDiffusion",
        model=lf_lora,
        method="FSTD",
        tile_width=64,
        tile_height=64,
        overlap=0,
        tile_batch_size=2,
        reset_interval=4,
        seed=0,
    )
    c = _sample(comfy, tiled, clip, size=16)
    assert c.shape == b.shape and torch.isfinite(c).all()
    assert set(tiled.object_patches) >= set(lf_lora.object_patches)


def test_patched_model_size_includes_linfusion_weights(comfy, tiny_sdxl, lf_dir):
    """ComfyUI's VRAM planning (ModelPatcher.model_size, fixed at load and copied by clone) sees the
    LinFusion layers: the size grows by exactly their bytes, and equals what the module tree holds
    once ComfyUI has applied the object patches."""
    import comfy.model_management as mm

    model = tiny_sdxl[0]
    write_lf_file(model, lf_dir / "lf_size.safetensors", mid_dim_scale=16, dtype=torch.float16)
    (weights,) = comfy.run_node("UltraResLinFusionLoader", lf_name="lf_size.safetensors")
    (patched,) = comfy.run_node("UltraResLinFusionApply", model=model, linfusion=weights)
    base_dtype = model.model.get_dtype()
    lf_bytes = sum(t.nelement() * base_dtype.itemsize for sd in weights.layers for t in sd.values())
    assert lf_bytes > 0
    assert patched.model_size() == model.model_size() + lf_bytes
    assert patched.clone().model_size() == patched.model_size()  # survives further patch nodes
    mm.load_models_gpu([patched])
    try:
        assert mm.module_size(patched.model) == patched.model_size()
    finally:
        mm.load_models_gpu([model.clone()])  # put the shared model back unpatched


def test_linfusion_layers_are_comfy_cast_ops_and_run_offloaded(comfy, tiny_sd15, lf_dir):
    """The LinFusion Linear/LayerNorm layers are ComfyUI manual_cast ops, so ComfyUI's low-VRAM and
    dynamic-VRAM loaders manage them like the model's own layers (offloaded, cast at use): a
    partial load (1 byte of budget: everything offloaded) gives the same prediction as a full load."""
    import comfy.model_management as mm

    model = tiny_sd15[0]
    write_lf_file(model, lf_dir / "lf_cast.safetensors")
    (weights,) = comfy.run_node("UltraResLinFusionLoader", lf_name="lf_cast.safetensors")
    (patched,) = comfy.run_node("UltraResLinFusionApply", model=model, linfusion=weights)
    attn = patched.get_model_object("diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1")
    lf_ops = [m for m in attn.linfusion.modules() if isinstance(m, (torch.nn.Linear, torch.nn.LayerNorm))]
    assert len(lf_ops) >= 10 and all(getattr(m, "comfy_cast_weights", False) for m in lf_ops)
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([2.0])
    ctx = torch.randn(1, 77, 64, generator=torch.Generator().manual_seed(1))
    try:
        mm.unload_all_models()
        patched.patch_model(device_to=patched.load_device, lowvram_model_memory=1)
        assert patched.model.model_lowvram
        with torch.no_grad():
            offloaded = patched.model.apply_model(x, sigma, c_crossattn=ctx)
        patched.unpatch_model(patched.offload_device)
        patched.patch_model(device_to=patched.load_device)
        assert not patched.model.model_lowvram
        with torch.no_grad():
            full = patched.model.apply_model(x, sigma, c_crossattn=ctx)
        patched.unpatch_model(patched.offload_device)
    finally:
        mm.load_models_gpu([model.clone()])
    torch.testing.assert_close(offloaded, full)
    assert not torch.equal(full, model.model.apply_model(x, sigma, c_crossattn=ctx).detach())


@pytest.mark.parametrize("family", ["flux", "sd3", "hdit"])
def test_non_unet_models_refused_naming_the_family(comfy, request, tiny_sd15, lf_dir, family):
    """Flux / SD3 / HDiT (DiT-type models): a clear refusal naming the family, and that LinFusion
    weights exist only for SD-family UNets."""
    if family == "hdit":
        model, _, _ = comfy.run_node(
            "UltraResHDiTLoader", model_name="ultrares-emoji64.safetensors", weight_dtype="float32"
        )
    else:
        model = request.getfixturevalue(f"tiny_{family}")[0]
    write_lf_file(tiny_sd15[0], lf_dir / "lf_refuse.safetensors")
    (weights,) = comfy.run_node("UltraResLinFusionLoader", lf_name="lf_refuse.safetensors")
    family_name = _lf_module(comfy).model_family(model)
    with pytest.raises(ValueError) as err:
        comfy.run_node("UltraResLinFusionApply", model=model, linfusion=weights)
    msg = str(err.value)
    assert family_name in msg and "not an SD-family UNet" in msg
    assert "LinFusion weights exist only for SD-family UNets (SD1.5, SD2.1, SDXL" in msg
    assert {"flux": "Flux", "sd3": "SD3", "hdit": "HDiT"}[family].lower() in msg.lower()
