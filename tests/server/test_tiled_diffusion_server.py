"""The FSTD workflows run on a real ComfyUI server (loader substitution, and shrunk to a fraction of
their pixel sizes with the same tile layout) and write images of the requested size; in the Flux and
ControlNet runs the test pack's tile recorder checks the tiles the model really got, step by step,
against the kernel's plan; bad tile settings are refused at queue time."""

import copy
import json
from pathlib import Path

import pytest
from harness.workflows_util import load_api, output_nodes, shrink

pytestmark = pytest.mark.server
RECORDER = Path(__file__).resolve().parents[1] / "comfy_packs" / "ultrares_testing" / "tile_recorder.py"


def _size_of(api, node_id):
    """Requested (width, height) of the EmptyLatentImage / plan feeding the workflow."""
    return api[node_id]["inputs"]


@pytest.mark.floor
@pytest.mark.parametrize(
    "name,size,shrink_by",
    [
        ("fstd_sd15_2048", (2048, 2048), 4),
        ("fstd_sdxl_4096x2048", (4096, 2048), 4),
        ("fstd_any_size", (1920, 1080), 4),
    ],
)
def test_fstd_workflow_writes_image_of_requested_size(comfy_server, name, size, shrink_by):
    """Each at 1/4 of its pixel sizes with the same tile grid (and, for the any-size pipeline, the same
    plan: native pass at 1/4 of SD1.5's 512 px, upscale, exact crop of the target, FSTD refine); the full
    sizes are validated at queue time in-process (test_workflows_in_sync). The image is exactly the
    (shrunk) requested size, 8-px rounded like every size the shrink writes."""
    prompt = load_api(name)
    for node in prompt.values():
        if node["class_type"] == "UltraResAnySizePlan" and not node["inputs"]["native_size"]:
            node["inputs"]["native_size"] = 512  # the SD1.5 test model's native side, stated so it shrinks
    prompt = shrink(prompt, shrink_by)
    size = (size[0] // shrink_by // 8 * 8, size[1] // shrink_by // 8 * 8)
    run = comfy_server.run_prompt(prompt, timeout=1500)
    images = run.images()
    assert len(images) == 1, run.outputs
    assert comfy_server.view_pil(images[0]).size == size
    # one progress bar per sampler node, counting its steps (tile batches do not restart it)
    samplers = [k for k, v in prompt.items() if v["class_type"] == "KSampler"]
    for node in samplers:
        maxima = {m for _, m, n in run.progress if n == node}
        assert maxima == {prompt[node]["inputs"]["steps"]}, (node, maxima)
    assert output_nodes(prompt)[0] in run.outputs


def _write_guide(comfy_server):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (512, 256), "white")
    draw = ImageDraw.Draw(img)
    for i in range(0, 512, 64):
        draw.line([(i, 0), (511 - i, 255)], fill="black", width=5)
    img.save(comfy_server.input_dir / "ultrares_controlnet_guide.png")


@pytest.fixture(scope="module")
def recording_server(tmp_path_factory):
    """A server of its own that also loads the test pack's tile recorder (``UltraResTestTileRecorder``,
    tests/comfy_packs/ultrares_testing/tile_recorder.py), which only a server linking it has."""
    from harness.server import ComfyServer

    base = tmp_path_factory.mktemp("comfy-server-tiles")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "ultrares_tile_recorder.py").symlink_to(RECORDER)
    server = ComfyServer.start(base)
    try:
        yield server
    finally:
        server.stop()


def _recorded(prompt: dict, record: str) -> dict:
    """``prompt`` with the tile recorder between Tiled Diffusion and the model it patches (so the recorder
    sees each evaluation's whole latent and, inside it, every tile the model gets)."""
    prompt = copy.deepcopy(prompt)
    tiled = next(k for k, v in prompt.items() if v["class_type"] == "UltraResTiledDiffusion")
    model = prompt[tiled]["inputs"]["model"]
    prompt["recorder"] = {
        "class_type": "UltraResTestTileRecorder",
        "inputs": {"model": model, "record_name": record},
    }
    prompt[tiled]["inputs"]["model"] = ["recorder", 0]
    return prompt


def _kernel_tiles(inputs: dict, latent_hw, ratio: int, steps: int, groups: list) -> list[list[tuple]]:
    """Per step, the (y, x, h, w) tiles ``kernels.tiled_diffusion.TiledRun`` evaluates for the node's ``inputs``,
    driven with a stand-in prediction (its plans do not depend on the values)."""
    import torch
    from ultrares.kernels.tiled_diffusion import TiledRun, TileSettings

    names = ("tile_width", "tile_height", "overlap", "tile_batch_size", "reset_interval", "seed")
    run = TiledRun(
        TileSettings.from_label(inputs["method"], **{n: inputs[n] for n in names}), *latent_hw, ratio
    )
    x, per_step = torch.zeros(1, 1, *latent_hw), []

    def predict(tiles_x, tiles, active):
        per_step[-1].extend((t.y, t.x, t.h, t.w) for t in tiles)
        return [tiles_x] * len(active)

    for step in range(steps):
        per_step.append([])
        run.denoise(x, torch.ones(1), step, groups, predict)
    return per_step


@pytest.mark.floor
@pytest.mark.parametrize(
    "name,size", [("fstd_flux_4096", (4096, 4096)), ("fstd_controlnet_sdxl", (4096, 2048))]
)
def test_flux_and_controlnet_workflows_run_shrunk_with_their_tile_layout(recording_server, name, size):
    """Flux at cfg 1 + FluxGuidance and SDXL + a real ControlNet, on the tiny models at 1/8 of the
    pixel sizes (the same 4x4 / 4x2 tile grid); the full size is validated at queue time in-process
    (tests/comfy/test_workflows_in_sync.py). The test pack's tile recorder, put before Tiled Diffusion,
    finds every tile the model got in the latent of its step: at every step, in every model call, they
    are the tiles of the kernel's FSTD plan for the workflow's settings (the grid shifted per step, reset
    every reset_interval steps), tile_batch_size per call, cond and uncond together at cfg > 1."""
    server = recording_server
    if name == "fstd_controlnet_sdxl":
        _write_guide(server)
    prompt = _recorded(shrink(load_api(name), 8), f"tiles_{name}")
    run = server.run_prompt(prompt, timeout=900)
    images = run.images()
    assert len(images) == 1, run.outputs
    assert server.view_pil(images[0]).size == (size[0] // 8, size[1] // 8)
    lines = (server.output_dir / f"tiles_{name}.jsonl").read_text().splitlines()
    evaluations = [json.loads(line) for line in lines]
    inputs = next(v["inputs"] for v in prompt.values() if v["class_type"] == "UltraResTiledDiffusion")
    sampler = next(v["inputs"] for v in prompt.values() if v["class_type"] == "KSampler")
    latent_hw = evaluations[0]["latent_hw"]
    ratio = size[0] // 8 // latent_hw[1]
    groups = ["cond", None] if sampler["cfg"] == 1.0 else ["cond", "uncond"]  # cfg 1: no uncond
    present = len([g for g in groups if g is not None])
    expected = _kernel_tiles(inputs, latent_hw, ratio, sampler["steps"], groups)
    assert len(evaluations) == sampler["steps"]  # euler / dpmpp_2m: one evaluation per step
    assert len(expected[0]) == (size[0] // 1024) * (size[1] // 1024)  # the workflow's grid at the reset step
    assert len({tuple(map(tuple, e)) for e in expected}) > 2  # the grid moves between steps
    batch = inputs["tile_batch_size"]
    for step, (ev, tiles) in enumerate(zip(evaluations, expected)):
        assert ev["latent_hw"] == latent_hw
        calls = [tiles[i : i + batch] for i in range(0, len(tiles), batch)]
        # each model call: its tiles for every present cond group, one group after the other
        assert [[tuple(b) for b in call] for call in ev["calls"]] == [c * present for c in calls], step


def test_bad_tiles_are_refused_at_queue_time(comfy_server):
    prompt = load_api("fstd_sd15_2048")
    tiled = next(k for k, v in prompt.items() if v["class_type"] == "UltraResTiledDiffusion")
    prompt[tiled]["inputs"]["tile_width"] = 500
    status, body = comfy_server.post_prompt(prompt)
    assert status == 400
    assert "multiple of 8" in str(body["node_errors"][tiled])
    prompt[tiled]["inputs"]["tile_width"] = 32  # below the minimum
    status, body = comfy_server.post_prompt(prompt)
    assert status == 400 and "minimum" in str(body["node_errors"][tiled])


def test_video_latent_is_refused_with_a_clear_error(comfy_server):
    from harness.server import PromptFailed

    prompt = {
        "1": {
            "class_type": "UltraResTestCheckpointLoader",
            "inputs": {"ckpt_name": "v1-5.safetensors", "seed": 0},
        },
        "2": {
            "class_type": "UltraResTiledDiffusion",
            "inputs": {
                "model": ["1", 0],
                "method": "FSTD",
                "tile_width": 512,
                "tile_height": 512,
                "overlap": 64,
                "tile_batch_size": 4,
                "reset_interval": 4,
                "seed": 0,
            },
        },
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "x"}},
        "4": {
            "class_type": "EmptyHunyuanLatentVideo",
            "inputs": {"width": 64, "height": 64, "length": 5, "batch_size": 1},
        },
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["2", 0],
                "seed": 0,
                "steps": 1,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["3", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}},
    }
    with pytest.raises(PromptFailed, match="video latent"):
        comfy_server.run_prompt(prompt, timeout=300)
    assert comfy_server.get_json("/system_stats")  # the server is still up
