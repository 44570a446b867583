"""The pack's subgraph blueprints (``subgraphs/*.json``) on ComfyUI 0.30: the server lists them at
``/global_subgraphs``, each expands (inner nodes, links, promoted widgets) into an API prompt that
ComfyUI's own ``execution.validate_prompt`` accepts with the harness models, the files are what
``subgraphs/_build.py`` writes, and Relay Upscale x4 runs end to end on the server. 0.3.75 serves pack
blueprints the same way (``app/subgraph_manager.py``; the tests pass there too, run them with
``COMFYUI_VERSION=0.3.75``); a ComfyUI without that file is skipped.

:func:`expand` does what the graph editor does when it queues a graph holding a blueprint node
(the browser test in tests/browser/test_subgraph_library.py checks the editor finds them).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest
from harness.paths import ROOT, comfy_root

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(
        not (comfy_root() / "app" / "subgraph_manager.py").exists(),
        reason="this ComfyUI serves no subgraph blueprints from packs (no app/subgraph_manager.py)",
    ),
]

SUBGRAPHS = ROOT / "subgraphs"
NAMES = ("Tiled Upscale to 4K (UltraRes FSTD)", "Relay Upscale x4")
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def load(name: str) -> dict:
    return json.loads((SUBGRAPHS / f"{name}.json").read_text(encoding="utf-8"))


def _widget_names(info: dict) -> list[str | None]:
    """Names of a node's widgets_values slots in order (None for a control_after_generate value)."""
    out = []
    for group in ("required", "optional"):
        for name, spec in info["input"].get(group, {}).items():
            typ = "COMBO" if isinstance(spec[0], list) else spec[0]
            opts = spec[1] if len(spec) > 1 else {}
            if typ in WIDGET_TYPES and not opts.get("forceInput"):
                out.append(name)
                if opts.get("control_after_generate"):
                    out.append(None)
    return out


def expand(blueprint: dict, object_info, host_id: str, sockets: dict, widgets: dict | None = None):
    """The API prompt nodes of ``blueprint`` placed as node ``host_id``: ``sockets`` maps the subgraph's
    socket inputs to API links, ``widgets`` overrides promoted widget values. Returns (nodes, outputs as
    API links)."""
    sg = blueprint["definitions"]["subgraphs"][0]
    host = blueprint["nodes"][0]
    assert host["type"] == sg["id"] and len(blueprint["nodes"]) == 1
    proxies = host["properties"]["proxyWidgets"]
    assert all(p[0] == "-1" for p in proxies)  # every promoted widget is a subgraph input
    assert host["widgets_values"] == []  # promoted widgets show the inner widgets' values
    promoted = dict(widgets or {})
    names = [i["name"] for i in sg["inputs"]]
    links = {link["id"]: link for link in sg["links"]}
    nodes = {}
    for node in sg["nodes"]:
        assert node["mode"] == 0, node
        info = object_info(node["type"])
        inputs = {
            n: v
            for n, v in zip(_widget_names(info), node.get("widgets_values", []), strict=True)
            if n is not None
        }
        for entry in node["inputs"]:
            if entry.get("link") is None:
                continue
            link = links[entry["link"]]
            if link["origin_id"] == -10:
                name = names[link["origin_slot"]]
                if name in sockets:
                    inputs[entry["name"]] = sockets[name]
                elif name in promoted:
                    inputs[entry["name"]] = promoted[name]
                # else: a socket left unconnected (the input stays missing, as the editor leaves it)
            else:
                inputs[entry["name"]] = [f"{host_id}:{link['origin_id']}", link["origin_slot"]]
        nodes[f"{host_id}:{node['id']}"] = {"class_type": node["type"], "inputs": inputs}
    outputs = []
    for out in sg["outputs"]:
        (lid,) = out["linkIds"]
        link = links[lid]
        outputs.append([f"{host_id}:{link['origin_id']}", link["origin_slot"]])
    return nodes, outputs


def host_prompt(blueprint, object_info, widgets=None, image_size=64):
    """The blueprint between the harness models (tiny SD1.5 through the test loader) and a PreviewImage."""
    prompt = {
        "1": {"class_type": "UltraResTestCheckpointLoader", "inputs": {"ckpt_name": "sd15", "seed": 0}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a castle on a hill"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {
            "class_type": "EmptyImage",
            "inputs": {"width": image_size, "height": image_size, "batch_size": 1, "color": 8421504},
        },
    }
    sockets = {
        "image": ["4", 0],
        "model": ["1", 0],
        "positive": ["2", 0],
        "negative": ["3", 0],
        "vae": ["1", 2],
    }
    nodes, (image,) = expand(blueprint, object_info, "10", sockets, widgets)
    prompt.update(nodes)
    prompt["20"] = {"class_type": "PreviewImage", "inputs": {"images": image}}
    return prompt


def test_server_lists_the_blueprints(comfy_server):
    listed = comfy_server.get_json("/global_subgraphs")
    ours = {
        e["name"]: (key, e) for key, e in listed.items() if e["info"]["node_pack"] == "custom_nodes.ultrares"
    }
    assert set(NAMES) <= set(ours), sorted(ours)
    assert not any(n.startswith("_") for n in ours)  # the builder script is no blueprint
    key, entry = ours["Relay Upscale x4"]
    assert entry["source"] == "custom_node" and "path" not in entry
    full = comfy_server.get_json(f"/global_subgraphs/{key}")
    assert json.loads(full["data"]) == load("Relay Upscale x4")


def test_blueprints_are_what_the_builder_writes():
    run = subprocess.run(
        [sys.executable, str(SUBGRAPHS / "_build.py"), "--check"], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]


@pytest.fixture()
def upscale_model_name(comfy, tmp_path):
    """An upscale-model file name the UpscaleModelLoader combo lists (validation reads the list only)."""
    import folder_paths

    d = tmp_path / "upscale_models"
    d.mkdir()
    (d / "RealESRGAN_x4plus.safetensors").write_bytes(b"not loaded by validation")
    folder_paths.add_model_folder_path("upscale_models", str(d))
    yield "RealESRGAN_x4plus.safetensors"
    folder_paths.folder_names_and_paths["upscale_models"][0].remove(str(d))


def validate(prompt):
    import execution

    return asyncio.run(execution.validate_prompt("test-subgraphs", prompt, None))


@pytest.mark.parametrize("name", NAMES)
def test_each_blueprint_expands_to_a_prompt_comfy_accepts(comfy, upscale_model_name, name):
    blueprint = load(name)
    sg = blueprint["definitions"]["subgraphs"][0]
    assert sg["name"] == name and sg["category"].startswith("UltraRes") and sg["description"]
    prompt = host_prompt(blueprint, comfy.object_info)
    ok, error, outputs, node_errors = validate(prompt)
    assert ok, (error, node_errors)
    assert outputs == ["20"]
    classes = {n["class_type"] for n in prompt.values()}
    if name.startswith("Tiled"):
        assert {"UpscaleModelLoader", "UltraResTiledDiffusion", "VAEDecodeTiled"} <= classes
        resize = next(n for n in prompt.values() if n["class_type"] == "ImageScale")["inputs"]
        assert (resize["width"], resize["height"]) == (3840, 2160)  # 4K UHD by default
    else:
        relay = next(n for n in prompt.values() if n["class_type"] == "UltraResRelayUpscale")["inputs"]
        assert relay["factor"] == 4
    # a broken promoted value is refused by the same validation (the expansion is really checked)
    widgets = {"steps": 0}
    ok, _, _, node_errors = validate(host_prompt(blueprint, comfy.object_info, widgets))
    assert not ok and node_errors


def test_relay_upscale_x4_runs_on_the_server(comfy_server, comfy):
    prompt = host_prompt(
        load("Relay Upscale x4"),
        comfy.object_info,
        {"steps": 2, "truncation_sigma": 1.5, "cfg": 5.0},
        image_size=32,
    )
    run = comfy_server.run_prompt(prompt, timeout=600)
    (image,) = run.images()
    img = comfy_server.view_pil(image)
    assert img.size == (128, 128)  # 32 px in, 4x out
    assert np.asarray(img).std() > 0
