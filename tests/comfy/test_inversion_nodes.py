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


def test_domain_score_node_report_plot_and_saved_reference(comfy, tmp_path):
    ref, in_dom, out_dom = _set(0, 0.0, 24), _set(1, 0.0, 6), _set(2, 0.6, 6)
    test = {"samples": torch.cat([in_dom["samples"], out_dom["samples"]])}
    saved = str(tmp_path / "emoji_ref")
    report, plot = comfy.run_node(
        "UltraResDomainScore", latents=test, percentile=95.0, reference=ref, save_reference_as=saved
    )
    lines = report.splitlines()
    verdicts = [ln.split()[-1] for ln in lines if ln[:5].strip().isdigit()]
    assert verdicts[6:] == ["out-of-domain"] * 6
    assert verdicts[:6].count("in-domain") >= 4
    assert plot.shape == (1, 320, 640, 3) and 0.0 <= float(plot.min()) and float(plot.max()) <= 1.0
    again, _ = comfy.run_node("UltraResDomainScore", latents=test, percentile=95.0, reference_file=saved)
    assert again == report
    with pytest.raises(ValueError, match="reference"):
        comfy.run_node("UltraResDomainScore", latents=test, percentile=95.0)
    with pytest.raises(ValueError, match="differ in shape"):
        comfy.run_node(
            "UltraResDomainScore",
            latents=_set(3, 0.0, 2) | {"samples": torch.zeros(2, 4, 8, 16)},
            percentile=95.0,
            reference=ref,
        )


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

HDIT_FILE = "ultrares-emoji64.safetensors"
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
