"""The committed UI and API workflow files are exactly what their specs build."""

import subprocess
import sys

from harness.paths import ROOT, WORKFLOWS


def test_every_workflow_has_both_formats_and_a_spec():
    ui = {p.stem for p in WORKFLOWS.glob("*.json")}
    api = {p.stem for p in (WORKFLOWS / "api").glob("*.json")}
    specs = {p.stem for p in (WORKFLOWS / "specs").glob("*.py") if not p.stem.startswith("_")}
    assert ui == api == specs


def test_committed_workflows_match_specs():
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "workflow_builder.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_workflow_validates_at_full_size(comfy):
    """ComfyUI's own queue-time validation (execution.validate_prompt: types, ranges, every node's
    validate_inputs) accepts each committed workflow at its full size, so a server test may run it
    shrunk. Images the workflows load are written as placeholders for the check and removed."""
    import asyncio
    import os

    import execution
    import folder_paths
    from harness.workflows_util import load_api, workflow_names
    from PIL import Image

    made = []
    try:
        for name in workflow_names():
            prompt = load_api(name)
            for node in prompt.values():
                placeholder = None
                if node["class_type"] == "LoadImage":
                    placeholder = os.path.join(folder_paths.get_input_directory(), node["inputs"]["image"])
                elif node["class_type"] == "UltraResLinFusionLoader":  # queue time checks the name only
                    placeholder = os.path.join(
                        folder_paths.get_folder_paths("linfusion")[0], node["inputs"]["lf_name"]
                    )
                elif node["class_type"] == "UltraResCLEARLoader":  # likewise: the name only
                    placeholder = os.path.join(
                        folder_paths.get_folder_paths("clear")[0], node["inputs"]["clear_name"]
                    )
                if placeholder and not os.path.exists(placeholder):
                    folder = os.path.dirname(placeholder)
                    if not os.path.isdir(folder):
                        os.makedirs(folder)
                        made.append(folder)
                    Image.new("RGB", (64, 64), "gray").save(placeholder, format="PNG")
                    made.append(placeholder)
            valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(name, prompt, None))
            assert valid, (name, error, node_errors)
            assert outputs, name
    finally:
        for path in reversed(made):  # files, then the folders made for them
            os.rmdir(path) if os.path.isdir(path) else os.remove(path)


def test_floor_check_compares_the_graph_not_comfyuis_names():
    """Control for the floor's --check (graph_of): ComfyUI's own names (a core node's title, an output
    slot's name, an unlinked output slot) do not count; a widget value, a link or a node type does."""
    import copy
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("_wf_builder", ROOT / "scripts" / "workflow_builder.py")
    builder = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = builder  # its dataclass looks its module up
    spec.loader.exec_module(builder)
    ui = json.loads((WORKFLOWS / "fstd_sd15_2048.json").read_text())
    api = json.loads((WORKFLOWS / "api" / "fstd_sd15_2048.json").read_text())
    base = builder.graph_of(ui, api)

    def changed(edit):
        u, a = copy.deepcopy(ui), copy.deepcopy(api)
        edit(u, a)
        return builder.graph_of(u, a) != base

    save = next(n for n in ui["nodes"] if n["type"] == "SaveImage")
    tiled = next(n for n in ui["nodes"] if n["type"] == "UltraResTiledDiffusion")
    tiled_api = next(k for k, v in api.items() if v["class_type"] == "UltraResTiledDiffusion")
    renamed = [
        lambda u, a: a[tiled_api]["_meta"].update(title="Another title"),
        lambda u, a: next(n for n in u["nodes"] if n["id"] == tiled["id"])["outputs"][0].update(name="x"),
        lambda u, a: next(n for n in u["nodes"] if n["id"] == save["id"])["outputs"].append(
            {"name": "images", "type": "IMAGE", "slot_index": 0, "links": []}
        ),
    ]
    assert not any(changed(edit) for edit in renamed)
    real = [
        lambda u, a: next(n for n in u["nodes"] if n["id"] == tiled["id"])["widgets_values"].__setitem__(
            1, 8
        ),
        lambda u, a: a[tiled_api]["inputs"].update(tile_width=8),
        lambda u, a: u["links"][0].__setitem__(4, 7),
        lambda u, a: next(n for n in u["nodes"] if n["id"] == save["id"]).update(type="PreviewImage"),
    ]
    assert all(changed(edit) for edit in real)
