"""The LinFusion workflows run unchanged (loader substitution only) on a real ComfyUI server, with
LinFusion weights in the official release-folder layout written for the tiny test models."""

from __future__ import annotations

import pytest
import torch
from harness.workflows_util import load_api, shrink
from ultrares.kernels import linfusion_format as fmt

pytestmark = pytest.mark.server


def _write_release_folder(model, folder, mid_dim_scale=None):
    """config.json + diffusion_pytorch_model.safetensors (random weights) sized for ``model``."""
    unet = model.get_model_object("diffusion_model")
    res = model.model.model_config.unet_config["num_res_blocks"]
    specs = {}
    for path in [n for n, _ in unet.named_modules() if n.rsplit(".", 1)[-1] == "attn1"]:
        m = model.get_model_object(
            f"diffusion_model.{path}"
        )  # the original even if a patched clone is loaded
        dim = m.to_q.weight.shape[1]
        specs[path] = fmt.LayerSpec(
            fmt.ldm_to_diffusers(path, res),
            dim,
            int(m.heads),
            None if not mid_dim_scale else dim // mid_dim_scale,
        )
    torch.manual_seed(0)
    fmt.save_linfusion(str(folder), list(specs.values()), [fmt.build_layer(s) for s in specs.values()])
    return specs


def _lf_name(prompt):
    return next(
        v["inputs"]["lf_name"] for v in prompt.values() if v["class_type"] == "UltraResLinFusionLoader"
    )


@pytest.mark.floor
@pytest.mark.parametrize(
    "name,family,size,shrink_by",
    [("linfusion_sd15_2048", "sd15", 2048, 4), ("linfusion_sdxl_tiled_4096", "sdxl", 4096, 4)],
)
def test_linfusion_workflow_runs(comfy_server, request, name, family, size, shrink_by):
    """Both at 1/4 of their pixel sizes, validated at full size in-process (test_workflows_in_sync):
    the SD1.5 one 128 -> 256 -> 512 px with min_tokens 4096 / 16, so the same layers of each pass go
    linear as at full size (those with at least min_tokens tokens); the tiled SDXL one with the same
    2x2 tile grid, LinFusion on every tile since min_tokens is 0."""
    prompt = shrink(load_api(name), shrink_by)
    size //= shrink_by
    model = request.getfixturevalue(f"tiny_{family}")[0]
    folder = comfy_server.models_dir / "linfusion" / _lf_name(prompt).split("/")[0]
    _write_release_folder(model, folder, 16 if family == "sdxl" else None)
    run = comfy_server.run_prompt(prompt, timeout=1500)
    images = run.images()
    assert len(images) == 1, run.outputs
    assert comfy_server.view_pil(images[0]).size == (size, size)
    for node, spec in prompt.items():
        if spec["class_type"] == "KSampler":
            assert {m for _, m, n in run.progress if n == node} == {spec["inputs"]["steps"]}


def test_wrong_family_fails_with_a_message_naming_both(comfy_server, tiny_sdxl):
    from harness.server import PromptFailed

    _write_release_folder(tiny_sdxl[0], comfy_server.models_dir / "linfusion" / "xl-for-test", 16)
    prompt = {
        "1": {
            "class_type": "UltraResTestCheckpointLoader",
            "inputs": {"ckpt_name": "v1-5.safetensors", "seed": 0},
        },
        "2": {
            "class_type": "UltraResLinFusionLoader",
            "inputs": {"lf_name": "xl-for-test/diffusion_pytorch_model.safetensors"},
        },
        "3": {
            "class_type": "UltraResLinFusionApply",
            "inputs": {
                "model": ["1", 0],
                "linfusion": ["2", 0],
                "min_tokens": 0,
                "keep_base_value_output": False,
                "chunk_size": 0,
                "precision": "auto",
            },
        },
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "x"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["3", 0],
                "seed": 0,
                "steps": 1,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["4", 0],
                "negative": ["4", 0],
                "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["6", 0]}},
    }
    with pytest.raises(PromptFailed, match=r"SDXL layout.*does not fit a SD15 model"):
        comfy_server.run_prompt(prompt, timeout=300)
    # an unknown file is refused at queue time
    prompt["2"]["inputs"]["lf_name"] = "nope.safetensors"
    status, body = comfy_server.post_prompt(prompt)
    assert status == 400 and "2" in body["node_errors"]
