"""The CLEAR workflow runs unchanged (loader substitution only) on a real ComfyUI server, with a CLEAR
file in the official layout written for the tiny FLUX, at 1/16 of its pixel sizes (64 -> 128 -> 256 px:
token grids 4, 8, 16, all divisible by the down factor 4); the full size is validated at queue time
in-process (tests/comfy/test_workflows_in_sync.py)."""

from __future__ import annotations

import pytest
from clear_support import write_clear_file
from harness.workflows_util import load_api, shrink

pytestmark = pytest.mark.server


def _steps(prompt: dict, steps: int) -> dict:
    """At most ``steps`` steps per KSampler (denoise unchanged): the full counts only add time here."""
    for node in prompt.values():
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = min(steps, node["inputs"]["steps"])
    return prompt


def _clear_name(prompt):
    return next(
        v["inputs"]["clear_name"] for v in prompt.values() if v["class_type"] == "UltraResCLEARLoader"
    )


@pytest.mark.floor
def test_clear_workflow_runs_shrunk(comfy_server):
    prompt = _steps(shrink(load_api("clear_flux_4096"), 16), 2)
    folder = comfy_server.models_dir / "clear"
    folder.mkdir(parents=True, exist_ok=True)
    write_clear_file(folder / _clear_name(prompt), down_factor=4)
    run = comfy_server.run_prompt(prompt, timeout=900)
    images = run.images()
    assert len(images) == 1, run.outputs
    assert comfy_server.view_pil(images[0]).size == (256, 256)
    stages = [k for k, v in prompt.items() if v["class_type"] == "KSampler"]
    assert len(stages) == 3 and all(any(n == k for _, _, n in run.progress) for k in stages)


def test_clear_on_an_sd_model_fails_naming_the_family(comfy_server):
    from harness.server import PromptFailed

    folder = comfy_server.models_dir / "clear"
    folder.mkdir(parents=True, exist_ok=True)
    write_clear_file(folder / "clear_local_16.safetensors")
    prompt = {
        "1": {
            "class_type": "UltraResTestCheckpointLoader",
            "inputs": {"ckpt_name": "v1-5.safetensors", "seed": 0},
        },
        "2": {"class_type": "UltraResCLEARLoader", "inputs": {"clear_name": "clear_local_16.safetensors"}},
        "3": {
            "class_type": "UltraResCLEARApply",
            "inputs": {
                "model": ["1", 0],
                "clear": ["2", 0],
                "window": 0,
                "proportional_attention": True,
                "ntk_factor": 10.0,
            },
        },
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a castle"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["3", 0],
                "seed": 0,
                "steps": 1,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "positive": ["4", 0],
                "negative": ["4", 0],
                "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "clear_refused"}},
    }
    with pytest.raises(PromptFailed, match="this is a SD15 model.*CLEAR weights exist only for FLUX.1"):
        comfy_server.run_prompt(prompt, timeout=600)
