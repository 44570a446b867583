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
