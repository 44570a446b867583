"""Build each workflow in both ComfyUI formats from one Python spec, so the two cannot drift.

A spec is ``workflows/specs/<name>.py`` defining ``TITLE`` (str) and ``build(g: Graph)``:

    TITLE = "FSTD txt2img 2048x2048 (SD1.5)"
    def build(g):
        ckpt = g.node("CheckpointLoaderSimple", ckpt_name="v1-5-pruned-emaonly.safetensors")
        pos = g.node("CLIPTextEncode", clip=ckpt[1], text="a castle")
        ...
        g.node("SaveImage", images=decoded[0], filename_prefix="ultrares/fstd")

``g.node(class_type, **inputs)`` returns a handle; ``handle[i]`` is its i-th output. A handle
output passed as an input becomes a link, anything else a widget value (missing widgets take
the node's default). Node definitions come from the real ComfyUI (booted in-process), so widget
order, ``control_after_generate`` and upload widgets follow what the graph editor expects.

    .venv/bin/python scripts/workflow_builder.py            # rebuild every spec
    .venv/bin/python scripts/workflow_builder.py fstd_sd15   # one spec
    .venv/bin/python scripts/workflow_builder.py --check     # exit 1 if a committed JSON differs
Writes ``workflows/<name>.json`` (UI graph, shown as a template) and ``workflows/api/<name>.json``.

The files are written on the default ComfyUI version (0.30.0; writing on another one is refused). On
another tested version ``--check`` compares only what is meant to be the same on every version, the
graph (``graph_of``: nodes, their widget values and links, the prompt's inputs), not what ComfyUI
itself names differently (core display names in ``_meta.title``, output slot names, the IMAGE output
0.30 gives SaveImage/PreviewImage).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ultrares.devtools import comfy_host as host  # "ultrares" is this checkout (make setup links it)

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "workflows" / "specs"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


@dataclass(frozen=True)
class Ref:
    node: int
    slot: int


class Handle:
    def __init__(self, graph: Graph, node_id: int):
        self.graph, self.id = graph, node_id

    def __getitem__(self, slot: int) -> Ref:
        n_out = len(self.graph.info(self.graph.nodes[self.id]["class_type"])["output"])
        if not 0 <= slot < n_out:
            raise IndexError(f"node {self.id} has {n_out} outputs, not {slot + 1}")
        return Ref(self.id, slot)


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


class Graph:
    def __init__(self, object_info: dict[str, dict]):
        self.object_info = object_info
        self.nodes: dict[int, dict[str, Any]] = {}

    def info(self, class_type: str) -> dict:
        if class_type not in self.object_info:
            raise KeyError(f"unknown node type {class_type!r}")
        return self.object_info[class_type]

    def node(self, class_type: str, title: str | None = None, **inputs: Any) -> Handle:
        info = self.info(class_type)
        known = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        unknown = set(inputs) - set(known)
        if unknown:
            raise KeyError(f"{class_type} has no input(s) {sorted(unknown)}; it has {list(known)}")
        node_id = len(self.nodes) + 1
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs, "title": title}
        return Handle(self, node_id)

    # ----- formats -----
    def _ordered_inputs(self, class_type: str):
        info = self.info(class_type)
        for section in ("required", "optional"):
            specs = info["input"].get(section, {})
            for name in info.get("input_order", {}).get(section, list(specs)):
                yield name, specs[name], section == "required"

    def to_api(self) -> dict:
        prompt = {}
        for node_id, node in self.nodes.items():
            inputs = {}
            for name, spec, required in self._ordered_inputs(node["class_type"]):
                if name in node["inputs"]:
                    value = node["inputs"][name]
                    inputs[name] = [str(value.node), value.slot] if isinstance(value, Ref) else value
                elif _is_widget(spec) and required:
                    inputs[name] = self._default(node["class_type"], name, spec)
            entry = {"inputs": inputs, "class_type": node["class_type"]}
            entry["_meta"] = {
                "title": node["title"]
                or self.info(node["class_type"]).get("display_name")
                or node["class_type"]
            }
            prompt[str(node_id)] = entry
        return prompt

    def _default(self, class_type: str, name: str, spec: list):
        opts = spec[1] if len(spec) > 1 else {}
        if "default" in opts:
            return opts["default"]
        if isinstance(spec[0], list) and spec[0]:
            return spec[0][0]
        if spec[0] == "COMBO" and opts.get("options"):
            return opts["options"][0]
        raise ValueError(f"{class_type}.{name} has no default: give it a value in the spec")

    def _depths(self) -> dict[int, int]:
        depth: dict[int, int] = {}

        def visit(nid: int) -> int:
            if nid not in depth:
                parents = [v.node for v in self.nodes[nid]["inputs"].values() if isinstance(v, Ref)]
                depth[nid] = 1 + max((visit(p) for p in parents), default=-1)
            return depth[nid]

        for nid in self.nodes:
            visit(nid)
        return depth

    def to_ui(self, title: str) -> dict:
        depths = self._depths()
        column_fill: dict[int, int] = {}
        links, ui_nodes = [], {}
        for node_id, node in self.nodes.items():
            info = self.info(node["class_type"])
            col = depths[node_id]
            row = column_fill.get(col, 0)
            column_fill[col] = row + 1
            ui = {
                "id": node_id,
                "type": node["class_type"],
                "pos": [40 + 380 * col, 40 + 260 * row],
                "size": [340, 200],
                "flags": {},
                "order": 0,
                "mode": 0,
                "inputs": [],
                "outputs": [],
                "properties": {"Node name for S&R": node["class_type"]},
                "widgets_values": [],
            }
            if node["title"]:
                ui["title"] = node["title"]
            for name, spec, required in self._ordered_inputs(node["class_type"]):
                value = node["inputs"].get(name)
                if _is_widget(spec):
                    # The editor keeps a widget (and its value) even when the input is linked.
                    if name in node["inputs"] and not isinstance(value, Ref):
                        ui["widgets_values"].append(value)
                    elif required or isinstance(value, Ref):
                        ui["widgets_values"].append(self._default(node["class_type"], name, spec))
                    if name in node["inputs"] or required:
                        opts = spec[1] if len(spec) > 1 else {}
                        control = opts.get("control_after_generate")
                        if control is None:  # the editor adds one to any INT seed input by name
                            control = spec[0] == "INT" and name in ("seed", "noise_seed")
                        if control:
                            ui["widgets_values"].append("fixed")
                        if opts.get("image_upload"):
                            ui["widgets_values"].append("image")
                    if not isinstance(value, Ref):
                        continue
                slot = {"name": name, "type": spec[0] if isinstance(spec[0], str) else "COMBO", "link": None}
                if isinstance(value, Ref):
                    link_id = len(links) + 1
                    src_type = self.info(self.nodes[value.node]["class_type"])["output"][value.slot]
                    links.append([link_id, value.node, value.slot, node_id, len(ui["inputs"]), src_type])
                    slot["link"] = link_id
                elif not required:
                    continue
                if _is_widget(spec):
                    slot["widget"] = {"name": name}
                ui["inputs"].append(slot)
            names = info.get("output_name") or info["output"]
            for i, out_type in enumerate(info["output"]):
                ui["outputs"].append(
                    {
                        "name": names[i],
                        "type": out_type,
                        "slot_index": i,
                        "links": [lk[0] for lk in links if lk[1] == node_id and lk[2] == i],
                    }
                )
            ui_nodes[node_id] = ui
        # outputs' link lists are complete only once every consumer was visited
        for ui in ui_nodes.values():
            for i, out in enumerate(ui["outputs"]):
                out["links"] = [lk[0] for lk in links if lk[1] == ui["id"] and lk[2] == i]
        for order, nid in enumerate(sorted(ui_nodes, key=lambda n: (depths[n], n))):
            ui_nodes[nid]["order"] = order
        return {
            "last_node_id": max(ui_nodes, default=0),
            "last_link_id": len(links),
            "nodes": list(ui_nodes.values()),
            "links": links,
            "groups": [],
            "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}, "ultrares": {"title": title}},
            "version": 0.4,
        }


def load_spec(name: str):
    path = SPECS / f"{name}.py"
    if str(SPECS) not in sys.path:
        sys.path.insert(0, str(SPECS))  # specs share workflows/specs/_common.py
    spec = importlib.util.spec_from_file_location(f"workflow_spec_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_spec(name: str, object_info: dict) -> tuple[dict, dict]:
    module = load_spec(name)
    graph = Graph(object_info)
    module.build(graph)
    return graph.to_ui(module.TITLE), graph.to_api()


def in_process_object_info() -> dict:
    """/object_info of every node of ComfyUI booted in this process on the CPU with the pack."""
    runtime = host.boot(cpu=True)
    return {name: host.node_info(cls, name) for name, cls in runtime.nodes.items()}


def graph_of(ui: dict, api: dict) -> dict:
    """What a workflow is on every ComfyUI version: the prompt's nodes and inputs, and the UI graph's
    nodes (type, title, place, mode, widget values, linked inputs, linked outputs) and links; without
    ComfyUI's own names (``_meta.title`` of core nodes, output slot names) and unlinked output slots."""
    nodes = []
    for n in ui["nodes"]:
        outputs = [(o["slot_index"], o["type"], o["links"]) for o in n["outputs"] if o["links"]]
        keep = {k: v for k, v in n.items() if k not in ("outputs", "inputs")}
        inputs = [(i["name"], i["type"], i["link"], "widget" in i) for i in n["inputs"]]
        nodes.append({**keep, "inputs": inputs, "outputs": outputs})
    return {
        "ui": {**{k: v for k, v in ui.items() if k != "nodes"}, "nodes": nodes},
        "api": {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()},
    }


def dump(obj: dict) -> str:
    return json.dumps(obj, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="spec names (default: all in workflows/specs)")
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed files instead of writing"
    )
    args = parser.parse_args(argv)
    names = args.names or sorted(p.stem for p in SPECS.glob("*.py") if not p.stem.startswith("_"))
    version = host.comfy_version()  # the ComfyUI this process boots (COMFYUI_VERSION / COMFYUI_PATH)
    default = version == host.DEFAULT_COMFYUI_VERSION
    if not args.check and not default:
        print(
            f"the workflows are written on ComfyUI {host.DEFAULT_COMFYUI_VERSION} (this is {version}): run "
            "without COMFYUI_VERSION / COMFYUI_PATH, or use --check to compare the graphs here"
        )
        return 2
    object_info = in_process_object_info()
    stale = []
    for name in names:
        ui, api = build_spec(name, object_info)
        ui_path = ROOT / "workflows" / f"{name}.json"
        api_path = ROOT / "workflows" / "api" / f"{name}.json"
        if args.check and not default:
            if not (ui_path.exists() and api_path.exists()) or graph_of(
                json.loads(ui_path.read_text()), json.loads(api_path.read_text())
            ) != graph_of(ui, api):
                stale.append(f"workflows/{name}.json, workflows/api/{name}.json (graph differs on {version})")
            continue
        for path, text in {ui_path: dump(ui), api_path: dump(api)}.items():
            if args.check:
                if not path.exists() or path.read_text() != text:
                    stale.append(str(path.relative_to(ROOT)))
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("out of date (run scripts/workflow_builder.py):\n  " + "\n  ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
