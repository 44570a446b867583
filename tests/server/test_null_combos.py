"""A JSON ``null`` for a COMBO input is refused at queue time (HTTP 400) with a message naming the input.

Before, a null file name passed ComfyUI's queue check and crashed inside the node (the DiGIT loaders and
the LinFusion loader with ``join() argument must be str ... not 'NoneType'``, Tiled Diffusion with
``KeyError: None``). Where ComfyUI's own check runs (0.30.0, for a combo the node's ``validate_inputs``
does not take), it refuses null itself ("Value not in list"); ComfyUI 0.3.75 does not check V3 combos,
and a ``validate_inputs(**kwargs)`` (``nodes/_inputs.py``'s ``CheckedNode``) skips ComfyUI's check and
sees null as ``None``, the value a linked input has at queue time.

Every COMBO of every pack node is listed in :data:`COMBOS` (the first test keeps the list complete), and
each one's null is refused by name on both tested versions (``nodes/_inputs.py``: ``validate_inputs``
names ComfyUI's ``input_types``, so a None that is not a link is a null).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.server

COMBOS = {
    "UltraResDDIMInvert": ["scheduler"],
    "UltraResDDIMGenerate": ["scheduler"],
    "UltraResDomainScore": ["reference_file"],
    "UltraResDomainGaussian": ["spread"],
    "UltraResDiGITEncoderLoader": ["encoder_name", "interpolation"],
    "UltraResDiGITCodebookLoader": ["codebook_name"],
    "UltraResDiGITTokenize": ["fit"],
    "UltraResDiGITFitCodebook": ["fit"],
    "UltraResDiGITDecode": ["mode"],
    "UltraResLinFusionLoader": ["lf_name"],
    "UltraResLinFusionApply": ["precision"],
    "UltraResHDiTLoader": None,  # None: read from /object_info (another owner's node)
    "UltraResRelaySampler": None,
    "UltraResRelayUpscale": None,
    "UltraResTiledDiffusion": None,
    "UltraResCLEARLoader": None,
}
"""Node id -> its COMBO inputs (listed by hand for the nodes of the inversion, DiGIT and LinFusion files)."""


def _is_combo(spec) -> bool:
    return isinstance(spec[0], list) or spec[0] == "COMBO"


def _served_combos(info: dict) -> list[str]:
    return [
        name
        for section in ("required", "optional")
        for name, spec in info["input"].get(section, {}).items()
        if _is_combo(spec)
    ]


def test_every_combo_of_the_pack_is_listed(comfy, comfy_server):
    info = comfy_server.object_info()
    ours = {k: v for k, v in info.items() if k in comfy.pack_nodes}
    served = {k: _served_combos(v) for k, v in ours.items() if _served_combos(v)}
    assert set(served) == set(COMBOS), "a pack node gained or lost COMBO inputs: update COMBOS"
    for node_id, names in COMBOS.items():
        if names is not None:
            assert served[node_id] == names, node_id


def _cases():
    return [(node_id, name) for node_id, names in COMBOS.items() for name in names or ["*"]]  # *: all of them


def _prompt(info: dict, node_id: str, name: str) -> dict:
    """The node with every widget at its default (a combo without one: its first option), ``name`` set
    to null, its sockets left out, and a PreviewAny on its first output so that ComfyUI validates it."""
    inputs = {}
    for section in ("required", "optional"):
        for key, spec in info["input"].get(section, {}).items():
            opts = spec[1] if len(spec) > 1 else {}
            if _is_combo(spec):
                options = spec[0] if isinstance(spec[0], list) else opts.get("options", [])
                inputs[key] = opts.get("default", options[0] if options else "")
            elif spec[0] in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                inputs[key] = opts.get("default", {"STRING": ""}.get(spec[0], 0))
    inputs[name] = None
    return {
        "1": {"class_type": node_id, "inputs": inputs},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }


@pytest.mark.parametrize(("node_id", "name"), _cases())
def test_null_combo_is_refused_at_queue_time_naming_the_input(comfy_server, node_id, name):
    info = comfy_server.object_info(node_id)
    names = _served_combos(info) if name == "*" else [name]
    assert names, f"{node_id} serves no COMBO input"
    for combo in names:
        status, body = comfy_server.post_prompt(_prompt(info, node_id, combo))
        errors = body.get("node_errors", {}).get("1", {}).get("errors", [])
        refusals = [
            e
            for e in errors
            if e["type"] != "required_input_missing" and combo in e["details"] and "None" in e["details"]
        ]
        assert status == 400 and refusals, (combo, status, errors)
