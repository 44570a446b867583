"""Write the subgraph blueprints in this folder from the specs below (run on the default ComfyUI, 0.30.0):

    .venv/bin/python subgraphs/_build.py           # rewrite subgraphs/*.json
    .venv/bin/python subgraphs/_build.py --check   # exit 1 if a committed file differs

ComfyUI 0.30 serves ``<custom_nodes>/<pack>/subgraphs/*.json`` at ``/global_subgraphs`` and the graph
editor lists them in the node library; the format is core's ``blueprints/*.json``: a one-node graph whose
node's ``type`` is the id of a subgraph in ``definitions.subgraphs``. Each spec names the inner nodes with
their widget values, the links between them, the subgraph's inputs (sockets, or widgets promoted onto the
blueprint node through ``proxyWidgets``) and outputs. Widget order and ``control_after_generate`` come
from the running ComfyUI's node definitions. Not shipped (``.comfyignore``); the JSON files are.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NS = uuid.UUID("5b0f3c52-93a4-4b5e-9d6e-2a3c1d0e7f11")  # stable ids: uuid5(NS, name)
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
VERSION = "0.1.0"

# A spec: nodes {key: (class_type, {widget: value}, title or None)}; links [(src key, src slot, dst key,
# dst input)]; inputs [(name, type, [(dst key, dst input)], default value for promoted widgets or None)];
# outputs [(name, type, src key, src slot)].
TILED_4K = {
    "name": "Tiled Upscale to 4K (UltraRes FSTD)",
    "category": "UltraRes/upscale",
    "description": "Upscales an image to 3840x2160 (4K UHD; width and height on the node): an optional upscale "
    "model (open the subgraph and bypass 'Upscale Image (using Model)' to go without one), a resize to the "
    "target size (centre crop keeps the aspect), tiled VAE encode, img2img with Tiled Diffusion (FSTD, "
    "512 px tiles: SD1.5's native size, 1024 for SDXL) at the target size, tiled VAE decode.",
    "nodes": {
        "loader": ("UpscaleModelLoader", {"model_name": "RealESRGAN_x4plus.safetensors"}, None),
        "model_up": ("ImageUpscaleWithModel", {}, None),
        "resize": (
            "ImageScale",
            {"upscale_method": "lanczos", "width": 3840, "height": 2160, "crop": "center"},
            None,
        ),
        "encode": (
            "VAEEncodeTiled",
            {"tile_size": 512, "overlap": 64, "temporal_size": 64, "temporal_overlap": 8},
            None,
        ),
        "tiled": (
            "UltraResTiledDiffusion",
            {
                "method": "FSTD",
                "tile_width": 512,
                "tile_height": 512,
                "overlap": 64,
                "tile_batch_size": 4,
                "reset_interval": 4,
                "seed": 0,
            },
            None,
        ),
        "sampler": (
            "KSampler",
            {
                "seed": 0,
                "steps": 20,
                "cfg": 7.0,
                "sampler_name": "dpmpp_2m",
                "scheduler": "karras",
                "denoise": 0.35,
            },
            "img2img at the target size (tiled)",
        ),
        "decode": (
            "VAEDecodeTiled",
            {"tile_size": 512, "overlap": 64, "temporal_size": 64, "temporal_overlap": 8},
            None,
        ),
    },
    "links": [
        ("loader", 0, "model_up", "upscale_model"),
        ("model_up", 0, "resize", "image"),
        ("resize", 0, "encode", "pixels"),
        ("tiled", 0, "sampler", "model"),
        ("encode", 0, "sampler", "latent_image"),
        ("sampler", 0, "decode", "samples"),
    ],
    "inputs": [
        ("image", "IMAGE", [("model_up", "image")], None),
        ("model", "MODEL", [("tiled", "model")], None),
        ("positive", "CONDITIONING", [("sampler", "positive")], None),
        ("negative", "CONDITIONING", [("sampler", "negative")], None),
        ("vae", "VAE", [("encode", "vae"), ("decode", "vae")], None),
        ("upscale_model_name", "COMBO", [("loader", "model_name")], "RealESRGAN_x4plus.safetensors"),
        ("width", "INT", [("resize", "width")], 3840),
        ("height", "INT", [("resize", "height")], 2160),
        ("denoise", "FLOAT", [("sampler", "denoise")], 0.35),
        ("steps", "INT", [("sampler", "steps")], 20),
        ("seed", "INT", [("sampler", "seed")], 0),
    ],
    "outputs": [("IMAGE", "IMAGE", "decode", 0)],
}

RELAY_X4 = {
    "name": "Relay Upscale x4",
    "category": "UltraRes/upscale",
    "description": "Relay Diffusion stage two at 4x: VAE-encodes the image, up-samples the latent 4x and "
    "continues the diffusion from the truncation sigma with blurring and block noise (Relay Upscale "
    "(UltraRes)), then decodes with the tiled VAE decoder. Works with the model that made the image.",
    "nodes": {
        "encode": ("VAEEncode", {}, None),
        "relay": (
            "UltraResRelayUpscale",
            {"factor": 4, "seed": 0, "steps": 30, "truncation_sigma": 0.9, "rho": 7.0, "cfg": 7.0},
            None,
        ),
        "decode": (
            "VAEDecodeTiled",
            {"tile_size": 512, "overlap": 64, "temporal_size": 64, "temporal_overlap": 8},
            None,
        ),
    },
    "links": [("encode", 0, "relay", "latent"), ("relay", 0, "decode", "samples")],
    "inputs": [
        ("image", "IMAGE", [("encode", "pixels")], None),
        ("model", "MODEL", [("relay", "model")], None),
        ("positive", "CONDITIONING", [("relay", "positive")], None),
        ("negative", "CONDITIONING", [("relay", "negative")], None),
        ("vae", "VAE", [("encode", "vae"), ("decode", "vae")], None),
        ("steps", "INT", [("relay", "steps")], 30),
        ("truncation_sigma", "FLOAT", [("relay", "truncation_sigma")], 0.9),
        ("cfg", "FLOAT", [("relay", "cfg")], 7.0),
        ("seed", "INT", [("relay", "seed")], 0),
    ],
    "outputs": [("IMAGE", "IMAGE", "decode", 0)],
}

SPECS = [TILED_4K, RELAY_X4]


def _input_defs(info: dict) -> list[tuple[str, str, dict, bool]]:
    """(name, type, options, optional) of every input of a node definition (/object_info), in order."""
    out = []
    for group, optional in (("required", False), ("optional", True)):
        for name, spec in info["input"].get(group, {}).items():
            typ = "COMBO" if isinstance(spec[0], list) else spec[0]
            out.append((name, typ, spec[1] if len(spec) > 1 else {}, optional))
    return out


def _widget_values(info: dict, values: dict) -> list:
    """The node's widgets_values: every widget input in definition order (the given value, else the
    default, else a combo's first option), "fixed" after a seed with control_after_generate."""
    out = []
    for name, typ, opts, _ in _input_defs(info):
        if typ not in WIDGET_TYPES or opts.get("forceInput"):
            continue
        if name in values:
            v = values[name]
        elif "default" in opts:
            v = opts["default"]
        else:
            spec = info["input"].get("required", {}).get(name) or info["input"]["optional"][name]
            v = spec[0][0] if isinstance(spec[0], list) and spec[0] else (opts.get("options") or [None])[0]
        out.append(v)
        if opts.get("control_after_generate"):
            out.append("fixed")
    unknown = set(values) - {n for n, *_ in _input_defs(info)}
    if unknown:
        raise ValueError(f"{info['name']}: no widget named {sorted(unknown)}")
    return out


def build(spec: dict, object_info) -> dict:
    sg_id = str(uuid.uuid5(NS, spec["name"]))
    keys = list(spec["nodes"])
    ids = {k: i + 1 for i, k in enumerate(keys)}
    infos = {k: object_info(spec["nodes"][k][0]) for k in keys}
    links, next_link = [], [1]
    in_links: dict[tuple[int, str], int] = {}
    out_links: dict[tuple[int, int], list[int]] = {}

    linked = {(dst, name) for _, _, dst, name in spec["links"]}
    linked |= {(key, inp) for _, _, targets, _ in spec["inputs"] for key, inp in targets}

    def is_widget(typ, opts):
        return typ in WIDGET_TYPES and not opts.get("forceInput")

    def slot_of(key, input_name):
        """The input's index in the node's serialized inputs (sockets and linked widgets), as
        LiteGraph's target_slot counts (frontend 1.32 resolves links by it, not by name)."""
        names = [
            n for n, typ, opts, _ in _input_defs(infos[key]) if not is_widget(typ, opts) or (key, n) in linked
        ]
        if input_name not in names:
            raise ValueError(f"{spec['nodes'][key][0]} has no input {input_name!r}")
        return names.index(input_name)

    def link(origin_id, origin_slot, key, input_name, typ):
        lid = next_link[0]
        next_link[0] += 1
        links.append(
            {
                "id": lid,
                "origin_id": origin_id,
                "origin_slot": origin_slot,
                "target_id": ids[key],
                "target_slot": slot_of(key, input_name),
                "type": typ,
            }
        )
        in_links[(ids[key], input_name)] = lid
        out_links.setdefault((origin_id, origin_slot), []).append(lid)
        return lid

    for src, slot, dst, name in spec["links"]:
        link(ids[src], slot, dst, name, infos[src]["output"][slot])
    sg_inputs = []
    for i, (name, typ, targets, _) in enumerate(spec["inputs"]):
        lids = [link(-10, i, key, inp, typ) for key, inp in targets]
        sg_inputs.append(
            {
                "id": str(uuid.uuid5(NS, f"{spec['name']}/in/{name}")),
                "name": name,
                "type": typ,
                "linkIds": lids,
                "localized_name": name,
                "pos": [0, 20 * i],
            }
        )
    sg_outputs = []
    for i, (name, typ, src, slot) in enumerate(spec["outputs"]):
        lid = next_link[0]
        next_link[0] += 1
        links.append(
            {
                "id": lid,
                "origin_id": ids[src],
                "origin_slot": slot,
                "target_id": -20,
                "target_slot": i,
                "type": typ,
            }
        )
        out_links.setdefault((ids[src], slot), []).append(lid)
        sg_outputs.append(
            {
                "id": str(uuid.uuid5(NS, f"{spec['name']}/out/{name}")),
                "name": name,
                "type": typ,
                "linkIds": [lid],
                "localized_name": name,
                "pos": [0, 20 * i],
            }
        )

    nodes = []
    for order, key in enumerate(keys):
        class_type, values, title = spec["nodes"][key]
        info, nid = infos[key], ids[key]
        inputs = []
        for name, typ, opts, optional in _input_defs(info):
            widget = is_widget(typ, opts)
            lid = in_links.get((nid, name))
            if widget and lid is None:
                continue  # a plain widget (in widgets_values only)
            entry = {"localized_name": name, "name": name, "type": typ, "link": lid}
            if widget:
                entry["widget"] = {"name": name}
            if optional:
                entry["shape"] = 7
            inputs.append(entry)
        outputs = [
            {"localized_name": n, "name": n, "type": t, "links": out_links.get((nid, slot), [])}
            for slot, (t, n) in enumerate(zip(info["output"], info["output_name"]))
        ]
        node = {
            "id": nid,
            "type": class_type,
            "pos": [300 * order, 100 * (order % 2)],
            "size": [300, 120],
            "flags": {},
            "order": order,
            "mode": 0,
            "inputs": inputs,
            "outputs": outputs,
            "properties": {"Node name for S&R": class_type},
            "widgets_values": _widget_values(info, values),
        }
        if title:
            node["title"] = title
        nodes.append(node)

    host_inputs, proxy = [], []
    for name, typ, targets, default in spec["inputs"]:
        for key, inp in targets if typ in WIDGET_TYPES else ():
            if spec["nodes"][key][1].get(inp) != default:
                raise ValueError(
                    f"{spec['name']}: promoted {name}={default!r} but {key}.{inp} holds the value shown"
                )
        entry = {"localized_name": name, "name": name, "type": typ, "link": None}
        if typ in WIDGET_TYPES:
            entry["widget"] = {"name": name}
            proxy.append(["-1", name])
        host_inputs.append(entry)
    last_node = len(keys) + 1
    return {
        "revision": 0,
        "last_node_id": last_node,
        "last_link_id": 0,
        "nodes": [
            {
                "id": last_node,
                "type": sg_id,
                "pos": [0, 0],
                "size": [320, 60 + 24 * len(host_inputs)],
                "flags": {},
                "order": 0,
                "mode": 0,
                "inputs": host_inputs,
                "outputs": [
                    {"localized_name": n, "name": n, "type": t, "links": []} for n, t, *_ in spec["outputs"]
                ],
                "title": spec["name"],
                "properties": {"proxyWidgets": proxy, "cnr_id": "ultrares", "ver": VERSION},
                # promoted widgets show the inner widgets' values: frontend 1.32 (ComfyUI 0.3.75) would write
                # host values into the wrong inner widgets (it reads proxyWidgets differently)
                "widgets_values": [],
            }
        ],
        "links": [],
        "version": 0.4,
        "definitions": {
            "subgraphs": [
                {
                    "id": sg_id,
                    "version": 1,
                    "state": {
                        "lastGroupId": 0,
                        "lastNodeId": len(keys),
                        "lastLinkId": next_link[0] - 1,
                        "lastRerouteId": 0,
                    },
                    "revision": 0,
                    "config": {},
                    "name": spec["name"],
                    "inputNode": {"id": -10, "bounding": [-400, 0, 120, 40 + 20 * len(sg_inputs)]},
                    "outputNode": {"id": -20, "bounding": [300 * len(keys) + 100, 0, 120, 60]},
                    "inputs": sg_inputs,
                    "outputs": sg_outputs,
                    "widgets": [],
                    "nodes": nodes,
                    "groups": [],
                    "links": links,
                    "extra": {"workflowRendererVersion": "LG"},
                    "category": spec["category"],
                    "description": spec["description"],
                }
            ]
        },
        "extra": {},
    }


def render(spec: dict, object_info) -> str:
    return json.dumps(build(spec, object_info), indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    from ultrares.devtools import comfy_host as boot  # "ultrares" is this checkout

    rt = boot.boot(cpu=True)
    check = "--check" in argv
    bad = []
    for spec in SPECS:
        path = HERE / f"{spec['name']}.json"
        text = render(spec, rt.object_info)
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                bad.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
            print("wrote", path.relative_to(ROOT))
    if bad:
        print("out of date (run .venv/bin/python subgraphs/_build.py):", ", ".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
