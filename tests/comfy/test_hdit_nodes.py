"""HDiT nodes in-process: an official-layout k-diffusion checkpoint loads with strict keys and samples
through ComfyUI's own KSampler; the EDM wiring matches a direct evaluation of the kernel's Denoiser."""

from __future__ import annotations

import json
import os
import uuid

import comfy.sample as comfy_sample
import comfy.samplers as comfy_samplers
import folder_paths
import pytest
import torch
from hdit_layout import SMALL, write_official_safetensors
from ultrares.kernels import hdit as H
from ultrares.kernels import hdit_format, schedules

CFG_64 = {
    "model": {**SMALL["model"], "sigma_min": 0.02, "sigma_max": 60.0, "sigma_data": 0.5},
    "dataset": {"num_classes": 5},
}


@pytest.fixture(scope="module")
def hdit_dir(comfy):
    d = folder_paths.get_folder_paths("hdit")[0]  # ComfyUI's models/hdit (the pack's own folder is second)
    os.makedirs(d, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def official_file(hdit_dir):
    name = f"test_official_{uuid.uuid4().hex[:8]}.safetensors"
    path = os.path.join(hdit_dir, name)
    sd = write_official_safetensors(path, CFG_64, seed=1)
    yield name, path, sd
    os.remove(path)


# k-diffusion's Oxford Flowers HDiT shape (configs/config_oxford_flowers.json): patch 4, 3 levels
OXFORD = {
    "model": {
        "type": "image_transformer_v2",
        "input_channels": 3,
        "input_size": [256, 256],
        "patch_size": [4, 4],
        "depths": [2, 2, 4],
        "widths": [128, 256, 512],
        "self_attns": [
            {"type": "neighborhood", "d_head": 64, "kernel_size": 7},
            {"type": "neighborhood", "d_head": 64, "kernel_size": 7},
            {"type": "global", "d_head": 64},
        ],
        "mapping_width": 256,
        "mapping_depth": 2,
        "sigma_data": 0.5,
    },
}


@pytest.fixture(scope="module")
def oxford_file(hdit_dir):
    name = f"test_oxford_{uuid.uuid4().hex[:8]}.safetensors"
    path = os.path.join(hdit_dir, name)
    write_official_safetensors(path, OXFORD, seed=4)
    yield name
    os.remove(path)


def _reference_denoiser(sd):
    inner = hdit_format.build_model(CFG_64)
    hdit_format.load_state_dict_strict(inner, sd)
    return H.Denoiser(inner.eval(), 0.5)


def test_loader_strict_and_model_sampling(comfy, official_file):
    name, _, sd = official_file
    model, vae, n = comfy.run_node("UltraResHDiTLoader", model_name=name, weight_dtype="float32")
    assert n == 5
    ms = model.get_model_object("model_sampling")
    assert ms.sigma_data == 0.5
    assert float(ms.sigma_min) == pytest.approx(0.02, rel=1e-4) and float(ms.sigma_max) == pytest.approx(
        60.0, rel=1e-4
    )
    inner = model.model.diffusion_model.inner
    for k, v in sd.items():
        torch.testing.assert_close(inner.state_dict()[k], v.float())
    assert model.model.latent_format.latent_channels == 3


@pytest.mark.parametrize("cfg_scale,class_id", [(1.0, 2), (3.0, 4)])
def test_ksampler_matches_direct_euler(comfy, official_file, cfg_scale, class_id):
    name, _, sd = official_file
    model, _, _ = comfy.run_node("UltraResHDiTLoader", model_name=name, weight_dtype="float32")
    pos, neg = comfy.run_node("UltraResHDiTClass", class_id=class_id, unconditional=False)
    (latent,) = comfy.run_node("EmptyChromaRadianceLatentImage", width=32, height=32, batch_size=1)
    steps, seed = 3, 11
    (out,) = comfy.run_node(
        "KSampler",
        model=model,
        seed=seed,
        steps=steps,
        cfg=cfg_scale,
        sampler_name="euler",
        scheduler="karras",
        positive=pos,
        negative=neg,
        latent_image=latent,
        denoise=1.0,
    )
    got = out["samples"]
    assert got.shape == (1, 3, 32, 32) and torch.isfinite(got).all()

    # the same Euler sampling written directly against the kernel (EDM preconditioning, raw sigma)
    den = _reference_denoiser(sd)
    sigmas = comfy_samplers.calculate_sigmas(
        model.get_model_object("model_sampling"), "karras", steps
    ).float()
    noise = comfy_sample.prepare_noise(latent["samples"], seed)
    x = noise * torch.sqrt(1.0 + sigmas[0] ** 2)  # ComfyUI's max_denoise noise scaling
    c = torch.tensor([class_id])
    u = torch.tensor([5])
    with torch.no_grad():
        for i in range(steps):
            d_c = den(x, sigmas[i : i + 1], class_cond=c)
            d = (
                d_c
                if cfg_scale == 1.0
                else den(x, sigmas[i : i + 1], class_cond=u)
                + (d_c - den(x, sigmas[i : i + 1], class_cond=u)) * cfg_scale
            )
            x = x + (x - d) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    torch.testing.assert_close(got, x, atol=2e-4, rtol=1e-3)


def test_class_changes_output_and_uncond(comfy, official_file):
    name = official_file[0]
    model, vae, _ = comfy.run_node("UltraResHDiTLoader", model_name=name, weight_dtype="float32")
    (latent,) = comfy.run_node("EmptyChromaRadianceLatentImage", width=32, height=32, batch_size=1)
    outs = []
    for cid, unc in ((0, False), (3, False), (3, True)):
        pos, neg = comfy.run_node("UltraResHDiTClass", class_id=cid, unconditional=unc)
        (o,) = comfy.run_node(
            "KSampler",
            model=model,
            seed=1,
            steps=2,
            cfg=1.0,
            sampler_name="euler",
            scheduler="karras",
            positive=pos,
            negative=neg,
            latent_image=latent,
            denoise=1.0,
        )
        outs.append(o["samples"])
    assert (outs[0] - outs[1]).abs().max() > 1e-4
    assert (outs[1] - outs[2]).abs().max() > 1e-4
    # VAE output: ComfyUI's pixel-space VAE maps [-1, 1] latents to [0, 1] images
    (img,) = comfy.run_node("VAEDecode", samples={"samples": outs[0]}, vae=vae)
    assert img.shape == (1, 32, 32, 3)
    torch.testing.assert_close(img, ((outs[0].movedim(1, -1) + 1) / 2).clamp(0, 1))


def test_out_of_range_class_and_odd_size(comfy, official_file):
    name = official_file[0]
    model, _, _ = comfy.run_node("UltraResHDiTLoader", model_name=name, weight_dtype="float32")
    pos, neg = comfy.run_node("UltraResHDiTClass", class_id=7, unconditional=False)
    (latent,) = comfy.run_node("EmptyChromaRadianceLatentImage", width=32, height=32, batch_size=1)
    with pytest.raises(ValueError, match="class_id 7 is out of range"):
        comfy.run_node(
            "KSampler",
            model=model,
            seed=1,
            steps=1,
            cfg=1.0,
            sampler_name="euler",
            scheduler="karras",
            positive=pos,
            negative=neg,
            latent_image=latent,
            denoise=1.0,
        )
    # a side that is not a multiple of the patch/window grid (16 here) is padded and cropped back
    pos, neg = comfy.run_node("UltraResHDiTClass", class_id=1, unconditional=False)
    odd = {"samples": torch.zeros(1, 3, 20, 28)}
    (o,) = comfy.run_node(
        "KSampler",
        model=model,
        seed=1,
        steps=1,
        cfg=1.0,
        sampler_name="euler",
        scheduler="karras",
        positive=pos,
        negative=neg,
        latent_image=odd,
        denoise=1.0,
    )
    assert o["samples"].shape == (1, 3, 20, 28) and torch.isfinite(o["samples"]).all()


def test_bad_files_get_clear_errors(comfy, hdit_dir):
    bad = os.path.join(hdit_dir, f"corrupt_{uuid.uuid4().hex[:6]}.safetensors")
    with open(bad, "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    mism = os.path.join(hdit_dir, f"mismatch_{uuid.uuid4().hex[:6]}.safetensors")
    cfg = json.loads(json.dumps(CFG_64))
    write_official_safetensors(mism, cfg, seed=2)
    # same weights, but a config that says the widths are different
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(mism, "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    cfg["model"]["widths"] = [32, 64, 128]
    save_file(sd, mism, metadata={"config": json.dumps(cfg)})
    try:
        with pytest.raises(ValueError, match="is not a valid .safetensors file"):
            comfy.run_node("UltraResHDiTLoader", model_name=os.path.basename(bad), weight_dtype="float32")
        with pytest.raises(ValueError, match="shape mismatches") as e:
            comfy.run_node("UltraResHDiTLoader", model_name=os.path.basename(mism), weight_dtype="float32")
        assert os.path.basename(mism) in str(e.value)
        with pytest.raises(ValueError, match="not in the hdit models folder"):
            comfy.run_node("UltraResHDiTLoader", model_name="nope.safetensors", weight_dtype="float32")
    finally:
        os.remove(bad)
        os.remove(mism)


def test_embedded_model_makes_emoji_on_white(comfy):
    """The shipped weights load from the pack's models/hdit and sample images on the training background."""
    names = folder_paths.get_filename_list("hdit")
    assert "ultrares-emoji64.safetensors" in names
    model, vae, n = comfy.run_node(
        "UltraResHDiTLoader", model_name="ultrares-emoji64.safetensors", weight_dtype="float32"
    )
    assert n == 9
    pos, neg = comfy.run_node("UltraResHDiTClass", class_id=0, unconditional=False)
    (latent,) = comfy.run_node("EmptyChromaRadianceLatentImage", width=64, height=64, batch_size=2)
    (o,) = comfy.run_node(
        "KSampler",
        model=model,
        seed=3,
        steps=10,
        cfg=2.0,
        sampler_name="dpmpp_2m",
        scheduler="karras",
        positive=pos,
        negative=neg,
        latent_image=latent,
        denoise=1.0,
    )
    (img,) = comfy.run_node("VAEDecode", samples=o, vae=vae)
    assert img.shape == (2, 64, 64, 3)
    corners = torch.cat([img[:, :6, :6], img[:, :6, -6:], img[:, -6:, :6], img[:, -6:, -6:]], dim=1)
    assert corners.mean() > 0.7  # white background, as in training (an untrained model gives grey, 0.5)
    assert img[:, 16:48, 16:48].std() > 0.1  # and something drawn in the middle


def _peak_allocated_bytes(fn) -> int:
    """Peak of the CPU allocator's live bytes while ``fn`` runs, from the torch profiler's allocation
    records (every tensor, including temporaries inside ops), relative to the start."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    def walk(nodes):
        for n in nodes:
            yield n
            yield from walk(n.children)

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    totals = [
        n.extra_fields.total_allocated
        for n in walk(prof.profiler.kineto_results.experimental_event_tree())
        if n.tag == _EventType.Allocation
    ]
    assert totals, "the profiler recorded no allocations"
    return max(totals)


@pytest.mark.parametrize(
    "which,dtype,sizes", [("small", "bfloat16", (48, 96)), ("oxford", "float32", (128, 192))]
)
def test_memory_estimate_covers_measured_peak(
    comfy, official_file, oxford_file, monkeypatch, which, dtype, sizes
):
    """ComfyUI plans sampling memory with ``BaseModel.memory_required``: it must cover the real peak of
    a CFG-batch forward (batch 2) and stay within 4x of it, in both of ComfyUI's branches (the flash/
    xformers one taken on NVIDIA, selected here by ComfyUI's own switch, and the CPU one)."""
    import comfy.model_management as mm

    name = official_file[0] if which == "small" else oxford_file
    estimates = {}
    for flash in (False, True):
        monkeypatch.setattr(mm, "pytorch_attention_flash_attention", lambda flash=flash: flash)
        model, _, n = comfy.run_node("UltraResHDiTLoader", model_name=name, weight_dtype=dtype)
        estimates[flash] = [model.model.memory_required([2, 3, s, s]) for s in sizes]
    monkeypatch.undo()
    base = model.model
    torch_dtype = getattr(torch, dtype)
    for i, s in enumerate(sizes):
        x = torch.randn(2, 3, s, s, dtype=torch_dtype)
        kw = {"ultrares_hdit_class": torch.tensor([1, -1])} if n else {}  # a class and the unconditional row
        with torch.no_grad():
            peak = _peak_allocated_bytes(
                lambda x=x, kw=kw: base.apply_model(x, torch.tensor([1.0, 1.0]), **kw)
            )
        for flash in (False, True):
            est = estimates[flash][i]
            assert peak <= est <= 4 * peak, (which, dtype, s, flash, peak, est)
    # the planned memory for a 1024x1024 CFG batch on a GPU is now a few GB (it was ~40-80 GB)
    if which == "oxford":
        gb = estimates[True][0] / sizes[0] ** 2 * 1024 * 1024 / 2**30
        assert 0.5 < gb < 6, gb


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_loader_messages_name_files_relative_to_the_models_folder(comfy, hdit_dir, tmp_path):
    """Files in a subfolder are named as the combo names them ("sub/x.pth"), never by absolute path;
    an unsafe pickle is refused without unpickling and without suggesting weights_only=False."""
    sub = f"sub_{uuid.uuid4().hex[:6]}"
    os.makedirs(os.path.join(hdit_dir, sub))
    evil = os.path.join(hdit_dir, sub, "evil.pth")
    marker = tmp_path / "ran"
    torch.save({"config": CFG_64, "model_ema": {"a": torch.zeros(1)}, "x": _RunsCode(str(marker))}, evil)
    huge = os.path.join(hdit_dir, sub, "huge.safetensors")
    write_official_safetensors(huge, CFG_64, seed=3)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(huge, "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    cfg = json.loads(json.dumps(CFG_64))
    cfg["model"]["d_ffs"] = [2**40, 192, 192]
    save_file(sd, huge, metadata={"config": json.dumps(cfg)})
    try:
        names = folder_paths.get_filename_list("hdit")
        for fname, expect in (
            (f"{sub}/evil.pth", "holds Python objects other than tensors"),
            (f"{sub}/huge.safetensors", r"model.d_ffs\[0\] = 1099511627776 is outside"),
        ):
            assert fname in names
            with pytest.raises(ValueError, match=expect) as e:
                comfy.run_node("UltraResHDiTLoader", model_name=fname, weight_dtype="float32")
            msg = str(e.value)
            assert msg.startswith("UltraResHDiTLoader: ") and fname in msg, msg
            assert hdit_dir not in msg and "weights_only" not in msg and "Error" not in msg, msg
        assert not marker.exists()
    finally:
        for f in (evil, huge):
            os.remove(f)
        os.rmdir(os.path.join(hdit_dir, sub))


def test_class_ids_checked_exactly_when_sampling_starts(comfy, official_file, oxford_file):
    """ids are 0..num_classes-1: class_id == num_classes (the embedding's unconditional row) used to
    sample unconditionally without a word. Refused before the first model call, like ids on an
    unconditional model; 'unconditional' keeps working."""
    model, _, n = comfy.run_node("UltraResHDiTLoader", model_name=official_file[0], weight_dtype="float32")
    assert n == 5
    (latent,) = comfy.run_node("EmptyChromaRadianceLatentImage", width=32, height=32, batch_size=1)
    calls = []
    m = model.clone()
    m.set_model_unet_function_wrapper(lambda f, a: calls.append(1) or f(a["input"], a["timestep"], **a["c"]))

    def sample(mdl, class_id, unconditional=False):
        pos, neg = comfy.run_node("UltraResHDiTClass", class_id=class_id, unconditional=unconditional)
        return comfy.run_node(
            "KSampler",
            model=mdl,
            seed=1,
            steps=1,
            cfg=2.0,
            sampler_name="euler",
            scheduler="karras",
            positive=pos,
            negative=neg,
            latent_image=latent,
            denoise=1.0,
        )

    with pytest.raises(
        ValueError, match=r"class_id 5 is out of range for this HDiT, which has 5 classes \(ids 0-4\)"
    ):
        sample(m, 5)
    assert calls == []
    (o,) = sample(m, 4)
    assert torch.isfinite(o["samples"]).all() and calls
    (o,) = sample(m, 5, unconditional=True)
    assert torch.isfinite(o["samples"]).all()
    uncond_model, _, n0 = comfy.run_node("UltraResHDiTLoader", model_name=oxford_file, weight_dtype="float32")
    assert n0 == 0
    (latent,) = comfy.run_node("EmptyChromaRadianceLatentImage", width=64, height=64, batch_size=1)
    with pytest.raises(ValueError, match="class_id 0 was given, but this HDiT is unconditional"):
        sample(uncond_model, 0)


def test_too_small_images_refused_in_pixels(comfy):
    """ComfyUI's minimum 16x16 is too small for the embedded model's 7x7-token windows at 8 px per
    token: the message says so in pixels, before the first model call."""
    model, _, _ = comfy.run_node(
        "UltraResHDiTLoader", model_name="ultrares-emoji64.safetensors", weight_dtype="float32"
    )
    assert model.model.diffusion_model.inner.min_size() == (64, 64)  # level 1: 7 tokens x 4 px patch x 2
    pos, neg = comfy.run_node("UltraResHDiTClass", class_id=0, unconditional=False)
    calls = []
    m = model.clone()
    m.set_model_unet_function_wrapper(lambda f, a: calls.append(1) or f(a["input"], a["timestep"], **a["c"]))
    for w, h in ((16, 16), (64, 48)):
        (latent,) = comfy.run_node("EmptyChromaRadianceLatentImage", width=w, height=h, batch_size=1)
        with pytest.raises(ValueError) as e:
            comfy.run_node(
                "KSampler",
                model=m,
                seed=1,
                steps=1,
                cfg=1.0,
                sampler_name="euler",
                scheduler="karras",
                positive=pos,
                negative=neg,
                latent_image=latent,
                denoise=1.0,
            )
        msg = str(e.value)
        assert f"needs images of at least 64x64 px (width x height); got {w}x{h} px" in msg, msg
        assert "token" not in msg
    assert calls == []
    # the adapter says the same for a direct (e.g. tiled) call
    with pytest.raises(ValueError, match="got 32x64 px"):
        model.model.diffusion_model(torch.zeros(1, 3, 64, 32), torch.zeros(1))


@pytest.mark.parametrize(
    "inputs,expect",
    [
        ({"class_id": float("nan")}, "class_id=nan is not a finite number"),
        ({"class_id": "three"}, "class_id='three' is not a whole number"),
        ({"class_id": -2}, "class_id=-2 is below the minimum 0"),
        ({"class_id": 10**7}, "class_id=10000000 is above the maximum 1000000"),
    ],
)
def test_class_node_inputs_checked_at_queue_time(comfy, inputs, expect):
    msg = comfy.validate("UltraResHDiTClass", unconditional=False, **inputs)
    assert isinstance(msg, str) and expect in msg, msg
    with pytest.raises(ValueError, match="UltraResHDiTClass: " + expect.replace("(", r"\(")):
        comfy.run_node("UltraResHDiTClass", unconditional=False, **inputs)
    assert comfy.validate("UltraResHDiTClass", class_id=3, unconditional=True) is True
    bad = comfy.validate("UltraResHDiTLoader", model_name="ultrares-emoji64.safetensors", weight_dtype="fp8")
    assert isinstance(bad, str) and "weight_dtype='fp8' is not one of" in bad, bad


def test_any_size_plan_reads_the_hdit_native_size(comfy, oxford_file):
    """Any-Size Plan reads an HDiT's native side from the model: its config's input_size in pixels
    (pixel space), the same plan as typing native_size by hand."""
    model, _, _ = comfy.run_node("UltraResHDiTLoader", model_name=oxford_file, weight_dtype="float32")
    assert model.model.model_config.native_size == 256
    plan = comfy.run_node(
        "UltraResAnySizePlan", target_width=1024, target_height=512, native_size=0, model=model
    )
    by_hand = comfy.run_node("UltraResAnySizePlan", target_width=1024, target_height=512, native_size=256)
    assert "model config" in plan[5], plan[5]
    assert plan[:5] == by_hand[:5] and plan[6:] == by_hand[6:]


def test_karras_k_diffusion_convention_is_comfys_karras_scheduler(comfy):
    """``convention="k-diffusion"`` is ComfyUI's (k-diffusion's) karras grid bit for bit."""
    from comfy.k_diffusion.sampling import get_sigmas_karras

    for n in (1, 2, 7, 30, 1000):
        for lo, hi in ((0.02, 60.0), (0.0291675, 14.614642)):
            want = get_sigmas_karras(n, lo, hi)
            got = schedules.karras_sigmas(n, lo, hi, convention="k-diffusion")
            assert got.dtype == want.dtype and torch.equal(got, want), (n, lo, hi)
