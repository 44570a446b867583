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


def ksampler(comfy, model, pos, neg, latent, steps=1, cfg=1.0, sampler="euler", scheduler="simple", **kw):
    """The stock KSampler (seed 3, denoise 1 unless given): the sampled latent tensor."""
    args = {"seed": 3, "denoise": 1.0, **kw}
    (out,) = comfy.run_node(
        "KSampler",
        model=model,
        steps=steps,
        cfg=cfg,
        sampler_name=sampler,
        scheduler=scheduler,
        positive=pos,
        negative=neg,
        latent_image=latent,
        **args,
    )
    return out["samples"]


def sample(comfy, model, clip, latent, steps=3, scheduler="normal", cfg=5.0, pos=None, **kw):
    """An SD prompt (a castle; empty negative), 3 euler steps at cfg 5 unless given."""
    pos = pos or encode(comfy, clip, "a castle on a hill")
    return ksampler(comfy, model, pos, encode(comfy, clip, ""), latent, steps, cfg, scheduler=scheduler, **kw)


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


def test_tiled_diffusion_changes_the_result_but_stays_close_in_statistics(comfy, tiny_sd15):
    """FSTD in 2x2 tiles changes the sample (the patch acts) but keeps it: each channel's spread within
    10 % of the untiled sample's (measured 2-4 %; strips left without a prediction: 17-20 %; a blend
    30 % too strong: 120 %), and the tiled sample far closer to the untiled one from the same noise
    than an untiled sample from other noise is (measured 0.42 of that distance; tile predictions
    blended at each other's places: 1.0)."""
    model, clip, _ = tiny_sd15
    z = {"samples": torch.zeros(1, 4, 32, 32)}
    plain = sample(comfy, model, clip, z)
    tiles = sample(comfy, tiled(comfy, model), clip, z)
    assert not torch.allclose(plain, tiles)
    spread = (plain.std(dim=(0, 2, 3)), tiles.std(dim=(0, 2, 3)))
    assert ((spread[1] - spread[0]).abs() < 0.1 * spread[0]).all(), spread
    other_noise = sample(comfy, model, clip, z, seed=4)
    distance = (
        float((tiles - plain).pow(2).mean().sqrt()),
        float((other_noise - plain).pow(2).mean().sqrt()),
    )
    assert distance[0] < 0.6 * distance[1], distance


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


def tile_recorder():
    """The test pack's tile recorder module (tests/comfy_packs/ultrares_testing/tile_recorder.py)."""
    import sys

    sys.path.insert(0, "tests/comfy_packs/ultrares_testing")
    import tile_recorder

    return tile_recorder


def direct_blend(latent_hw, boxes, outputs, weighting):
    """The blend written out: each tile's output [B, C, h, w] placed at its box (y, x, h, w), wrapping
    around the latent's edges (a rolled grid), weighted by the kernel's blend weights, divided by the
    summed weights."""
    from ultrares.kernels.tiled_diffusion import blend_weights

    H, W = latent_hw
    acc, total = 0.0, torch.zeros(H, W)
    for (y, x, h, w), out in zip(boxes, outputs):
        rows, cols = (torch.arange(y, y + h) % H)[:, None], (torch.arange(x, x + w) % W)[None, :]
        weight = blend_weights(h, w, weighting)
        placed = torch.zeros(*out.shape[:-2], H, W)
        placed[..., rows, cols] = out.float() * weight
        acc = acc + placed
        total[rows, cols] += weight
    assert (total > 0).all()  # these methods cover every latent pixel
    return acc / total


@pytest.mark.parametrize(
    "method,weighting",
    [("FSTD (full coverage)", "gaussian"), ("MultiDiffusion", "uniform"), ("SpotDiffusion", "gaussian")],
)
def test_other_methods_give_the_model_their_plans_tiles_and_blend_what_it_returns(
    comfy, tiny_sd15, method, weighting
):
    """In every model evaluation the model receives exactly the tiles of the method's kernel plan for
    that step (found by their values in the latent: placement, size, tile batches, SpotDiffusion's
    circular shift), and the sampler gets back their blend: the method's weights (uniform for
    MultiDiffusion, Gaussian otherwise) over what the model returned, written out directly here. The
    result differs from untiled sampling."""
    from ultrares.kernels.tiled_diffusion import TiledRun, TileSettings

    recorder = tile_recorder().TileRecorder()
    model, clip, _ = tiny_sd15
    z = {"samples": torch.zeros(1, 4, 24, 40)}  # 192x320 px in 128 px tiles
    patched = tiled(comfy, recorder.attach(model), method=method)  # the recorder outside the tiled patch
    out = sample(comfy, patched, clip, z, steps=2, cfg=1.0)
    assert not torch.allclose(out, sample(comfy, model, clip, z, steps=2, cfg=1.0), atol=1e-3)
    settings = TileSettings.from_label(method, tile_width=128, tile_height=128, overlap=32, seed=0)
    planner = TiledRun(settings, 24, 40, ratio=8).planner
    assert len(recorder.evaluations) == 2  # euler, 2 steps, cfg 1: one evaluation per step
    rolled = False
    for step, ev in enumerate(recorder.evaluations):
        plan = planner.plan(step)
        assert plan.weighting == weighting
        (dy, dx), rolled = plan.roll, rolled or plan.roll != (0, 0)
        expected = [((t.y - dy) % 24, (t.x - dx) % 40, t.h, t.w) for t in plan.tiles]
        calls = ev.boxes()
        assert [len(c) for c in calls] == [len(plan.tiles[i : i + 4]) for i in range(0, len(plan.tiles), 4)]
        assert [box for call in calls for box in call] == expected, f"step {step}"
        blended = direct_blend((24, 40), expected, torch.cat(ev.outputs).split(1), weighting)
        torch.testing.assert_close(ev.denoised[0], blended, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ev.denoised[1], torch.zeros_like(blended))  # cfg 1: no uncond
    assert rolled or method != "SpotDiffusion"  # the shift really moves the grid


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

    from ultrares.kernels.tiled_diffusion import Tile
    from ultrares.nodes._tile_conds import TileConds

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
    tiled = TileConds().crop_control(control, tiles, 1, x, made)
    assert TileConds().crop_control(control, tiles, 1, x, made) is tiled  # one copy per call
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


# ------------------------------------------------------------------ the 2026 families (issue 20)
# Tiles are checked in each family's own units: the model's input size in latent pixels times the
# family's pixels per latent pixel (the harness's FAMILY_INFO, which takes it from the version's latent
# format where it states one and from the family's real VAE otherwise) is the tile size asked for.

NEW_FAMILIES = ("flux2", "qwen_image", "zimage", "chroma", "chroma_radiance", "hidream", "hunyuan_image21")


def family_or_skip(family):
    """(tiny_models, FAMILY_INFO[family]); skips when the running ComfyUI has no such family."""
    import comfyui_version
    from harness.boot import tiny_models_module

    tm = tiny_models_module()
    if family not in tm.FAMILIES:
        pytest.skip(f"{family} is not in ComfyUI {comfyui_version.__version__}")
    return tm, tm.FAMILY_INFO[family]


def tile_px_for(ratio):
    """A tile of 8 latent pixels (64 px in pixel space: the node's smallest tile)."""
    return max(64, 8 * ratio)


def record_model_inputs(model):
    """A clone whose model calls (``BaseModel.apply_model``, through ComfyUI's APPLY_MODEL wrapper) are
    recorded: (input shape, {c_concat and the model's keyword conds}, input) per call."""
    import comfy.patcher_extension as pe

    calls = []

    def spy(executor, x, t, c_concat=None, *args, **kwargs):
        calls.append((tuple(x.shape), {"c_concat": c_concat, **kwargs}, x.detach().clone()))
        return executor(x, t, c_concat, *args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test_spy", spy)
    return m, calls


def ksample_family(comfy, tm, family, model, latent, pos=None, steps=1, cfg=1.0):
    pos = pos or tm.family_conditioning(family, 1, seed=1)
    return ksampler(comfy, model, pos, tm.family_conditioning(family, 1, seed=2), latent, steps, cfg)


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_every_family_is_tiled_at_the_requested_pixels(comfy, family):
    """2x3 tiles of the requested pixel size reach the model on every family: 16x (Flux.2) and 32x
    (HunyuanImage 2.1) latents and pixel space (Chroma Radiance) included, and Qwen-Image's
    [B, C, 1, H, W] latents keep their frame axis in every tile."""
    from ultrares.nodes._common import latent_downscale_ratio

    tm, info = family_or_skip(family)
    model = tm.build(family)[0]
    ratio = info["pixels_per_latent"]
    assert latent_downscale_ratio(model) == ratio
    tile = tile_px_for(ratio)
    spied, calls = record_model_inputs(
        tiled(comfy, model, tile_width=tile, tile_height=tile, tile_batch_size=2)
    )
    shape = tm.latent_shape(family, 1, 2 * tile, 3 * tile)
    out = ksample_family(comfy, tm, family, spied, {"samples": torch.zeros(shape)})
    assert out.shape == shape and torch.isfinite(out).all()
    # one step at cfg 1 on FSTD's unshifted first grid: 6 tiles, 2 per call
    assert [c[0][0] for c in calls] == [2, 2, 2]
    for s, _, _ in calls:
        assert (s[-2] * ratio, s[-1] * ratio) == (tile, tile), f"{family}: model got {s}, ratio {ratio}"
        assert len(s) == info["latent_ndim"]
        if len(s) == 5:
            assert s[2] == 1  # the frame axis is handed on intact


def test_a_real_video_latent_is_refused_by_frame_count(comfy):
    tm, _ = family_or_skip("qwen_image")
    model = tm.build("qwen_image")[0]
    with pytest.raises(ValueError, match="video latent of 3 frames"):
        ksample_family(
            comfy, tm, "qwen_image", tiled(comfy, model), {"samples": torch.zeros(1, 16, 3, 32, 32)}
        )


@pytest.mark.parametrize("family", ["flux", "qwen_image"])
def test_reference_latents_reach_every_tile_whole(comfy, family):
    """FLUX.1 Kontext / Qwen-Image-Edit: a reference latent added with the stock ReferenceLatent node is
    never cut into tiles: every tile's model call receives the whole reference (repeated to the call's
    tile batch), next to a tile-sized input."""
    tm, info = family_or_skip(family)
    model = tm.build(family)[0]
    ratio = info["pixels_per_latent"]
    ref = torch.randn(tm.latent_shape(family, 1, 192, 128), generator=torch.Generator().manual_seed(4))
    (pos,) = comfy.run_node(
        "ReferenceLatent", conditioning=tm.family_conditioning(family, 1, seed=1), latent={"samples": ref}
    )
    spied, calls = record_model_inputs(tiled(comfy, model, tile_width=64, tile_height=64, tile_batch_size=2))
    out = ksample_family(
        comfy, tm, family, spied, {"samples": torch.zeros(tm.latent_shape(family, 1, 128, 192))}, pos=pos
    )
    assert torch.isfinite(out).all() and len(calls) == 3
    for s, kwargs, _ in calls:
        assert (s[-2] * ratio, s[-1] * ratio) == (64, 64)
        refs = kwargs.get("ref_latents")
        assert refs is not None and len(refs) == 1
        assert refs[0].shape[0] == s[0] and tuple(refs[0].shape[-2:]) == tuple(ref.shape[-2:])  # whole


def test_flux_fill_inpaint_concat_is_cropped_with_its_tile(comfy):
    """Flux Fill: InpaintModelConditioning's mask + masked-image concat reaches each tile cropped to that
    tile's box. The mask encodes each pixel's position, so the packed mask channels a call receives
    tell which box they were cut from; it must be the box of the tile the call evaluates."""
    from ultrares.kernels.tiled_diffusion import TilePlanner

    tm, _ = family_or_skip("flux_fill")
    model, clip, vae = tm.build("flux_fill")
    h, w = 128, 192
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    mask = ((ys * w + xs).float() / (h * w)).unsqueeze(0)  # unique per pixel, in [0, 1)
    pixels = torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(5))
    pos, neg, lat = comfy.run_node(
        "InpaintModelConditioning",
        positive=tm.family_conditioning("flux_fill", 1, seed=1),
        negative=tm.family_conditioning("flux_fill", 1, seed=2),
        vae=vae,
        pixels=pixels,
        mask=mask,
        noise_mask=False,
    )
    spied, calls = record_model_inputs(
        tiled(
            comfy,
            model,
            method="MultiDiffusion",
            tile_width=64,
            tile_height=64,
            overlap=16,
            tile_batch_size=1,
        )
    )
    out = ksampler(comfy, spied, pos, neg, lat)
    assert torch.isfinite(out).all()
    plan = TilePlanner("multidiffusion", h // 8, w // 8, 8, 8, overlap=2).plan(0)
    assert len(calls) == len(plan.tiles) > 1
    for tile, (s, kwargs, _) in zip(plan.tiles, calls):
        concat = kwargs["c_concat"]
        assert s[-2:] == (8, 8) and tuple(concat.shape) == (1, 16 + 64, 8, 8)  # masked image + packed mask
        first = float(concat[0, 16, 0, 0])  # packed mask channel 0 at the tile's first latent pixel
        at = round(first * h * w)
        assert (at // w, at % w) == (tile.y * 8, tile.x * 8), f"concat cut at {divmod(at, w)}, tile {tile}"


def _flux_instantx_graph(comfy):
    """(model, vae, control, positive, negative): the tiny Flux with an InstantX ControlNet applied by
    the stock ControlNetApplyAdvanced, its hint a 128x192 px image VAE-encoded by the control."""
    tm, _ = family_or_skip("flux")
    model, _, vae = tm.build("flux")
    control = tm.build_flux_controlnet("instantx")
    pos, neg = comfy.run_node(
        "ControlNetApplyAdvanced",
        positive=tm.family_conditioning("flux", 1, seed=1),
        negative=tm.family_conditioning("flux", 1, seed=2),
        control_net=control,
        image=torch.rand(1, 128, 192, 3, generator=torch.Generator().manual_seed(6)),
        strength=1.0,
        start_percent=0.0,
        end_percent=1.0,
        vae=vae,
    )
    return model, vae, control, pos, neg


def test_flux_controlnet_vae_hint_is_encoded_once_per_run_and_cropped_per_tile(comfy, monkeypatch):
    """A Flux ControlNet whose hint is VAE-encoded (InstantX, stock ControlNetApplyAdvanced with a VAE):
    the hint image is encoded once for the whole run (two steps, six tiles), and each tile's control
    call receives exactly that encoding cut to the tile's box."""
    from ultrares.kernels.tiled_diffusion import TilePlanner

    model, vae, control, pos, neg = _flux_instantx_graph(comfy)
    encoded = []
    encode = vae.encode

    def counting_encode(pixels, *args, **kwargs):
        encoded.append(encode(pixels, *args, **kwargs))
        return encoded[-1]

    monkeypatch.setattr(vae, "encode", counting_encode)  # this VAE object only: counts its encodes
    hints = []
    hook = control.control_model.register_forward_pre_hook(
        lambda module, args, kwargs: hints.append(kwargs["hint"].detach().clone()), with_kwargs=True
    )
    try:
        m = tiled(
            comfy,
            model,
            method="MultiDiffusion",
            tile_width=64,
            tile_height=64,
            overlap=16,
            tile_batch_size=1,
        )
        out = ksampler(comfy, m, pos, neg, {"samples": torch.zeros(1, 16, 16, 24)}, steps=2)
    finally:
        hook.remove()
    assert torch.isfinite(out).all()
    assert len(encoded) == 1 and tuple(encoded[0].shape[-2:]) == (16, 24)  # the whole hint, once
    full = control.latent_format.process_in(encoded[0])
    tiles = TilePlanner("multidiffusion", 16, 24, 8, 8, overlap=2).plan(0).tiles
    assert len(hints) == 2 * len(tiles)
    for tile, hint in zip(tiles * 2, hints):
        torch.testing.assert_close(hint, full[(..., *tile.slices())])


def test_the_latent_ratio_table_says_what_newer_comfyui_states(comfy):
    """0.3.75's latent formats state no ratio, so nodes/_common reads it by format class from a table;
    every class of the running ComfyUI that states a ratio must agree with that table (on 0.30 this
    checks the table against ComfyUI itself), and every class the table names exists here."""
    import inspect

    import comfy.latent_formats as lf
    from ultrares.nodes._common import STATED_DOWNSCALE

    assert all(hasattr(lf, name) for name in STATED_DOWNSCALE)
    checked = 0
    for _, cls in inspect.getmembers(lf, inspect.isclass):
        stated = getattr(cls, "spacial_downscale_ratio", None)
        named = [STATED_DOWNSCALE[c.__name__] for c in cls.__mro__ if c.__name__ in STATED_DOWNSCALE]
        if stated is None or not named or cls.__name__ not in STATED_DOWNSCALE and stated == 8:
            continue
        assert named[0] == stated, f"{cls.__name__} states {stated}, the table says {named[0]}"
        checked += 1
    assert checked >= len(STATED_DOWNSCALE) or not hasattr(lf.LatentFormat, "spacial_downscale_ratio")


def test_a_failure_while_the_control_hint_is_prepared_is_not_swallowed(comfy, monkeypatch):
    """The full-size hint is prepared by the control's own get_control, stopped on purpose where it
    first needs the model's sampling; an AttributeError from deeper down (here the model manager while
    the VAE encodes) is a real failure and must surface, not leave a half-made hint (the VAE latent
    without the latent format's scaling) to be cropped into every tile."""
    import comfy.model_management as mm

    model, _, _, pos, neg = _flux_instantx_graph(comfy)

    load = mm.load_models_gpu

    def broken(*args, **kwargs):  # fails only where ControlNet.get_control reloads after encoding
        import sys

        if sys._getframe(1).f_code.co_name == "get_control":
            raise AttributeError("'NoneType' object has no attribute 'model_patches_models'")
        return load(*args, **kwargs)

    monkeypatch.setattr(mm, "load_models_gpu", broken)
    m = tiled(
        comfy, model, method="MultiDiffusion", tile_width=64, tile_height=64, overlap=16, tile_batch_size=1
    )
    with pytest.raises(AttributeError, match="model_patches_models"):
        ksampler(comfy, m, pos, neg, {"samples": torch.zeros(1, 16, 16, 24)})
