"""Node help pages: web/docs/<NodeId>.md, shown by ComfyUI's frontend in its node help panel.

Each page is hand-written prose (what the node does, how to wire it, the paper) around one generated
block, the Inputs and Outputs tables, rendered from the node's schema as the server returns it at
/object_info, so names, defaults, ranges and tooltips cannot drift from the code:

    .venv/bin/python scripts/node_help.py            # rewrite the generated blocks (new pages get a stub)
    .venv/bin/python scripts/node_help.py --check    # exit 1 when a page is missing or its block differs

The test suite (tests/comfy/test_registry_pack.py) renders the blocks with this module's
``render_block`` and compares them with the committed pages, on both tested ComfyUI versions. The pages
are generated on the default version (0.30.0); the block holds only what comes from our own schema
fields, so it is the same on the floor (0.3.75). The one field ComfyUI serves differently is the name of
an output the schema names by id only: 0.30 serves the id (``latent``), 0.3.75 the type (``LATENT``).
``schema_info`` takes that name from the schema itself (display name, else id, else type: what 0.30
serves and the graph editor shows), so the block does not depend on the version.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "web" / "docs"
BEGIN = "<!-- generated:schema -- scripts/node_help.py writes this block from the node's schema -->"
END = "<!-- /generated:schema -->"
BLOCK_RE = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
# COMBO inputs whose options are the files found in a model/output folder: machine-dependent, so the
# table names the folder instead of listing them.
FILE_INPUTS = {
    "model_name": "a file in models/hdit",
    "lf_name": "a file in models/linfusion",
    "clear_name": "a file in models/clear",
    "encoder_name": "a file in models/digit",
    "codebook_name": "a .npy in models/digit",
    "reference_file": "(none) or a file in output/ultrares",
}
FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".npy", ".json", ".bin")


def _cell(text) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _num(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, int) and abs(v) >= 1 << 20:
        return f"{v:,}".replace(",", " ")
    return str(v)


def _spec(spec) -> tuple[str, dict, list | None]:
    """(type, options, combo choices) of one /object_info input spec."""
    kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if isinstance(kind, list):
        return "COMBO", opts, kind
    if kind == "COMBO":
        return "COMBO", opts, list(opts.get("options", []))
    return str(kind), opts, None


def _input_row(node_id: str, name: str, spec, optional: bool) -> str:
    kind, opts, choices = _spec(spec)
    default, values = "—", "—"
    if choices is not None:
        files = [c for c in choices if isinstance(c, str) and c.lower().endswith(FILE_SUFFIXES)]
        if name in FILE_INPUTS:
            values = FILE_INPUTS[name]
        elif files:
            raise ValueError(f"{node_id}.{name}: a COMBO of file names ({files[:3]}); add it to FILE_INPUTS")
        else:
            values = ", ".join(f"`{c}`" for c in choices)
            if "default" in opts:
                default = f"`{opts['default']}`"
    else:
        if "default" in opts:
            d = opts["default"]
            default = '`""`' if d == "" else f"`{_num(d)}`"
        if "min" in opts or "max" in opts:
            values = f"{_num(opts.get('min', '-inf'))} … {_num(opts.get('max', 'inf'))}"
            if opts.get("step") not in (None, 1) and kind == "INT":
                values += f", step {_num(opts['step'])}"
    label = f"`{name}`" + (" (optional)" if optional else "")
    return f"| {label} | {kind} | {default} | {values} | {_cell(opts.get('tooltip', ''))} |"


def render_block(node_id: str, info: dict) -> str:
    """The generated Inputs/Outputs block of one node from its /object_info entry."""
    lines = [BEGIN, "## Inputs", ""]
    rows = []
    for section in ("required", "optional"):
        group = info["input"].get(section, {})
        order = info.get("input_order", {}).get(section, list(group))
        for name in order:
            rows.append(_input_row(node_id, name, group[name], section == "optional"))
    if rows:
        lines += [
            "| Input | Type | Default | Range / choices | What it does |",
            "|---|---|---|---|---|",
            *rows,
        ]
    else:
        lines.append("None: the node has no inputs.")
    lines += ["", "## Outputs", "", "| Output | Type | What it is |", "|---|---|---|"]
    names = info.get("output_name") or info["output"]
    tips = info.get("output_tooltips") or [""] * len(info["output"])
    for name, kind, tip in zip(names, info["output"], tips):
        kind = "COMBO" if isinstance(kind, list) else kind
        lines.append(f"| `{name}` | {kind} | {_cell(tip or '')} |")
    if info.get("output_node"):
        lines += ["", "This is an output node: it runs even when nothing is connected to its outputs."]
    lines.append(END)
    return "\n".join(lines)


def output_names(cls: type) -> list[str] | None:
    """A V3 node's output names from its own schema (display name, else the id it was given, else the
    type), as ComfyUI 0.30 serves them; None for a V1 node (RETURN_NAMES are served as written). The
    schema is read before ComfyUI finalizes it, which gives unnamed outputs ids like ``_0_MODEL_``."""
    if getattr(cls, "GET_SCHEMA", None) is None:
        return None
    return [o.display_name or o.id or o.io_type for o in cls.define_schema().outputs or []]


def schema_info(cls: type, info: dict) -> dict:
    """``info`` (the node's /object_info entry) with the output names from our schema: the same on every
    ComfyUI version (0.3.75 serves the type where the schema gives only an id)."""
    names = output_names(cls)
    return info if names is None else {**info, "output_name": names}


def page_path(node_id: str) -> Path:
    return DOCS / f"{node_id}.md"


def stub(node_id: str, info: dict) -> str:
    return f"# {info['display_name']}\n\n{info.get('description', '')}\n\n{render_block(node_id, info)}\n"


def pack_infos() -> dict[str, dict]:
    """Every UltraRes node's /object_info entry, from ComfyUI booted in this process on the CPU."""
    from ultrares.devtools.comfy_host import boot  # "ultrares" is this checkout (make setup links it)

    runtime = boot(cpu=True)
    infos = {}
    for node_id in runtime.pack_nodes:
        cls = runtime.node_class(node_id)
        infos[node_id] = schema_info(cls, cls.GET_NODE_INFO_V1())
    return infos


def update(infos: dict[str, dict], check: bool) -> list[str]:
    """Rewrite (or, with check, compare) every page's generated block; returns the problems."""
    problems = []
    for node_id, info in sorted(infos.items()):
        path = page_path(node_id)
        block = render_block(node_id, info)
        if not path.exists():
            if check:
                problems.append(f"{path.relative_to(ROOT)}: missing (run scripts/node_help.py)")
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(stub(node_id, info))
            continue
        text = path.read_text()
        found = BLOCK_RE.findall(text)
        if len(found) != 1:
            problems.append(
                f"{path.relative_to(ROOT)}: needs exactly one generated block ({len(found)} found)"
            )
            continue
        if found[0] != block:
            if check:
                problems.append(
                    f"{path.relative_to(ROOT)}: generated block differs from the schema "
                    "(run scripts/node_help.py)"
                )
            else:
                path.write_text(text.replace(found[0], block))
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed pages instead of writing"
    )
    args = parser.parse_args()
    problems = update(pack_infos(), args.check)
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
