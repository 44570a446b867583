"""DDIM inversion nodes on real ComfyUI objects (tiny SD1.5; the embedded HDiT emoji model when present)."""

from __future__ import annotations

import math

import pytest
import torch

LATENT_SHAPE = (1, 4, 8, 8)  # a 64x64 image for the tiny SD1.5


@pytest.fixture(scope="module")
def sd15(comfy, tiny_sd15):
    model, clip, _ = tiny_sd15
    (cond,) = comfy.run_node("CLIPTextEncode", clip=clip, text="")
    return model, cond


@pytest.fixture(scope="module")
def clean_latent():
    return {"samples": torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(0))}


def invert(comfy, model, cond, latent, steps, level=0.5, scheduler="simple", **kw):
    (noise,) = comfy.run_node(
        "UltraResDDIMInvert",
        model=model,
        latent=latent,
        steps=steps,
        level=level,
        scheduler=scheduler,
        positive=cond,
        **kw,
    )
    return noise


def generate(comfy, model, cond, noise, steps, level=0.5, scheduler="simple"):
    (out,) = comfy.run_node(
        "UltraResDDIMGenerate",
        model=model,
        noise=noise,
        steps=steps,
        level=level,
        scheduler=scheduler,
        positive=cond,
    )
    return out


def round_trip_error(comfy, model, cond, latent, steps, **kw) -> float:
    noise = invert(comfy, model, cond, latent, steps, **kw)
    out = generate(comfy, model, cond, noise, steps)
    return float((out["samples"] - latent["samples"]).pow(2).mean().sqrt())


STEPS = (2, 4, 8)


@pytest.fixture(scope="module")
def sd15_errors(comfy, sd15, clean_latent):
    """Round-trip RMS error (latent units) at each of STEPS, level 0.5 (computed once: CPU time is scarce)."""
    model, cond = sd15
    return [round_trip_error(comfy, model, cond, clean_latent, n) for n in STEPS]


def test_round_trip_error_falls_as_steps_grow_tiny_sd15(sd15_errors):
    e = sd15_errors
    print("tiny SD1.5 round-trip RMS error vs steps", dict(zip(STEPS, e)))
    assert e[0] > e[1] > e[2], e
    assert e[2] < 0.7 * e[0], e


def test_noise_latent_reaches_the_top_sigma_and_records_it(comfy, sd15, clean_latent):
    model, cond = sd15
    noise = invert(comfy, model, cond, clean_latent, 1, level=1.0)
    meta = noise["ultrares_inversion"]
    ms = model.get_model_object("model_sampling")
    assert meta["sigma"] == pytest.approx(float(ms.sigma_max), rel=1e-5)
    assert meta["model"] == "SD15" and meta["steps"] == 1
    assert noise["samples"].shape == LATENT_SHAPE
    # at the maximum noise the latent is dominated by noise: its scale (in model space) ~ sigma_max
    scale = model.get_model_object("latent_format").scale_factor
    assert 0.3 * meta["sigma"] < float(noise["samples"].std() * scale) < 3 * meta["sigma"]


def test_generate_equals_comfyui_euler_from_the_same_noise(comfy, sd15, clean_latent):
    """DDIM (eta 0) in sigma space is ComfyUI's euler sampler: KSamplerAdvanced must agree with us."""
    model, cond = sd15
    noise = invert(comfy, model, cond, clean_latent, 3, level=1.0)
    ours = generate(comfy, model, cond, noise, 3, level=1.0)
    (theirs,) = comfy.run_node(
        "KSamplerAdvanced",
        model=model,
        add_noise="disable",
        noise_seed=0,
        steps=3,
        cfg=1.0,
        sampler_name="euler",
        scheduler="simple",
        positive=cond,
        negative=cond,
        latent_image={"samples": noise["samples"]},
        start_at_step=0,
        end_at_step=10000,
        return_with_leftover_noise="disable",
    )
    torch.testing.assert_close(ours["samples"], theirs["samples"], rtol=1e-4, atol=1e-4)


def test_slerp_node(comfy, sd15, clean_latent):
    model, cond = sd15
    a = invert(comfy, model, cond, clean_latent, 1)
    b = {
        "samples": torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(1)) * a["samples"].std()
    }
    (start,) = comfy.run_node("UltraResLatentSlerp", latent_a=a, latent_b=b, t=0.0, count=1, seed=0)
    (end,) = comfy.run_node("UltraResLatentSlerp", latent_a=a, latent_b=b, t=1.0, count=1, seed=0)
    torch.testing.assert_close(start["samples"], a["samples"])
    torch.testing.assert_close(end["samples"], b["samples"])
    assert start["ultrares_inversion"] == a["ultrares_inversion"]
    (path,) = comfy.run_node("UltraResLatentSlerp", latent_a=a, t=1.0, count=5, seed=3)
    assert path["samples"].shape == (5,) + LATENT_SHAPE[1:]
    norms = path["samples"].flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, a["samples"].flatten(1).norm(dim=1).expand(5), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="differ in shape"):
        comfy.run_node(
            "UltraResLatentSlerp",
            latent_a=a,
            latent_b={"samples": torch.zeros(1, 4, 8, 16)},
            t=0.5,
            count=1,
            seed=0,
        )


def _set(seed: int, shift: float, n: int) -> dict:
    return {"samples": shift + torch.randn((n, 4, 8, 8), generator=torch.Generator().manual_seed(seed))}


@pytest.fixture
def output_dir(tmp_path):
    """ComfyUI's output folder pointed at a fresh temp folder (ComfyUI's own setter), restored after."""
    import folder_paths

    old = folder_paths.get_output_directory()
    out = tmp_path / "output"
    out.mkdir()
    folder_paths.set_output_directory(str(out))
    yield out
    folder_paths.set_output_directory(old)


def _score(comfy, test, **kw):
    return comfy.run_node("UltraResDomainScore", latents=test, percentile=95.0, **kw)


def test_domain_score_node_report_plot_accepted_and_saved_reference(comfy, output_dir):
    ref, in_dom, out_dom = _set(0, 0.0, 24), _set(1, 0.0, 6), _set(2, 0.6, 6)
    test = {
        "samples": torch.cat([in_dom["samples"], out_dom["samples"]]),
        "ultrares_inversion": {"sigma": 1.0},
    }
    report, plot, accepted = _score(comfy, test, reference=ref, save_reference_as="emoji_ref")
    lines = report.splitlines()
    verdicts = [ln.split()[-1] for ln in lines if ln[:5].strip().isdigit()]
    assert verdicts[6:] == ["out-of-domain"] * 6
    assert verdicts[:6].count("in-domain") >= 4
    keep = [i for i, v in enumerate(verdicts) if v == "in-domain"]
    torch.testing.assert_close(accepted["samples"], test["samples"][keep])
    assert accepted["ultrares_inversion"] == {"sigma": 1.0}
    assert plot.shape == (1, 320, 640, 3) and 0.0 <= float(plot.min()) and float(plot.max()) <= 1.0
    saved = output_dir / "ultrares" / "emoji_ref.safetensors"
    assert saved.is_file() and [p.name for p in output_dir.rglob("*") if p.is_file()] == [saved.name]
    info = comfy.object_info("UltraResDomainScore")
    assert "emoji_ref.safetensors" in info["input"]["optional"]["reference_file"][1]["options"] or (
        "emoji_ref.safetensors" in info["input"]["optional"]["reference_file"][0]
    )
    again = _score(comfy, test, reference_file="emoji_ref.safetensors")
    assert again[0] == report
    # the node's own file is replaced without `overwrite`
    _score(comfy, test, reference=_set(5, 0.0, 4), save_reference_as="emoji_ref.safetensors")
    import safetensors.torch

    assert safetensors.torch.load_file(str(saved))["latents"].shape[0] == 4
    with pytest.raises(ValueError, match="reference"):
        _score(comfy, test)
    with pytest.raises(ValueError, match="differ in shape"):
        _score(comfy, _set(3, 0.0, 2) | {"samples": torch.zeros(2, 4, 8, 16)}, reference=ref)


def test_domain_score_blocks_downstream_when_nothing_passes(comfy, output_dir):
    from comfy_execution.graph_utils import ExecutionBlocker

    _, _, accepted = _score(comfy, _set(2, 3.0, 4), reference=_set(0, 0.0, 12))
    assert isinstance(accepted, ExecutionBlocker) and "accepted none of the 4" in accepted.message


BAD_NAMES = {
    "absolute": "/tmp/ultrares_pwn",
    "dotdot": "../../../../tmp/ultrares_pwn",
    "nested": "newdir/deeper/x",
    "model": "../models/hdit/victim.safetensors",
    "backslash": "..\\x",
    "nul": "x\x00.safetensors",
    "reserved": "CON",
    "reserved_ext": "com1.safetensors",
    "empty": "   ",
    "drive": "C:x.safetensors",
    "dotfile": ".hidden",
}


@pytest.mark.parametrize("kind", sorted(BAD_NAMES))
def test_domain_score_refuses_unsafe_names_at_queue_time_and_run_time(comfy, output_dir, kind):
    name = BAD_NAMES[kind]
    for field in ("save_reference_as", "reference_file"):
        msg = comfy.validate("UltraResDomainScore", percentile=95.0, **{field: name})
        assert isinstance(msg, str) and msg.startswith(field), msg
        assert str(output_dir) not in msg and "/tmp/" not in msg.replace(name, "")
    with pytest.raises(ValueError, match="save_reference_as"):
        _score(comfy, _set(1, 0.0, 2), reference=_set(0, 0.0, 4), save_reference_as=name)
    assert not any(output_dir.rglob("*")) and not (output_dir.parent / "models").exists()


def test_domain_score_never_overwrites_a_foreign_file_without_overwrite(comfy, output_dir):
    import safetensors.torch

    folder = output_dir / "ultrares"
    folder.mkdir()
    foreign = folder / "someone_else.safetensors"
    safetensors.torch.save_file({"w": torch.ones(3)}, str(foreign))
    before = foreign.read_bytes()
    msg = comfy.validate("UltraResDomainScore", percentile=95.0, save_reference_as="someone_else")
    assert "output/ultrares/someone_else.safetensors already exists" in msg and "overwrite" in msg
    assert str(output_dir) not in msg
    with pytest.raises(ValueError, match="overwrite"):
        _score(comfy, _set(1, 0.0, 2), reference=_set(0, 0.0, 4), save_reference_as="someone_else")
    assert foreign.read_bytes() == before
    assert (
        comfy.validate(
            "UltraResDomainScore", percentile=95.0, save_reference_as="someone_else", overwrite=True
        )
        is True
    )
    _score(
        comfy, _set(1, 0.0, 2), reference=_set(0, 0.0, 4), save_reference_as="someone_else", overwrite=True
    )
    assert safetensors.torch.load_file(str(foreign))["latents"].shape[0] == 4
    # a file that is not a reference is named relative to the ComfyUI folder, without a traceback
    (folder / "not_a_ref.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="output/ultrares/not_a_ref.safetensors is not a reference") as err:
        _score(comfy, _set(1, 0.0, 2), reference_file="not_a_ref.safetensors")
    assert str(output_dir) not in str(err.value)
    # a missing file
    msg = comfy.validate("UltraResDomainScore", percentile=95.0, reference_file="gone.safetensors")
    assert "reference_file='gone.safetensors' is not one of: (none)" in msg and str(output_dir) not in msg


def test_domain_score_refuses_a_link_out_of_its_folder(comfy, output_dir, tmp_path):
    import os

    folder = output_dir / "ultrares"
    folder.mkdir()
    target = tmp_path / "outside.safetensors"
    os.symlink(target, folder / "link.safetensors")
    msg = comfy.validate("UltraResDomainScore", percentile=95.0, save_reference_as="link")
    assert "resolves outside output/ultrares" in msg and str(tmp_path) not in msg
    assert not target.exists()


def _counting(model):
    """A clone whose UNet calls are counted through ComfyUI's own unet-function wrapper."""
    calls = []
    m = model.clone()

    def wrapper(apply, args):
        calls.append(float(args["timestep"].flatten()[0]))
        return apply(args["input"], args["timestep"], **args["c"])

    m.set_model_unet_function_wrapper(wrapper)
    return m, calls


def test_inversion_skips_the_sigma_min_to_sigma_min_move(comfy, sd15, clean_latent):
    """karras ends (..., sigma_min, 0): the first upward move would be sigma_min -> sigma_min, the
    identity, so 3 steps cost 2 UNet calls; simple at level 0.5 ends above sigma_min and costs 3."""
    model, cond = sd15
    counted, calls = _counting(model)
    ms = model.get_model_object("model_sampling")
    invert(comfy, counted, cond, clean_latent, 3, level=1.0, scheduler="karras")
    from comfy.samplers import calculate_sigmas  # (not `import comfy.…`: `comfy` is the fixture here)

    sched = calculate_sigmas(ms, "karras", 3).tolist()  # [max, mid, sigma_min, 0]
    assert sched[-2] == pytest.approx(float(ms.sigma_min), rel=1e-5)
    # one call per move from sigma_min upward; sigma_min is evaluated once (not twice)
    assert calls == pytest.approx(sched[1:-1][::-1], rel=1e-4), (calls, sched)
    calls.clear()
    invert(comfy, counted, cond, clean_latent, 3, level=0.5, scheduler="simple")
    assert len(calls) == 3, calls
    calls.clear()
    generate(
        comfy,
        counted,
        cond,
        invert(comfy, model, cond, clean_latent, 3, level=1.0, scheduler="karras"),
        3,
        level=1.0,
        scheduler="karras",
    )
    assert len(calls) == 3, calls


def test_domain_gaussian_node_fits_the_papers_gaussian_and_samples_deterministically(comfy):
    z = _set(4, 0.3, 6)["samples"] * torch.linspace(0.5, 2.0, 256).view(1, 4, 8, 8)
    latents = {"samples": z, "ultrares_inversion": {"sigma": 14.6}}
    (a,) = comfy.run_node("UltraResDomainGaussian", latents=latents, count=5, seed=7)
    (b,) = comfy.run_node("UltraResDomainGaussian", latents=latents, count=5, seed=7)
    (c,) = comfy.run_node("UltraResDomainGaussian", latents=latents, count=5, seed=8)
    assert a["samples"].shape == (5, 4, 8, 8) and a["ultrares_inversion"] == {"sigma": 14.6}
    torch.testing.assert_close(a["samples"], b["samples"], rtol=0, atol=0)
    assert not torch.allclose(a["samples"], c["samples"])
    # independent statement of the official fit: per-value mean, ONE variance pooled over all values
    flat = z.double().reshape(6, -1)
    mean = flat.mean(0)
    var = ((flat - mean) ** 2).sum() / (5 * flat.shape[1])
    gen = torch.Generator().manual_seed(7)
    expect = mean + var.sqrt() * torch.randn((5, flat.shape[1]), generator=gen, dtype=torch.float64)
    torch.testing.assert_close(a["samples"].double().reshape(5, -1), expect, rtol=1e-5, atol=1e-5)
    (d,) = comfy.run_node("UltraResDomainGaussian", latents=latents, count=5, seed=7, spread="per-dimension")
    gen = torch.Generator().manual_seed(7)
    expect = mean + flat.std(0) * torch.randn((5, flat.shape[1]), generator=gen, dtype=torch.float64)
    torch.testing.assert_close(d["samples"].double().reshape(5, -1), expect, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        comfy.run_node("UltraResDomainGaussian", latents={"samples": z[:1]}, count=2, seed=0)
    assert "spread='wide' is not one of" in comfy.validate("UltraResDomainGaussian", count=2, spread="wide")
    assert comfy.validate("UltraResDomainGaussian", count=2, spread="scalar (paper)") is True


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_float_inputs_refuse_nan_and_inf_at_queue_time(comfy, value):
    msg = comfy.validate("UltraResLatentSlerp", t=value)
    assert isinstance(msg, str) and msg.startswith("t=") and "finite" in msg
    msg = comfy.validate("UltraResDDIMInvert", steps=10, level=0.5, cfg=value)
    assert isinstance(msg, str) and msg.startswith("cfg=") and "finite" in msg
    msg = comfy.validate("UltraResDDIMGenerate", steps=10, level=value, cfg=1.0)
    assert isinstance(msg, str) and msg.startswith("level=")
    msg = comfy.validate("UltraResDomainScore", percentile=value)
    assert isinstance(msg, str) and msg.startswith("percentile=")
    with pytest.raises(ValueError, match="^t="):
        comfy.run_node("UltraResLatentSlerp", latent_a=_set(0, 0.0, 1), t=value, count=1, seed=0)


# ----------------------------------------------------------------------------------- bad input


def test_static_validation_messages(comfy):
    assert "level=0.0" in comfy.validate("UltraResDDIMInvert", steps=10, level=0.0, cfg=1.0)
    assert "level=1.5" in comfy.validate("UltraResDDIMGenerate", steps=10, level=1.5, cfg=1.0)
    assert "steps=0" in comfy.validate("UltraResDDIMInvert", steps=0, level=1.0, cfg=1.0)
    assert comfy.validate("UltraResDDIMInvert", steps=10, level=0.9, cfg=1.0) is True


def test_steps_beyond_the_model_schedule(comfy, sd15, clean_latent):
    model, cond = sd15
    with pytest.raises(ValueError, match=r"steps=900, level=0.5.*1000 discrete levels.*Lower the steps"):
        invert(comfy, model, cond, clean_latent, 900, level=0.5)


def test_generate_rejects_noise_from_another_level_or_model(comfy, sd15, tiny_sdxl, clean_latent):
    model, cond = sd15
    noise = invert(comfy, model, cond, clean_latent, 2, level=0.5)
    with pytest.raises(ValueError, match=r"sits at sigma .*Use the inversion's steps, level and scheduler"):
        generate(comfy, model, cond, noise, 2, level=1.0)
    xl_model, xl_clip, _ = tiny_sdxl
    (xl_cond,) = comfy.run_node("CLIPTextEncode", clip=xl_clip, text="")
    xl_noise = invert(comfy, xl_model, xl_cond, clean_latent, 1, level=0.5)
    with pytest.raises(ValueError, match="inverted with a SDXL model but this model is SD15"):
        generate(comfy, model, cond, xl_noise, 1, level=0.5)
    with pytest.raises(ValueError, match="has 3 channels but this model"):
        generate(comfy, model, cond, {"samples": torch.zeros(1, 3, 8, 8)}, 2)


def test_missing_conditioning_says_what_to_connect(comfy, sd15, clean_latent):
    model, _ = sd15
    with pytest.raises(ValueError, match="Connect a positive conditioning"):
        comfy.run_node(
            "UltraResDDIMInvert", model=model, latent=clean_latent, steps=1, level=0.5, scheduler="simple"
        )
    with pytest.raises(ValueError, match="needs a negative conditioning"):
        comfy.run_node(
            "UltraResDDIMInvert",
            model=model,
            latent=clean_latent,
            steps=1,
            level=0.5,
            scheduler="simple",
            positive=sd15[1],
            cfg=3.0,
        )


def test_schema_has_tooltips_and_descriptions(comfy):
    for node_id in (
        "UltraResDDIMInvert",
        "UltraResDDIMGenerate",
        "UltraResLatentSlerp",
        "UltraResDomainScore",
        "UltraResDomainGaussian",
    ):
        info = comfy.object_info(node_id)
        assert info["description"] and info["display_name"].endswith("(UltraRes)")
        assert info["category"] == "UltraRes/inversion"
        for group in ("required", "optional"):
            for name, spec in info["input"].get(group, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert all(info["output_tooltips"]), node_id


def test_psnr_helper_is_the_textbook_formula():
    from ultrares.kernels.inversion import psnr

    a = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    b = (a + 0.05).clamp(0, 1)
    mse = float((a - b).pow(2).mean())
    assert psnr(a, b) == pytest.approx(10 * math.log10(1 / mse))


# ----------------------------------------------------------------------------------- embedded HDiT

HDIT_FILE = "ultrares-twemoji64.safetensors"
HDIT_STEPS = (3, 8, 24)


def _photos(size: int = 64) -> torch.Tensor:
    """scikit-image's bundled photos (astronaut, coffee, chelsea), centre square, area-resized: [3, size, size, 3]."""
    import skimage.data
    import torch.nn.functional as F

    out = []
    for name in ("astronaut", "coffee", "chelsea"):
        img = torch.from_numpy(getattr(skimage.data, name)()).float() / 255.0
        h, w = img.shape[:2]
        s = min(h, w)
        img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s].permute(2, 0, 1)[None]
        out.append(F.interpolate(img, size=(size, size), mode="area")[0].permute(1, 2, 0))
    return torch.stack(out)


@pytest.fixture(scope="module")
def hdit(comfy):
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "models", "hdit", HDIT_FILE)
    if "UltraResHDiTLoader" not in comfy.nodes or not os.path.exists(path):
        pytest.skip(f"embedded HDiT model models/hdit/{HDIT_FILE} (or UltraResHDiTLoader) not present yet")
    model, vae, _ = comfy.run_node("UltraResHDiTLoader", model_name=HDIT_FILE)
    cond, _ = comfy.run_node("UltraResHDiTClass", class_id=0, unconditional=True)
    return model, vae, cond


def test_out_of_domain_photos_reconstruct_with_the_emoji_hdit(comfy, hdit):
    """Photos the emoji model never saw come back through inversion + generation; PSNR rises with steps."""
    from ultrares.kernels.inversion import psnr

    model, vae, cond = hdit
    images = _photos()
    (lat,) = comfy.run_node("VAEEncode", pixels=images, vae=vae)
    table = []
    for steps in HDIT_STEPS:
        noise = invert(comfy, model, cond, lat, steps, level=1.0, scheduler="karras")
        rec = generate(comfy, model, cond, noise, steps, level=1.0, scheduler="karras")
        (out,) = comfy.run_node("VAEDecode", samples=rec, vae=vae)
        table.append([psnr(o.clamp(0, 1), i) for o, i in zip(out, images)])
    print("emoji HDiT, OOD photo PSNR (astronaut, coffee, chelsea) vs steps:", dict(zip(HDIT_STEPS, table)))
    for k in range(3):
        column = [row[k] for row in table]
        assert column[0] < column[1] < column[2], column
    # each reconstruction is its own photo: much closer to it than to the other two photos
    (out_last,) = comfy.run_node("VAEDecode", samples=rec, vae=vae)
    for i, o in enumerate(out_last.clamp(0, 1)):
        others = [psnr(o, images[j]) for j in range(3) if j != i]
        assert table[-1][i] > max(others) + 1.5, (i, table[-1][i], others)


def test_domain_score_old_workflow_values_still_validate(comfy):
    # before reference_file became a list it was a STRING whose default was "" (= no file)
    assert (
        comfy.validate("UltraResDomainScore", percentile=95.0, reference_file="", save_reference_as="")
        is True
    )


# ----------------------------------------------------------------------------------- rectified flow


@pytest.fixture(scope="module", params=["sd3", "flux"])
def flow_model(request, comfy):
    model, clip, _ = request.getfixturevalue(f"tiny_{request.param}")
    (pos,) = comfy.run_node("CLIPTextEncode", clip=clip, text="a watercolour lighthouse")
    (neg,) = comfy.run_node("CLIPTextEncode", clip=clip, text="")
    if request.param == "flux":
        (pos,) = comfy.run_node("FluxGuidance", conditioning=pos, guidance=3.5)
        (neg,) = comfy.run_node("FluxGuidance", conditioning=neg, guidance=3.5)
    return request.param, model, pos, neg


FLOW_STEPS = (4, 16, 64)
# round-trip RMS at 64 steps, latent of std 1; measured on the tiny models (2026-11-30):
# SD3 0.0081 (cfg 1) / 0.0128 (cfg 2), Flux 0.074 / 0.125 (its tiny random weights move more per step)
FLOW_TOLERANCE = {"sd3": {1.0: 0.02, 2.0: 0.03}, "flux": {1.0: 0.15, 2.0: 0.25}}


def test_flow_models_invert_and_reconstruct(comfy, flow_model):
    """Rectified flow (x = (1 - s) x0 + s eps): invert then generate returns the input latent, ever
    closer as steps grow, at cfg 1 and at cfg 2 (conditioning on the same prompts both ways)."""
    family, model, pos, neg = flow_model
    latent = {"samples": torch.randn((1, 16, 4, 4), generator=torch.Generator().manual_seed(0))}
    ms = model.get_model_object("model_sampling")
    report = {}
    for cfg in (1.0, 2.0):
        errs = []
        for n in FLOW_STEPS:
            kw = dict(level=0.9, scheduler="simple", negative=neg, cfg=cfg)
            noise = invert(comfy, model, pos, latent, n, **kw)
            assert torch.isfinite(noise["samples"]).all()
            (out,) = comfy.run_node(
                "UltraResDDIMGenerate", model=model, noise=noise, steps=n, positive=pos, **kw
            )
            errs.append(float((out["samples"] - latent["samples"]).pow(2).mean().sqrt()))
        report[cfg] = errs
        assert errs[0] > errs[1] > errs[2], (family, cfg, errs)
        assert errs[2] < 0.15 * errs[0], (family, cfg, errs)
        assert errs[2] < FLOW_TOLERANCE[family][cfg], (family, cfg, errs)
    print(family, type(ms).__mro__[1].__name__, "round-trip RMS (latent std 1) vs steps", FLOW_STEPS, report)


def test_flow_level_one_stops_one_level_below_pure_noise(comfy, flow_model):
    """At sigma 1 a flow point is pure noise and ComfyUI's leftover-noise latent x / (1 - sigma) cannot
    hold it: the top becomes the model's last level below 1."""
    family, model, pos, _ = flow_model
    latent = {"samples": torch.randn((1, 16, 4, 4), generator=torch.Generator().manual_seed(1))}
    noise = invert(comfy, model, pos, latent, 2, level=1.0)
    levels = model.get_model_object("model_sampling").sigmas
    assert noise["ultrares_inversion"]["sigma"] == pytest.approx(float(levels[levels < 1].max()), rel=1e-6)
    assert torch.isfinite(noise["samples"]).all()


def test_flow_generate_equals_comfyui_euler(comfy, flow_model):
    """DDIM (eta 0) on the flow ODE is ComfyUI's euler step: the last 3 of 6 steps from our noise latent
    (ComfyUI's leftover-noise convention) must match KSamplerAdvanced started at step 3."""
    family, model, pos, neg = flow_model
    latent = {"samples": torch.randn((1, 16, 4, 4), generator=torch.Generator().manual_seed(2))}
    noise = invert(comfy, model, pos, latent, 3, level=0.5)
    assert noise["ultrares_inversion"]["sigma"] < 0.99
    ours = generate(comfy, model, pos, noise, 3, level=0.5)
    (theirs,) = comfy.run_node(
        "KSamplerAdvanced",
        model=model,
        add_noise="disable",
        noise_seed=0,
        steps=6,
        cfg=1.0,
        sampler_name="euler",
        scheduler="simple",
        positive=pos,
        negative=neg,
        latent_image={"samples": noise["samples"]},
        start_at_step=3,
        end_at_step=10000,
        return_with_leftover_noise="disable",
    )
    torch.testing.assert_close(ours["samples"], theirs["samples"], rtol=1e-4, atol=1e-4)


def test_unsupported_parametrisation_is_refused_naming_it(comfy, sd15, clean_latent):
    model, cond = sd15
    (cosmos,) = comfy.run_node(
        "ModelSamplingContinuousEDM", model=model, sampling="cosmos_rflow", sigma_max=80.0, sigma_min=0.002
    )
    with pytest.raises(ValueError, match="COSMOS_RFLOW parametrisation, which DDIM inversion here does not"):
        invert(comfy, cosmos, cond, clean_latent, 2)
