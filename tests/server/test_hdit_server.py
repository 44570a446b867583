"""HDiT on a real ComfyUI server: an official-layout k-diffusion checkpoint (random weights, written by
the test into the server's models/hdit) loads with strict keys and samples through stock KSampler; the
HDiT workflows run unchanged; broken files fail with a message naming the problem."""

import json

import pytest
from harness.workflows_util import load_api, shrink
from hdit_layout import SMALL, write_official_safetensors

pytestmark = pytest.mark.server


def _prompt(model_name, width=32, height=32, class_id=1, steps=3):
    return {
        "1": {
            "class_type": "UltraResHDiTLoader",
            "inputs": {"model_name": model_name, "weight_dtype": "float32"},
        },
        "2": {"class_type": "UltraResHDiTClass", "inputs": {"class_id": class_id, "unconditional": False}},
        "3": {
            "class_type": "EmptyChromaRadianceLatentImage",
            "inputs": {"width": width, "height": height, "batch_size": 2},
        },
        "4": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "seed": 0,
                "steps": steps,
                "cfg": 2.0,
                "sampler_name": "dpmpp_2m",
                "scheduler": "karras",
                "positive": ["2", 0],
                "negative": ["2", 1],
                "latent_image": ["3", 0],
                "denoise": 1.0,
            },
        },
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 1]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "hdit_test"}},
    }


def test_official_layout_checkpoint_samples_on_server(comfy_server):
    d = comfy_server.models_dir / "hdit"
    d.mkdir(parents=True, exist_ok=True)
    write_official_safetensors(d / "kdiff_official_random.safetensors", SMALL, seed=5)
    run = comfy_server.run_prompt(_prompt("kdiff_official_random.safetensors"), timeout=600)
    images = run.images()
    assert len(images) == 2
    assert comfy_server.view_pil(images[0]).size == (32, 32)
    assert {m for _, m, n in run.progress if n == "4"} == {3}


def test_broken_checkpoints_fail_with_named_problem(comfy_server):
    from harness.server import PromptFailed

    d = comfy_server.models_dir / "hdit"
    d.mkdir(parents=True, exist_ok=True)
    (d / "truncated.safetensors").write_bytes(b'\x20\x00\x00\x00\x00\x00\x00\x00{"a": 1')
    with pytest.raises(PromptFailed, match="truncated.safetensors"):
        comfy_server.run_prompt(_prompt("truncated.safetensors"), timeout=300)
    cfg = json.loads(json.dumps(SMALL))
    cfg["model"]["depths"] = [2, 1, 2]  # the weights have one layer at level 0
    write_official_safetensors(d / "wrong_config.safetensors", SMALL, seed=1)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(d / "wrong_config.safetensors"), "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    save_file(sd, str(d / "wrong_config.safetensors"), metadata={"config": json.dumps(cfg)})
    with pytest.raises(PromptFailed, match="missing keys: .*down_levels.0.1"):
        comfy_server.run_prompt(_prompt("wrong_config.safetensors"), timeout=300)


@pytest.mark.floor
def test_hdit_txt2img_workflow(comfy_server):
    run = comfy_server.run_prompt(load_api("hdit_txt2img"), timeout=900)
    images = run.images()
    assert len(images) == 4
    img = comfy_server.view_pil(images[0]).convert("RGB")
    assert img.size == (64, 64)
    corners = [img.getpixel(p) for p in ((1, 1), (62, 1), (1, 62), (62, 62))]
    assert (
        sum(sum(c) for c in corners) / 12 > 180
    )  # the embedded model draws on a white background (grey = 128 untrained)


@pytest.mark.floor
def test_hdit_tiled_1024_workflow(comfy_server):
    """At 1/4 of its size (256 px, a 4x4 grid of the same 64 px tiles instead of 16x16); the full size
    is validated at queue time in-process (test_workflows_in_sync.py)."""
    prompt = shrink(load_api("hdit_tiled_1024"), 4)
    run = comfy_server.run_prompt(prompt, timeout=1500)
    images = run.images()
    assert len(images) == 1
    assert comfy_server.view_pil(images[0]).size == (256, 256)
    tiled = next(v for v in prompt.values() if v["class_type"] == "UltraResTiledDiffusion")
    assert (tiled["inputs"]["tile_width"], tiled["inputs"]["tile_height"]) == (64, 64)
    ks = next(k for k, v in prompt.items() if v["class_type"] == "KSampler")
    assert {m for _, m, n in run.progress if n == ks} == {prompt[ks]["inputs"]["steps"]}


def test_unknown_model_name_is_a_queue_time_400(comfy_server):
    # ComfyUI 0.3.75 leaves V3 combo values to the node: the loader checks them before anything runs
    status, body = comfy_server.post_prompt(_prompt("not-there.safetensors"))
    assert status == 400, body
    assert "model_name='not-there.safetensors' is not one of" in str(body["node_errors"]["1"]), body


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.makedirs, (self.marker,))


def test_hostile_files_fail_with_plain_messages_on_server(comfy_server, tmp_path):
    """A header-bomb safetensors, a pickle that would run code and a config asking for 2**40-wide layers
    each fail at the loader with a message naming the file relative to models/hdit, what is wrong and
    what to do; no torch/safetensors exception text, no absolute path, nothing unpickled."""
    import struct

    import torch
    from harness.server import PromptFailed

    d = comfy_server.models_dir / "hdit" / "hostile"
    d.mkdir(parents=True, exist_ok=True)
    (d / "bomb.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{}")
    marker = tmp_path / "ran"
    torch.save(
        {"config": SMALL, "model_ema": {"a": torch.zeros(1)}, "x": _RunsCode(str(marker))}, d / "evil.pth"
    )
    cfg = json.loads(json.dumps(SMALL))
    cfg["model"]["d_ffs"] = [2**40, 192, 192]
    write_official_safetensors(d / "huge_dff.safetensors", SMALL, seed=2)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(d / "huge_dff.safetensors"), "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    save_file(sd, str(d / "huge_dff.safetensors"), metadata={"config": json.dumps(cfg)})
    cases = [
        ("hostile/bomb.safetensors", "is not a valid .safetensors file"),
        ("hostile/evil.pth", "holds Python objects other than tensors"),
        ("hostile/huge_dff.safetensors", "1099511627776 is outside the supported range"),
    ]
    for name, expect in cases:
        with pytest.raises(PromptFailed) as e:
            comfy_server.run_prompt(_prompt(name), timeout=300)
        first = str(e.value).splitlines()[0]  # "node 1 (UltraResHDiTLoader) failed: ValueError: <message>"
        assert "(UltraResHDiTLoader) failed" in first and name in first and expect in first, first
        assert str(comfy_server.models_dir) not in first and "weights_only" not in first, first
        assert "HeaderTooLarge" not in first and "Unpickl" not in first, first
    assert not marker.exists()


def test_size_and_class_refused_when_sampling_starts_on_server(comfy_server):
    """ComfyUI's minimum latent (16x16) is refused in pixels, and class_id == num_classes (9 for the
    embedded model) as out of range, by the sampler node before any step runs."""
    from harness.server import PromptFailed

    for kw, expect in (
        ({"width": 16, "height": 16}, "needs images of at least 64x64 px (width x height); got 16x16 px"),
        (
            {"width": 64, "height": 64, "class_id": 9},
            "class_id 9 is out of range for this HDiT, which has 9 classes (ids 0-8)",
        ),
    ):
        with pytest.raises(PromptFailed) as e:
            comfy_server.run_prompt(_prompt("ultrares-emoji64.safetensors", steps=2, **kw), timeout=300)
        first = str(e.value).splitlines()[0]
        assert "(KSampler) failed" in first and expect in first, first
        assert "token" not in first
