"""CLEAR nodes on the tiny FLUX: the whole model equals the official processors (ported in
tests/kernels/clear_reference.py) with the file's weights, the fused-row patches touch nothing else,
composition (sampling, LoRA, batch, chained attention overrides), refusals by name."""

from __future__ import annotations

import os
import sys

import folder_paths
import pytest
import torch
from clear_support import clear_state_dict, write_clear_file
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "kernels"))
from clear_reference import flux_forward  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def clear_dir(comfy, tmp_path):
    d = tmp_path / "clear"
    d.mkdir()
    folder_paths.add_model_folder_path("clear", str(d))
    yield d
    folder_paths.folder_names_and_paths["clear"][0].remove(str(d))


def _apply(comfy, model, name, **kw):
    (clear,) = comfy.run_node("UltraResCLEARLoader", clear_name=name)
    (m,) = comfy.run_node("UltraResCLEARApply", model=model, clear=clear, **kw)
    return m


def _inputs(grid_h, grid_w, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(batch, 16, 2 * grid_h, 2 * grid_w, generator=g),
        timestep=torch.full((batch,), 0.7),
        context=torch.randn(batch, 77, 64, generator=g),
        y=torch.randn(batch, 64, generator=g),
        guidance=torch.full((batch,), 3.5),
    )


def _forward(m, inp):
    """The patched model's diffusion-model output (weights, object patches and wrappers applied)."""
    import comfy.model_management as mm

    mm.load_models_gpu([m])
    net = m.get_model_object("diffusion_model")
    options = {"wrappers": m.wrappers}
    with torch.no_grad():
        return net(
            inp["x"],
            inp["timestep"],
            inp["context"],
            y=inp["y"],
            guidance=inp["guidance"],
            transformer_options=options,
        )


# (file name, down factor, token grid, proportional attention, ntk)
PARITY = [
    ("clear_local_16.safetensors", 1, (8, 12), False, 1.0),
    ("clear_local_16.safetensors", 1, (48, 48), False, 1.0),  # the circle covers 35 % of the grid
    ("clear_local_8_down_4.safetensors", 4, (8, 12), False, 1.0),
    ("clear_local_8_down_4.safetensors", 4, (32, 32), True, 10.0),  # 20 % visible; high-res options
]


@pytest.mark.parametrize(
    "name,df,grid,prop,ntk", PARITY, ids=[f"{p[0][:-12]}-{p[2][0]}x{p[2][1]}" for p in PARITY]
)
def test_whole_model_equals_the_official_processors(comfy, tiny_flux, clear_dir, name, df, grid, prop, ntk):
    model = tiny_flux[0]
    sd = write_clear_file(clear_dir / name, down_factor=df, dtype=torch.bfloat16)
    window = 16 if "16" in name else 8
    m = _apply(comfy, model, name, proportional_attention=prop, ntk_factor=ntk)
    inp = _inputs(*grid)
    out = _forward(m, inp)
    net = m.get_model_object("diffusion_model")
    with torch.no_grad():
        ref = flux_forward(
            net, sd, **inp, window_size=window, down_factor=df, proportional_attention=prop, ntk_factor=ntk
        )
    err = float((out - ref).abs().max() / ref.abs().max())
    print(f"CLEAR parity {name} grid {grid}: max relative error {err:.2e}")
    assert err < 1e-4
    base = _forward(model, inp)  # and CLEAR really changed the model
    assert float((base - out).abs().max()) > 1e-2


def test_patches_replace_the_attention_rows_only(comfy, tiny_flux, clear_dir):
    import comfy.model_management as mm

    model = tiny_flux[0]
    mm.load_models_gpu([model])
    before = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    sd = write_clear_file(clear_dir / "clear_local_8_down_4.safetensors", down_factor=4)
    m = _apply(comfy, model, "clear_local_8_down_4.safetensors")
    mm.load_models_gpu([m])
    after = m.model.diffusion_model.state_dict()
    h = 64
    q = "transformer_blocks.0.attn"
    torch.testing.assert_close(
        after["double_blocks.0.img_attn.qkv.weight"],
        torch.cat([sd[f"{q}.to_q.weight"], sd[f"{q}.to_k.weight"], sd[f"{q}.to_v.weight"]]),
    )
    torch.testing.assert_close(after["double_blocks.0.img_attn.proj.bias"], sd[f"{q}.to_out.0.bias"])
    s = "single_transformer_blocks.0.attn"
    torch.testing.assert_close(after["single_blocks.0.linear1.weight"][: 2 * h][h:], sd[f"{s}.to_k.weight"])
    torch.testing.assert_close(
        after["single_blocks.0.linear1.weight"][3 * h :], before["single_blocks.0.linear1.weight"][3 * h :]
    )
    torch.testing.assert_close(
        after["single_blocks.0.linear1.bias"][3 * h :], before["single_blocks.0.linear1.bias"][3 * h :]
    )
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {
        "double_blocks.0.img_attn.qkv.weight",
        "double_blocks.0.img_attn.qkv.bias",
        "double_blocks.0.img_attn.proj.weight",
        "double_blocks.0.img_attn.proj.bias",
        "single_blocks.0.linear1.weight",
        "single_blocks.0.linear1.bias",
    }
    assert (
        m.get_model_object("diffusion_model.pe_embedder").theta
        == 10 * model.get_model_object("diffusion_model.pe_embedder").theta
    )
    again = _apply(comfy, model, "clear_local_8_down_4.safetensors")  # while m is loaded
    assert (
        again.get_model_object("diffusion_model.pe_embedder").theta
        == m.get_model_object("diffusion_model.pe_embedder").theta
    )
    mm.load_models_gpu([model])  # the base model gets its own weights back
    torch.testing.assert_close(
        model.model.diffusion_model.state_dict()["single_blocks.0.linear1.weight"],
        before["single_blocks.0.linear1.weight"],
    )


def _sample(comfy, model, clip, cfg, batch=1, lat=(24, 32), denoise=1.0):
    (pos,) = comfy.run_node("CLIPTextEncode", clip=clip, text="a castle")
    (neg,) = comfy.run_node("CLIPTextEncode", clip=clip, text="blurry")
    (pos,) = comfy.run_node("FluxGuidance", conditioning=pos, guidance=3.5)
    z = torch.randn(batch, 16, *lat, generator=torch.Generator().manual_seed(1))
    (out,) = comfy.run_node(
        "KSampler",
        model=model,
        seed=1,
        steps=2,
        cfg=cfg,
        sampler_name="euler",
        scheduler="simple",
        positive=pos,
        negative=neg,
        latent_image={"samples": z},
        denoise=denoise,
    )
    return out["samples"]


def test_samples_at_cfg_1_and_4_with_batch_2_and_batch_independence(comfy, tiny_flux, clear_dir):
    model, clip, _ = tiny_flux
    write_clear_file(clear_dir / "clear_local_8_down_4.safetensors", down_factor=4)
    m = _apply(comfy, model, "clear_local_8_down_4.safetensors")
    plain = _sample(comfy, model, clip, 1.0)
    for cfg in (1.0, 4.0):
        out = _sample(comfy, m, clip, cfg, batch=2, denoise=0.8)
        assert torch.isfinite(out).all() and out.shape[0] == 2
    one = _sample(comfy, m, clip, 1.0)
    assert float((one - plain).abs().max()) > 1e-3  # CLEAR is in effect during sampling


def test_a_lora_after_clear_stacks(comfy, tiny_flux, clear_dir, tmp_path):
    import comfy.lora as comfy_lora

    model, clip, _ = tiny_flux
    write_clear_file(clear_dir / "clear_local_16.safetensors")
    m = _apply(comfy, model, "clear_local_16.safetensors")
    keys = comfy_lora.model_lora_keys_unet(model.model, {})
    g = torch.Generator().manual_seed(2)
    lora = {}
    for lk, wk in keys.items():
        if isinstance(lk, str) and lk.startswith("lora_unet_") and ("img_attn_qkv" in lk or "linear1" in lk):
            out_f, in_f = model.model.state_dict()[wk].shape[:2]
            lora[f"{lk}.lora_up.weight"] = torch.randn(out_f, 4, generator=g) * 0.2
            lora[f"{lk}.lora_down.weight"] = torch.randn(4, in_f, generator=g) * 0.2
    assert lora
    folder = tmp_path / "loras"
    folder.mkdir()
    save_file(lora, str(folder / "clear_lora.safetensors"))
    folder_paths.add_model_folder_path("loras", str(folder))
    try:
        (ml,) = comfy.run_node(
            "LoraLoaderModelOnly", model=m, lora_name="clear_lora.safetensors", strength_model=1.0
        )
    finally:
        folder_paths.folder_names_and_paths["loras"][0].remove(str(folder))
    inp = _inputs(8, 8)
    a, b = _forward(m, inp), _forward(ml, inp)
    assert torch.isfinite(b).all() and float((a - b).abs().max()) > 1e-3


def test_other_attention_overrides_are_chained(comfy, tiny_flux, clear_dir):
    """An override set before Apply CLEAR still sees every call CLEAR does not take."""
    model = tiny_flux[0]
    write_clear_file(clear_dir / "clear_local_16.safetensors")
    seen = []

    def spy(func, *args, **kwargs):
        seen.append(args[0].shape)
        return func(*args, **kwargs)

    base = model.clone()
    base.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = spy
    m = _apply(comfy, base, "clear_local_16.safetensors")
    _forward(
        m, _inputs(4, 4)
    )  # sampling merges model_options' transformer_options; this direct call does not
    import comfy.patcher_extension as pe

    (runner,) = m.wrappers[pe.WrappersMP.DIFFUSION_MODEL]["ultrares_clear"]
    q = torch.randn(1, 2, 77 + 16, 32)

    def plain(*args, **kwargs):
        return torch.zeros(1, 77 + 16, 64)

    out = runner.attend((77, 4, 4), spy, plain, q, q, q, 2, skip_reshape=True, transformer_options={})
    assert seen == [q.shape] and float(out.abs().max()) == 0.0  # no FLUX block context: handed on
    options = {"block_type": "double", "block_index": 0}
    out = runner.attend((77, 4, 4), spy, plain, q, q, q, 2, skip_reshape=True, transformer_options=options)
    assert len(seen) == 1 and out.shape == (1, 93, 64) and float(out.abs().max()) > 0  # CLEAR took it


def test_grid_not_divisible_by_the_down_factor_is_refused_with_a_size_that_works(comfy, tiny_flux, clear_dir):
    write_clear_file(clear_dir / "clear_local_8_down_4.safetensors", down_factor=4)
    m = _apply(comfy, tiny_flux[0], "clear_local_8_down_4.safetensors")
    with pytest.raises(ValueError, match=r"160x96 px \(10x6 tokens\).*multiples of 64 px.*Use 192x128 px"):
        _forward(m, _inputs(6, 10))


def test_refuses_sd_families_by_name(comfy, tiny_sd15, tiny_sdxl, clear_dir):
    write_clear_file(clear_dir / "clear_local_16.safetensors")
    for model, family in ((tiny_sd15[0], "SD15"), (tiny_sdxl[0], "SDXL")):
        with pytest.raises(
            ValueError, match=f"this is a {family} model.*CLEAR weights exist only for FLUX.1"
        ):
            _apply(comfy, model, "clear_local_16.safetensors")


def test_refuses_a_file_for_another_flux_size(comfy, tiny_flux, clear_dir):
    write_clear_file(clear_dir / "clear_local_16.safetensors", hidden=32)
    with pytest.raises(ValueError, match=r"hidden size 32.*does not fit this FLUX.1 model.*hidden size 64"):
        _apply(comfy, tiny_flux[0], "clear_local_16.safetensors")
    write_clear_file(clear_dir / "clear_local_8.safetensors", n_single=2)
    with pytest.raises(ValueError, match=r"1 double \+ 2 single blocks.*does not fit"):
        _apply(comfy, tiny_flux[0], "clear_local_8.safetensors")


def test_applying_twice_is_refused(comfy, tiny_flux, clear_dir):
    write_clear_file(clear_dir / "clear_local_16.safetensors")
    m = _apply(comfy, tiny_flux[0], "clear_local_16.safetensors")
    with pytest.raises(ValueError, match="already applied"):
        _apply(comfy, m, "clear_local_16.safetensors")


def _loader_error(comfy, name):
    with pytest.raises(ValueError) as info:
        comfy.run_node("UltraResCLEARLoader", clear_name=name)
    return str(info.value)


def test_loader_refuses_wrong_keys_shapes_dtypes_and_corrupt_files_by_name(comfy, clear_dir):
    sd = clear_state_dict()
    save_file(
        {**sd, "transformer_blocks.0.attn.add_q_proj.weight": torch.zeros(64, 64)},
        str(clear_dir / "clear_local_16_extra.safetensors"),
    )
    msg = _loader_error(comfy, "clear_local_16_extra.safetensors")
    assert (
        "clear_local_16_extra.safetensors" in msg
        and "add_q_proj" in msg
        and "outside the CLEAR layout" in msg
    )

    sd_missing = {k: v for k, v in sd.items() if "to_v" not in k}
    save_file(sd_missing, str(clear_dir / "clear_local_16_missing.safetensors"))
    msg = _loader_error(comfy, "clear_local_16_missing.safetensors")
    assert "clear_local_16_missing.safetensors" in msg and "missing keys" in msg and "to_v" in msg

    bad = dict(sd)
    bad["single_transformer_blocks.0.attn.to_k.weight"] = torch.zeros(64, 32)
    save_file(bad, str(clear_dir / "clear_local_16_shape.safetensors"))
    msg = _loader_error(comfy, "clear_local_16_shape.safetensors")
    assert "single_transformer_blocks.0.attn.to_k.weight" in msg and "[64, 32]" in msg and "[64, 64]" in msg

    save_file(
        {k: v.to(torch.float64) for k, v in sd.items()}, str(clear_dir / "clear_local_16_f64.safetensors")
    )
    assert "F64" in _loader_error(comfy, "clear_local_16_f64.safetensors")

    good = clear_dir / "clear_local_16_ok.safetensors"
    save_file(sd, str(good))
    data = good.read_bytes()
    (clear_dir / "clear_local_16_cut.safetensors").write_bytes(data[: len(data) // 2])
    msg = _loader_error(comfy, "clear_local_16_cut.safetensors")
    assert "clear_local_16_cut.safetensors" in msg and "corrupt" in msg
    (clear_dir / "clear_local_16_junk.safetensors").write_bytes(b"\xff" * 64)
    assert "header cannot be read" in _loader_error(comfy, "clear_local_16_junk.safetensors")
    assert str(clear_dir) not in msg  # no server paths in messages


def test_window_and_down_factor_from_name_metadata_and_override(comfy, tiny_flux, clear_dir):
    sd = clear_state_dict(down_factor=4)
    save_file(sd, str(clear_dir / "my_clear.safetensors"), metadata={"window_size": "12"})
    (c,) = comfy.run_node("UltraResCLEARLoader", clear_name="my_clear.safetensors")
    assert (c.window, c.down_factor) == (12, 4)
    save_file(sd, str(clear_dir / "clear_local_8_down_2.safetensors"))
    assert "down factor 2" in _loader_error(comfy, "clear_local_8_down_2.safetensors")
    save_file(clear_state_dict(), str(clear_dir / "nameless.safetensors"))
    assert "no window size" in _loader_error(comfy, "nameless.safetensors")
    write_clear_file(clear_dir / "clear_local_16.safetensors")
    inp = _inputs(24, 24)
    a = _forward(_apply(comfy, tiny_flux[0], "clear_local_16.safetensors", window=4), inp)
    b = _forward(_apply(comfy, tiny_flux[0], "clear_local_16.safetensors"), inp)
    assert float((a - b).abs().max()) > 1e-4  # the window override is used


def test_schema_has_tooltips_and_validates_ranges(comfy):
    info = comfy.object_info("UltraResCLEARApply")
    assert info["input"]["optional" if "window" in info["input"].get("optional", {}) else "required"][
        "window"
    ][1]["tooltip"]
    assert comfy.validate("UltraResCLEARApply", window=-1, ntk_factor=10.0) is not True
    assert comfy.validate("UltraResCLEARApply", window=8, ntk_factor=0.5) is not True
    assert comfy.validate("UltraResCLEARApply", window=8, ntk_factor=10.0) is True


def test_kontext_reference_tokens_are_global(comfy, tiny_flux, clear_dir):
    """A Kontext-style reference latent appends tokens after the image: CLEAR treats them like text
    (every query sees them), so the output changes with the reference and stays finite."""
    write_clear_file(clear_dir / "clear_local_8_down_4.safetensors", down_factor=4)
    m = _apply(comfy, tiny_flux[0], "clear_local_8_down_4.safetensors")
    inp = _inputs(8, 8)
    ref = torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(5))
    import comfy.model_management as mm

    mm.load_models_gpu([m])
    net = m.get_model_object("diffusion_model")
    with torch.no_grad():
        with_ref = net(
            inp["x"],
            inp["timestep"],
            inp["context"],
            y=inp["y"],
            guidance=inp["guidance"],
            ref_latents=[ref],
            transformer_options={"wrappers": m.wrappers},
        )
    plain = _forward(m, inp)
    assert with_ref.shape == plain.shape and torch.isfinite(with_ref).all()
    assert float((with_ref - plain).abs().max()) > 1e-4
