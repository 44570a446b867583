"""Fuzz of the real server's queue-time checks: every widget input of every UltraRes node gets wrong
types, out-of-range values, NaN/inf and path tricks; each prompt must be refused with a 400 that
names the input, never with a Python error from our code, and the server must stay up. Then an
interrupted run is followed by a normal run that succeeds.

What reaches a node's ``validate_inputs`` (ComfyUI 0.3.75 ``execution.validate_inputs``): the widget
values of the prompt, converted by ComfyUI (INT/FLOAT/STRING/BOOLEAN) or raw when that conversion
failed, ``None`` for linked inputs. Each node is queued alone with its widgets and a ``PreviewAny``
reading its first output, so its link inputs are missing (a 400 in any case, and no model runs)
while its widgets are checked exactly as in a full workflow."""

from __future__ import annotations

import json
import re
import uuid

import pytest

pytestmark = pytest.mark.server

# Text of a Python exception in one of our messages means a check crashed or leaked library wording.
EXCEPTION_TEXT = (
    "Traceback",
    "object has no attribute",
    "not supported between",
    "invalid literal",
    "unhashable",
    "could not convert",
    "argument must be",
    "Error:",
    "NoneType",
)
# Errors ComfyUI itself raises about one input (its extra_info names the input).
COMFY_INPUT_ERRORS = {
    "invalid_input_type",
    "value_smaller_than_min",
    "value_bigger_than_max",
    "value_not_in_list",
    "bad_linked_input",
    "required_input_missing",
}
CRASHES = {"exception_during_validation", "exception_during_inner_validation"}

PATH_TRICKS = [
    "/etc/passwd",
    "../../../etc/passwd",
    "..",
    "a/../../b",
    "C:\\Windows\\win.ini",
    "name\x00.npy",
    "x" * 5000,
]


def _kind(spec) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def _opts(spec) -> dict:
    return spec[1] if len(spec) > 1 else {}


def _bad_values(spec) -> list[tuple[str, object]]:
    kind, opts = _kind(spec), _opts(spec)
    wrong_type = [("text", "abc"), ("list", [1, 2, 3]), ("dict", {"a": 1}), ("null-ish list", [])]
    if kind in ("INT", "FLOAT"):
        cases = list(wrong_type)
        if opts.get("min") is not None:
            cases.append(("min-1", opts["min"] - 1))
        if opts.get("max") is not None:
            cases.append(("max+1", opts["max"] + 1))
        if kind == "FLOAT":  # json.dumps writes NaN/Infinity literals; aiohttp's json.loads reads them
            cases += [
                ("NaN", float("nan")),
                ("inf", float("inf")),
                ("-inf", float("-inf")),
                ("'NaN' text", "NaN"),
                ("'inf' text", "inf"),
            ]
        else:
            cases += [("NaN", float("nan")), ("inf", float("inf"))]
        return cases
    if kind == "COMBO":
        return [(f"path {v[:20]!r}", v) for v in PATH_TRICKS] + [
            ("list", ["x"]),
            ("dict", {"a": 1}),
            ("number", 3),
        ]
    if kind == "STRING":  # the pack's STRING widgets are file names
        return [(f"path {v[:20]!r}", v) for v in PATH_TRICKS]
    return []  # BOOLEAN: ComfyUI converts any JSON value with bool() before any node sees it


def _widgets(node: dict) -> dict:
    found = {}
    for section in ("required", "optional"):
        for name, spec in node["input"].get(section, {}).items():
            if _kind(spec) in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                found[name] = (section, spec)
    return found


def _default(spec):
    kind, opts = _kind(spec), _opts(spec)
    if "default" in opts:
        return opts["default"]
    if kind == "COMBO":
        options = spec[0] if isinstance(spec[0], list) else opts.get("options", [])
        return options[0] if options else ""
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[kind]


def _prompt(node_id: str, node: dict, inputs: dict) -> dict:
    prompt = {"1": {"class_type": node_id, "inputs": inputs}}
    if node["output"]:
        prompt["2"] = {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}
    return prompt


def _errors(body: dict) -> list[dict]:
    found = list(body.get("node_errors", {}).get("1", {}).get("errors", []))
    top = body.get("error", {})
    if isinstance(top, dict) and top.get("type") in CRASHES:
        found.append(top)
    return found


def _check_refusal(status: int, body: dict, name: str, where: str) -> None:
    assert status == 400, f"{where}: accepted ({status}): {json.dumps(body)[:500]}"
    errors = _errors(body)
    crashes = [e for e in errors if e.get("type") in CRASHES]
    assert not crashes, f"{where}: validation crashed: {crashes[0].get('details')}"
    # ComfyUI repeats a validate_inputs message once per input it names, as "<input> - <message>"
    ours = [e["details"].split(" - ", 1)[-1] for e in errors if e.get("type") == "custom_validation_failed"]
    for details in ours:
        leaked = [t for t in EXCEPTION_TEXT if t in details]
        assert not leaked, f"{where}: Python error text {leaked} in {details[:300]!r}"
        assert len(details) < 3000, f"{where}: message of {len(details)} characters"
    names_it = any(re.search(rf"\b{re.escape(name)}\b", d) for d in ours) or any(
        e.get("type") in COMFY_INPUT_ERRORS and e.get("extra_info", {}).get("input_name") == name
        for e in errors
    )
    assert names_it, f"{where}: no error names {name}: {json.dumps(errors)[:800]}"


def test_bad_widget_values_are_refused_with_a_message(comfy_server):
    info = comfy_server.object_info()
    ours = sorted(k for k in info if k.startswith("UltraRes") and not k.startswith("UltraResTest"))
    assert len(ours) >= 15, ours
    failures, posted = [], 0
    for node_id in ours:
        node = info[node_id]
        widgets = _widgets(node)
        base = {name: _default(spec) for name, (_, spec) in widgets.items()}
        for name, (section, spec) in widgets.items():
            cases = _bad_values(spec)
            if section == "required":
                cases.append(("missing", KeyError))
            for label, value in cases:
                inputs = dict(base)
                if value is KeyError:
                    del inputs[name]
                else:
                    inputs[name] = value
                where = f"{node_id}.{name} = {label}"
                status, body = comfy_server.post_prompt(_prompt(node_id, node, inputs))
                posted += 1
                try:
                    _check_refusal(status, body, name, where)
                except AssertionError as err:
                    failures.append(str(err))
        assert comfy_server.object_info(node_id)["name"] == node_id  # still serving after this node's fuzz
    assert posted > 300
    assert not failures, f"{len(failures)} of {posted} bad prompts not refused cleanly:\n" + "\n".join(
        failures[:40]
    )


def _slow_prompt(steps: int, size: int) -> dict:
    return {
        "1": {
            "class_type": "UltraResTestCheckpointLoader",
            "inputs": {"ckpt_name": "v1-5.safetensors", "seed": 0},
        },
        "2": {
            "class_type": "UltraResTiledDiffusion",
            "inputs": {
                "model": ["1", 0],
                "method": "FSTD",
                "tile_width": 256,
                "tile_height": 256,
                "overlap": 0,
                "tile_batch_size": 4,
                "reset_interval": 4,
                "seed": 0,
            },
        },
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a lighthouse"}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["2", 0],
                "seed": 1,
                "steps": steps,
                "cfg": 4.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["3", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {
            "class_type": "SaveImage",
            "inputs": {"images": ["6", 0], "filename_prefix": "fuzz_after_interrupt"},
        },
    }


def test_interrupt_mid_run_then_a_normal_run_succeeds(comfy_server):
    import websocket  # websocket-client

    client_id = uuid.uuid4().hex
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{comfy_server.port}/ws?clientId={client_id}", timeout=300
    )
    try:
        status, answer = comfy_server.post_prompt(_slow_prompt(steps=200, size=512), client_id)
        assert status == 200, answer
        prompt_id, outcome, interrupted_at = answer["prompt_id"], None, None
        while outcome is None:
            raw = ws.recv()
            if isinstance(raw, bytes):
                continue
            msg = json.loads(raw)
            kind, data = msg.get("type"), msg.get("data", {})
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if kind == "progress" and interrupted_at is None and data.get("node") == "5":
                interrupted_at = data["value"]
                comfy_server.interrupt()  # mid-sampling, inside the tiled model call loop
            elif kind in ("execution_interrupted", "execution_error", "execution_success"):
                outcome = (kind, data)
    finally:
        ws.close()
    assert outcome[0] == "execution_interrupted", outcome
    assert interrupted_at is not None and interrupted_at < 200
    run = comfy_server.run_prompt(_slow_prompt(steps=2, size=256), timeout=600)
    images = run.images()
    assert len(images) == 1 and comfy_server.view_pil(images[0]).size == (256, 256)
