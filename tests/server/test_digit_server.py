"""The committed DiGIT workflow on a real ComfyUI server: LoadImage -> tokenize -> token map,
nearest-patch decoding and the tokenized input saved; a bad image_size is a queue-time 400."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
from harness.workflows_util import load_api, output_nodes
from node_support import write_example

pytestmark = pytest.mark.server

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENCODER = os.path.join(ROOT, "models", "digit", "ultrares-dinov2-s14-imgfocus.safetensors")


@pytest.mark.floor
def test_digit_tokenize_workflow(comfy_server):
    if not os.path.exists(ENCODER):
        pytest.skip(
            "embedded DiGIT encoder not converted (scripts/assets/digit_encoder.sh, run by make setup)"
        )
    prompt = load_api("digit_tokenize")
    name = next(n["inputs"]["image"] for n in prompt.values() if n["class_type"] == "LoadImage")
    write_example(comfy_server.input_dir / name)
    outputs = comfy_server.run_prompt(prompt, timeout=600).outputs
    saved = {}
    for node_id in output_nodes(prompt):
        prefix = prompt[node_id]["inputs"]["filename_prefix"].split("/")[-1]
        (img,) = outputs[node_id]["images"]
        saved[prefix] = np.asarray(comfy_server.view_pil(img).convert("RGB"), dtype=np.float32) / 255
    token_map, decoded, seen = saved["digit_token_map"], saved["digit_decoded"], saved["digit_input"]
    assert token_map.shape == decoded.shape == seen.shape == (256, 256, 3)
    cells = token_map.reshape(16, 16, 16, 16, 3)  # grid row, pixel row, grid col, pixel col
    assert np.abs(cells - cells[:, :1, :, :1]).max() < 1.5 / 255  # every token a flat 16 px square
    colours = {tuple(np.round(c * 255).astype(int)) for c in cells[:, 0, :, 0].reshape(-1, 3)}
    assert len(colours) > 8  # the fox and the background get different tokens
    # nearest-training-patch decoding resembles the picture better than its mean colour does
    assert np.abs(decoded - seen).mean() < np.abs(seen - seen.mean((0, 1))).mean()


def test_bad_image_size_is_rejected_at_queue_time(comfy_server):
    prompt = copy.deepcopy(load_api("digit_tokenize"))
    name = next(n["inputs"]["image"] for n in prompt.values() if n["class_type"] == "LoadImage")
    write_example(comfy_server.input_dir / name)  # so that validation reaches the tokenize node
    tok = next(k for k, n in prompt.items() if n["class_type"] == "UltraResDiGITTokenize")
    prompt[tok]["inputs"]["image_size"] = 250
    status, body = comfy_server.post_prompt(prompt)
    assert status == 400
    assert "multiple of 16" in str(body["node_errors"][tok])
    # an unknown combo value is a 400 too (ComfyUI 0.3.75 leaves V3 combos to the node's own check)
    prompt[tok]["inputs"]["image_size"] = 256
    prompt[tok]["inputs"]["fit"] = "zoom"
    status, body = comfy_server.post_prompt(prompt)
    assert status == 400, body
    assert "fit='zoom' is not one of" in str(body["node_errors"][tok]), body


class _Payload:
    """Unpickling this would create ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_hostile_model_files_fail_with_a_named_message(comfy_server):
    """Files dropped into models/digit: a pickle with code, random bytes as .safetensors, a .npy
    whose header claims 3 PB. The server reports our message (relative name, what to do), runs
    nothing, allocates nothing, and stays up."""
    import torch
    from harness.server import PromptFailed

    d = comfy_server.models_dir / "digit"
    d.mkdir(parents=True, exist_ok=True)
    marker = d / "pwned"
    torch.save({"cls_token": torch.zeros(1, 1, 64), "x": _Payload(marker)}, d / "evil_encoder.pth")
    (d / "random_encoder.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f4", "fortran_order": False, "shape": (1 << 40, 768)}
    )
    (d / "huge_codebook.npy").write_bytes(buf.getvalue() + b"\0" * 64)
    base = load_api("digit_tokenize")
    name = next(n["inputs"]["image"] for n in base.values() if n["class_type"] == "LoadImage")
    write_example(comfy_server.input_dir / name)
    cases = [
        (
            "UltraResDiGITEncoderLoader",
            "encoder_name",
            "evil_encoder.pth",
            "not a plain PyTorch weights file",
        ),
        (
            "UltraResDiGITEncoderLoader",
            "encoder_name",
            "random_encoder.safetensors",
            "safetensors header claims",
        ),
        (
            "UltraResDiGITCodebookLoader",
            "codebook_name",
            "huge_codebook.npy",
            "has shape (1099511627776, 768)",
        ),
    ]
    for node_type, key, fname, what in cases:
        prompt = copy.deepcopy(base)
        nid = next(k for k, n in prompt.items() if n["class_type"] == node_type)
        prompt[nid]["inputs"][key] = fname
        with pytest.raises(PromptFailed) as err:
            comfy_server.run_prompt(prompt, timeout=300)
        first = str(err.value).split("\n")[0]  # what the user is shown: the exception message
        assert f"{key} '{fname}'" in first and what in first, first
        assert str(d) not in first and str(comfy_server.models_dir) not in first
        assert "weights_only=False" not in str(err.value)
    assert not marker.exists()
    assert comfy_server.get_json("/system_stats")  # still up


def test_nan_and_wrong_types_are_rejected_at_queue_time(comfy_server):
    prompt = copy.deepcopy(load_api("digit_tokenize"))
    name = next(n["inputs"]["image"] for n in prompt.values() if n["class_type"] == "LoadImage")
    write_example(comfy_server.input_dir / name)
    tok = next(k for k, n in prompt.items() if n["class_type"] == "UltraResDiGITTokenize")
    enc = next(k for k, n in prompt.items() if n["class_type"] == "UltraResDiGITEncoderLoader")
    for node, key, value, what in (
        (tok, "image_size", float("nan"), "image_size=nan is not a finite number"),
        (tok, "image_size", "big", "image_size='big' is not a whole number"),
        (enc, "interpolation", "meta", "interpolation='meta' is not one of: digit, hub"),
    ):
        bad = copy.deepcopy(prompt)
        bad[node]["inputs"][key] = value
        status, body = comfy_server.post_prompt(bad)
        assert status == 400, body
        assert what in str(body["node_errors"][node]), body
