"""The committed DDIM inversion workflows on a real ComfyUI server: an out-of-domain photo (scikit-image's
astronaut) is inverted into the embedded emoji HDiT's noise space and generated back; the unseen-domain
loop (invert a few images, fit, sample, generate) runs on the tiny SD1.5; a level outside the schedule
is a queue-time 400; UltraResDomainScore refuses every file name that would leave output/ultrares/."""

from __future__ import annotations

import copy
import math
import os
import uuid

import numpy as np
import pytest
from harness.workflows_util import load_api, output_nodes

pytestmark = pytest.mark.server

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HDIT = os.path.join(ROOT, "models", "hdit", "ultrares-twemoji64.safetensors")


def _node(prompt: dict, class_type: str) -> str:
    return next(k for k, n in prompt.items() if n["class_type"] == class_type)


@pytest.mark.floor
def test_inversion_reconstruct_workflow(comfy_server):
    if not os.path.exists(HDIT):
        pytest.skip(f"embedded HDiT model not present yet ({HDIT}); it is trained by the HDiT recipe")
    import skimage.data
    from PIL import Image

    prompt = load_api("inversion_reconstruct")
    name = prompt[_node(prompt, "LoadImage")]["inputs"]["image"]
    Image.fromarray(skimage.data.astronaut()).save(comfy_server.input_dir / name)
    outputs = comfy_server.run_prompt(prompt, timeout=600).outputs
    saved = {}
    for node_id in output_nodes(prompt):
        prefix = prompt[node_id]["inputs"]["filename_prefix"].split("/")[-1]
        (img,) = outputs[node_id]["images"]
        saved[prefix] = np.asarray(comfy_server.view_pil(img).convert("RGB"), dtype=np.float64) / 255
    rec, seen = saved["inversion_reconstruction"], saved["inversion_input"]
    assert rec.shape == seen.shape == (64, 64, 3)
    psnr = 10 * math.log10(1.0 / np.mean((rec - seen) ** 2))
    baseline = 10 * math.log10(1.0 / np.mean((seen - seen.mean((0, 1))) ** 2))  # the photo's mean colour
    print(
        f"astronaut 64x64 reconstruction through the emoji HDiT: PSNR {psnr:.2f} dB (mean-colour {baseline:.2f} dB)"
    )
    assert psnr > baseline + 5.0, (psnr, baseline)


def test_level_outside_the_schedule_is_rejected_at_queue_time(comfy_server):
    prompt = copy.deepcopy(load_api("inversion_reconstruct"))
    inv = _node(prompt, "UltraResDDIMInvert")
    prompt[inv]["inputs"]["level"] = 1.5
    status, body = comfy_server.post_prompt(prompt)
    # ComfyUI answers 400 only when no output can run; here the input's SaveImage still can (200),
    # but the invert node is reported and every output downstream of it is dropped.
    assert status in (200, 400), body
    errors = body["node_errors"][inv]
    assert "level=1.5" in str(errors["errors"])
    saves = output_nodes(prompt)
    downstream = [n for n in saves if prompt[n]["inputs"]["filename_prefix"].endswith("reconstruction")]
    assert set(downstream) <= set(errors["dependent_outputs"])
    # a scheduler name ComfyUI does not know is refused the same way (V3 combos are not checked by 0.3.75)
    prompt[inv]["inputs"]["level"] = 0.9
    prompt[inv]["inputs"]["scheduler"] = "linear_quadratic_typo"
    status, body = comfy_server.post_prompt(prompt)
    assert "scheduler='linear_quadratic_typo' is not one of" in str(body["node_errors"][inv]["errors"]), body


# ------------------------------------------------------------------------------ unseen-domain loop


def _domain_images(n: int = 4, size: int = 96) -> list:
    """Synthetic 'new domain' for an SD model: coloured concentric rings, one seed each."""
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        cx, cy, f = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(8, 16)
        r = np.hypot(xx - cx, yy - cy)
        phase = rng.uniform(0, 2 * np.pi, 3)
        rgb = np.stack([0.5 + 0.5 * np.sin(f * r * 2 * np.pi + p) for p in phase], axis=-1)
        out.append(Image.fromarray((rgb * 255).astype(np.uint8)))
    return out


@pytest.mark.floor
def test_unseen_domain_sampling_workflow(comfy_server):
    prompt = load_api("unseen_domain_sampling")
    loads = [n for n in prompt.values() if n["class_type"] == "LoadImage"]
    assert len(loads) >= 3
    for node, img in zip(loads, _domain_images(len(loads))):
        img.save(comfy_server.input_dir / node["inputs"]["image"])
    ref = comfy_server.output_dir / "ultrares" / "unseen_domain_reference.safetensors"
    if ref.exists():
        ref.unlink()
    run = comfy_server.run_prompt(prompt, timeout=900)
    saved = {}
    for node_id in output_nodes(prompt):
        if prompt[node_id]["class_type"] != "SaveImage":
            continue
        prefix = prompt[node_id]["inputs"]["filename_prefix"].split("/")[-1]
        saved[prefix] = [
            np.asarray(comfy_server.view_pil(img).convert("RGB"), dtype=np.float64) / 255
            for img in run.outputs[node_id]["images"]
        ]
    size = prompt[_node(prompt, "ImageScale")]["inputs"]["width"]
    count = prompt[_node(prompt, "UltraResDomainGaussian")]["inputs"]["count"]
    samples = saved["unseen_domain_samples"]
    assert len(samples) == count and all(s.shape == (size, size, 3) for s in samples)
    assert len(saved["unseen_domain_inputs"]) == len(loads)
    # distinct draws give distinct images
    assert min(np.abs(a - b).mean() for i, a in enumerate(samples) for b in samples[i + 1 :]) > 1e-3
    # the score node reported on the drawn latents and saved the inverted set, marked as the pack's own
    report = run.outputs[_node(prompt, "UltraResDomainScore")]["text"][0]
    assert "scored: " in report and f"of {count} in-domain" in report
    import safetensors

    with safetensors.safe_open(str(ref), framework="pt") as f:
        assert f.metadata()["ultrares_file"] == "domain_reference"
        assert f.get_tensor("latents").shape[0] == len(loads)


# ------------------------------------------------------------------------------ file-name safety


def _score_prompt(**inputs) -> dict:
    return {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 4}},
        "2": {
            "class_type": "UltraResDomainScore",
            "inputs": {"latents": ["1", 0], "percentile": 95.0, "reference": ["1", 0], **inputs},
        },
    }


def _refused(server, field: str, **inputs) -> str:
    status, body = server.post_prompt(_score_prompt(**inputs))
    assert status == 400, body
    text = str(body["node_errors"]["2"]["errors"])
    assert field in text, text
    # the server's folders appear only where the user typed them (the message quotes the value)
    typed = " ".join(str(v) for v in inputs.values())
    for folder in (server.output_dir, server.models_dir, server.input_dir, server.output_dir.parent):
        if str(folder) not in typed:
            assert str(folder) not in text, text
    return text


@pytest.fixture
def victim_model(comfy_server):
    """A model file in models/hdit/ that a traversal must not overwrite or read."""
    import safetensors.torch
    import torch

    path = comfy_server.models_dir / "hdit" / f"victim_{uuid.uuid4().hex[:8]}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({"w": torch.arange(4.0)}, str(path))
    before = path.read_bytes()
    yield path
    assert path.read_bytes() == before
    path.unlink()


def test_save_reference_as_absolute_path_is_refused(comfy_server):
    target = f"/tmp/ultrares_pwn_{uuid.uuid4().hex[:8]}"
    assert "absolute path" in _refused(comfy_server, "save_reference_as", save_reference_as=target)
    assert not os.path.exists(target) and not os.path.exists(target + ".safetensors")


def test_save_reference_as_dotdot_is_refused(comfy_server):
    leaf = f"ultrares_pwn_{uuid.uuid4().hex[:8]}"
    assert "'..'" in _refused(comfy_server, "save_reference_as", save_reference_as=f"../../../../tmp/{leaf}")
    assert not os.path.exists(f"/tmp/{leaf}.safetensors")


def test_save_reference_as_nested_folders_are_refused(comfy_server):
    folder = f"newdir_{uuid.uuid4().hex[:8]}"
    assert "separator" in _refused(comfy_server, "save_reference_as", save_reference_as=f"{folder}/deeper/x")
    assert not (comfy_server.output_dir / folder).exists()
    assert not (comfy_server.output_dir / "ultrares" / folder).exists()


def test_save_reference_as_cannot_overwrite_a_model(comfy_server, victim_model):
    name = f"../models/hdit/{victim_model.name}"
    _refused(comfy_server, "save_reference_as", save_reference_as=name)
    _refused(comfy_server, "save_reference_as", save_reference_as=name, overwrite=True)


@pytest.mark.parametrize(
    "name", ["CON", "nul.safetensors", "COM1", "   ", "a\\b", "C:x", ".hidden", "x\x00y"]
)
def test_save_reference_as_odd_names_are_refused(comfy_server, name):
    _refused(comfy_server, "save_reference_as", save_reference_as=name)


def test_reference_file_outside_the_folder_is_refused(comfy_server, victim_model):
    for name in (
        str(victim_model),
        f"../models/hdit/{victim_model.name}",
        f"../../models/hdit/{victim_model.name}",
        "ultrares/../x.safetensors",
    ):
        _refused(comfy_server, "reference_file", reference_file=name)
    status, body = comfy_server.post_prompt(_score_prompt(reference_file="missing_one.safetensors"))
    assert status == 400 and "reference_file='missing_one.safetensors' is not one of: (none)" in str(body), (
        body
    )


def test_foreign_file_needs_overwrite(comfy_server):
    import safetensors.torch
    import torch

    folder = comfy_server.output_dir / "ultrares"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"foreign_{uuid.uuid4().hex[:8]}.safetensors"
    safetensors.torch.save_file({"w": torch.ones(2)}, str(folder / name))
    text = _refused(comfy_server, "save_reference_as", save_reference_as=name)
    assert f"output/ultrares/{name} already exists" in text and "overwrite" in text


def test_reference_file_lists_saved_references(comfy_server):
    import safetensors.torch
    import torch

    folder = comfy_server.output_dir / "ultrares"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"listed_{uuid.uuid4().hex[:8]}.safetensors"
    safetensors.torch.save_file({"latents": torch.ones(3, 4, 2, 2)}, str(folder / name))
    spec = comfy_server.object_info("UltraResDomainScore")["input"]["optional"]["reference_file"]
    options = spec[1]["options"] if len(spec) > 1 and "options" in spec[1] else spec[0]
    assert "(none)" in options and name in options
