"""UltraResTiledDiffusion on real ComfyUI objects: stock samplers, CFG, img2img, ControlNet, SDXL."""

import pytest
import torch

NODE = "UltraResTiledDiffusion"


def tiled(comfy, model, **kw):
    args = dict(
        method="FSTD",
        tile_width=128,
        tile_height=128,
        overlap=32,
        tile_batch_size=4,
        reset_interval=4,
        seed=0,
    )
    args.update(kw)
    (m,) = comfy.run_node(NODE, model=model, **args)
    return m


def encode(comfy, clip, text):
    return comfy.run_node("CLIPTextEncode", clip=clip, text=text)[0]


def sample(
    comfy, model, clip, latent, steps=3, sampler="euler", scheduler="normal", denoise=1.0, cfg=5.0, pos=None
):
    pos = pos or encode(comfy, clip, "a castle on a hill")
    neg = encode(comfy, clip, "")
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
        latent_image=latent,
        denoise=denoise,
    )
    return out["samples"]


def count_calls(model):
    """Count diffusion-model calls and their input sizes via a wrapper on a clone (ComfyUI API)."""
    import comfy.patcher_extension as pe

    calls = []

    def spy(executor, *args, **kwargs):
        calls.append(tuple(args[0].shape))
        return executor(*args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_spy", spy)
    return m, calls


@pytest.mark.parametrize(
    "sampler,scheduler",
    [("euler", "normal"), ("dpmpp_2m", "karras"), ("heun", "simple"), ("euler_ancestral", "normal")],
)
def test_samples_with_stock_samplers_and_evaluates_only_tiles(comfy, tiny_sd15, sampler, scheduler):
    model, clip, _ = tiny_sd15
    spied, calls = count_calls(tiled(comfy, model, tile_width=128, tile_height=128))
    z = torch.zeros(1, 4, 32, 48)  # 256x384 px -> 2x3 tiles of 16x16 latent
    out = sample(comfy, spied, clip, {"samples": z}, steps=2, sampler=sampler, scheduler=scheduler)
    assert out.shape == z.shape and torch.isfinite(out).all()
    assert calls and all(c[-2:] == (16, 16) for c in calls)  # the model never sees the whole latent


def test_tiling_changes_the_result_but_stays_close_in_statistics(comfy, tiny_sd15):
    model, clip, _ = tiny_sd15
    z = {"samples": torch.zeros(1, 4, 32, 32)}
    plain = sample(comfy, model, clip, z)
    tiles = sample(comfy, tiled(comfy, model), clip, z)
    assert not torch.allclose(plain, tiles)
    assert abs(float(plain.std()) - float(tiles.std())) < 0.5 * float(plain.std())


@pytest.mark.parametrize("denoise,batch", [(1.0, 1), (0.4, 2)])
def test_one_tile_covering_the_image_equals_untiled_sampling(comfy, tiny_sd15, denoise, batch):
    model, clip, _ = tiny_sd15
    z = {"samples": torch.randn(batch, 4, 16, 16, generator=torch.Generator().manual_seed(0))}  # 128 px
    plain = sample(comfy, model, clip, z, denoise=denoise)
    one_tile = sample(comfy, tiled(comfy, model, tile_width=128, tile_height=128), clip, z, denoise=denoise)
    torch.testing.assert_close(one_tile, plain, rtol=1e-4, atol=1e-4)


def test_deterministic_for_a_seed_and_seed_changes_the_grid(comfy, tiny_sd15):
    model, clip, _ = tiny_sd15
    z = {"samples": torch.zeros(1, 4, 24, 40)}
    a = sample(comfy, tiled(comfy, model, seed=1), clip, z, steps=4)
    b = sample(comfy, tiled(comfy, model, seed=1), clip, z, steps=4)
    c = sample(comfy, tiled(comfy, model, seed=2), clip, z, steps=4)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_img2img_denoise_and_batches(comfy, tiny_sd15):
    model, clip, _ = tiny_sd15
    z = torch.randn(2, 4, 24, 24, generator=torch.Generator().manual_seed(0))
    out = sample(
        comfy,
        tiled(comfy, model, method="Mixture of Diffusers", overlap=32),
        clip,
        {"samples": z},
        steps=4,
        denoise=0.4,
    )
    assert out.shape == z.shape and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])  # each batch item keeps its own input


@pytest.mark.parametrize("method", ["FSTD (full coverage)", "MultiDiffusion", "SpotDiffusion"])
def test_other_methods_sample(comfy, tiny_sd15, method):
    model, clip, _ = tiny_sd15
    out = sample(
        comfy, tiled(comfy, model, method=method), clip, {"samples": torch.zeros(1, 4, 24, 40)}, steps=2
    )
    assert torch.isfinite(out).all()


def test_sdxl_family(comfy, tiny_sdxl):
    model, clip, _ = tiny_sdxl
    spied, calls = count_calls(tiled(comfy, model, tile_width=256, tile_height=256))
    out = sample(comfy, spied, clip, {"samples": torch.zeros(1, 4, 32, 64)}, steps=2)
    assert torch.isfinite(out).all() and all(c[-2:] == (32, 32) for c in calls)


def test_controlnet_tile_copies_keep_pre_run_state_and_get_the_prepared_hint_cropped(comfy, tiny_sd15):
    """A real comfy.controlnet.ControlNet after pre_run: each tile copy carries the model sampling
    pre_run set (the copies ComfyUI's .copy() makes do not: every real ControlNet crashed), receives
    exactly the crop of the hint the untiled ControlNet prepares for the whole latent, and one copy
    serves every cond group of a call (so ComfyUI still batches cond and uncond)."""
    import copy
    import sys

    from ultrares.kernels.tiling import Tile
    from ultrares.nodes.tiled_diffusion import _TileConds

    sys.path.insert(0, "tests/comfy_packs/ultrares_testing")
    import tiny_models

    model = tiny_sd15[0].model
    hint = torch.rand(1, 3, 200, 300, generator=torch.Generator().manual_seed(0))
    control = tiny_models.build_controlnet("sd15").copy().set_cond_hint(hint, 0.8)
    control.pre_run(model, lambda p: model.model_sampling.percent_to_sigma(p))
    x = torch.randn(1, 4, 32, 48, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([3.0])
    cond = {"c_crossattn": torch.randn(1, 77, 64)}
    untiled = copy.copy(control)
    untiled.get_control(x, sigma, cond, 1, {})  # prepares untiled.cond_hint for the whole latent
    tiles = [Tile(0, 16, 16, 16), Tile(16, 0, 16, 16)]
    made = {}
    tiled = _TileConds().crop_control(control, tiles, 1, x, made)
    assert _TileConds().crop_control(control, tiles, 1, x, made) is tiled  # one copy per call
    assert tiled.model_sampling_current is control.model_sampling_current is not None
    assert tiled.timestep_range == control.timestep_range
    full = untiled.cond_hint
    expected = torch.cat([full[..., 0:128, 128:256], full[..., 128:256, 0:128]])
    torch.testing.assert_close(tiled.cond_hint, expected)
    tiles_x = torch.cat([x[..., 0:16, 16:32], x[..., 16:32, 0:16]])
    out = tiled.get_control(
        tiles_x, sigma.repeat(2), {"c_crossattn": cond["c_crossattn"].repeat(2, 1, 1)}, 1, {}
    )
    assert out["output"] and all(torch.isfinite(t).all() for t in out["output"] if t is not None)
    torch.testing.assert_close(tiled.cond_hint, expected)  # used as prepared, not rebuilt from pixels


def test_bad_inputs_fail_before_sampling(comfy, tiny_sd15):
    assert "multiple of 8" in comfy.validate(NODE, tile_width=500, tile_height=512, overlap=0, method="FSTD")
    assert "minimum" in comfy.validate(NODE, tile_width=512, tile_height=32, overlap=0, method="FSTD")
    assert "overlap" in comfy.validate(
        NODE, tile_width=128, tile_height=128, overlap=128, method="MultiDiffusion"
    )
    assert "method" in comfy.validate(NODE, tile_width=128, tile_height=128, overlap=0, method="Nope")
    assert comfy.validate(NODE, tile_width=512, tile_height=512, overlap=64, method="FSTD") is True
    model, clip, _ = tiny_sd15
    with pytest.raises(ValueError, match="video latent"):
        sample(comfy, tiled(comfy, model), clip, {"samples": torch.zeros(1, 4, 2, 16, 16)})


def test_interrupt_between_tile_batches(comfy, tiny_sd15):
    import comfy.model_management as mm

    model, clip, _ = tiny_sd15
    spied, calls = count_calls(tiled(comfy, model, tile_batch_size=1))
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            sample(comfy, spied, clip, {"samples": torch.zeros(1, 4, 32, 32)})
    finally:
        mm.interrupt_current_processing(False)
    assert len(calls) == 0  # stopped before the first tile


def test_any_size_plan_reads_the_model_family(comfy, tiny_sd15, tiny_sdxl):
    w, h, up, tw, th, summary, *_ = comfy.run_node(
        "UltraResAnySizePlan", target_width=2048, target_height=1024, native_size=0, model=tiny_sd15[0]
    )
    assert (w, h) == (704, 384) and (tw, th) == (2048, 1024) and up == pytest.approx(2048 / 704)
    assert "SD15" in summary
    w, h, *_ = comfy.run_node(
        "UltraResAnySizePlan", target_width=4096, target_height=2048, native_size=0, model=tiny_sdxl[0]
    )
    assert (w, h) == (1472, 704)
    with pytest.raises(ValueError, match="native size"):
        comfy.run_node("UltraResAnySizePlan", target_width=2048, target_height=2048, native_size=0)


def test_any_size_plan_reads_a_declared_native_size_in_any_form(comfy):
    """A model may declare ``native_size`` on its config (or its base model) as a side or an
    (height, width) pair; anything unusable falls back to the table by config class name."""
    import sys
    from types import SimpleNamespace

    mod = sys.modules[comfy.node_class("UltraResAnySizePlan").__module__]

    def model(size, on_config=True):
        config = SimpleNamespace(native_size=size) if on_config else SimpleNamespace()
        base = (
            SimpleNamespace(model_config=config)
            if on_config
            else SimpleNamespace(model_config=config, native_size=size)
        )
        return SimpleNamespace(model=base)

    assert mod.native_pixels(model(256)) == (256 * 256, "model config")
    assert mod.native_pixels(model((64, 128))) == (64 * 128, "model config")
    assert mod.native_pixels(model([96, 96], on_config=False)) == (96 * 96, "model config")
    for unusable in (None, 0, -64, "big", (64,), (0, 64), True):
        pixels, source = mod.native_pixels(model(unusable))
        assert pixels == 512 * 512 and "assumed 512x512" in source, unusable
    w, h, *_, summary = comfy.run_node(
        "UltraResAnySizePlan", target_width=2048, target_height=1024, native_size=0, model=model((256, 512))
    )[:6]
    assert (w, h) == (512, 256) and "from model config" in summary


@pytest.mark.parametrize("target", [(1920, 1080), (2560, 1080), (1080, 1920), (1024, 1024)])
def test_any_size_graph_ends_at_exactly_the_requested_pixels(comfy, tiny_sd15, target):
    """The fstd_any_size chain (plan -> latent -> LatentUpscale -> LatentCrop) with the stock nodes:
    16:9, 21:9, 9:16 and 1:1 end at exactly the target's latent size."""
    tw, th = target
    w, h, up, _, _, summary, sw, sh, x, y = comfy.run_node(
        "UltraResAnySizePlan", target_width=tw, target_height=th, native_size=0, model=tiny_sd15[0]
    )
    (first,) = comfy.run_node("EmptyLatentImage", width=w, height=h, batch_size=1)
    (up_latent,) = comfy.run_node(
        "LatentUpscale", samples=first, upscale_method="bislerp", width=sw, height=sh, crop="disabled"
    )
    (cropped,) = comfy.run_node("LatentCrop", samples=up_latent, width=tw, height=th, x=x, y=y)
    assert tuple(cropped["samples"].shape[-2:]) == (th // 8, tw // 8)
    assert "crop" in summary or (sw, sh) == (tw, th)
    assert "multiple of 8" in comfy.validate(
        "UltraResAnySizePlan", target_width=1921, target_height=1080, native_size=0
    )


def test_a_run_that_cannot_fit_is_refused_before_the_first_model_call_with_a_tile_batch_that_fits(
    comfy, tiny_sd15
):
    """8192x8192 px in 4096 px tiles, 64 per call: ComfyUI's own activation estimate for that tile
    batch is far beyond this machine; the run stops before any model call and names a batch size."""
    model, clip, _ = tiny_sd15
    spied, calls = count_calls(tiled(comfy, model, tile_width=4096, tile_height=4096, tile_batch_size=64))
    with pytest.raises(
        ValueError, match=r"needs at least .* GiB.*set tile_batch_size to \d+ or less|use smaller tiles"
    ):
        sample(comfy, spied, clip, {"samples": torch.zeros(1, 4, 1024, 1024)}, steps=1)
    assert calls == []


def test_a_nested_run_with_the_same_patch_neither_tiles_nor_clears_the_outer_run(comfy, tiny_sd15, tiny_sdxl):
    """The per-run state lives in the guider's model options, not on the patch object every clone
    shares: a second sampling run started from inside the first (from a model wrapper), through the
    very same patch functions on another model and latent, gets its own state, and the outer run
    still tiles every step afterwards. (ComfyUI itself cannot nest two runs of one BaseModel.)"""
    import comfy.patcher_extension as pe

    model, clip, _ = tiny_sd15
    patched = tiled(comfy, model, tile_width=128, tile_height=128)
    other = tiny_sdxl[0].clone()  # the same patch functions (and so the same patch object) on SDXL
    for kind in (pe.WrappersMP.OUTER_SAMPLE, pe.WrappersMP.CALC_COND_BATCH):
        for key, fns in patched.wrappers[kind].items():
            for fn in fns:
                other.add_wrapper_with_key(kind, key, fn)
    xl_clip = tiny_sdxl[1]
    outer_shapes, nested = [], []

    def wrapper(executor, *args, **kwargs):
        outer_shapes.append(tuple(args[0].shape[-2:]))
        if not nested:  # once, in the outer run's first step: a whole nested run, 256x384 px
            nested.append(sample(comfy, other, xl_clip, {"samples": torch.zeros(1, 4, 32, 48)}, steps=2))
        return executor(*args, **kwargs)

    spied = patched.clone()
    spied.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "nested_test", wrapper)
    out = sample(comfy, spied, clip, {"samples": torch.zeros(1, 4, 32, 48)}, steps=3)
    assert nested and torch.isfinite(nested[0]).all() and torch.isfinite(out).all()
    assert len(outer_shapes) > 3 and all(s == (16, 16) for s in outer_shapes)  # tiled before and after
