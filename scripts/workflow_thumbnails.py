"""Template-browser thumbnails: workflows/<name>.jpg for every workflows/<name>.json.

ComfyUI lists a custom node's workflows/*.json under Workflow -> Browse Templates and its frontend
(1.32) shows ``/api/workflow_templates/<pack>/<name>.jpg`` as the card's picture. This draws the
workflow's own graph: one box per node at its saved position (UltraRes nodes highlighted), the links
coloured by type, and the workflow's title. Pure PIL, deterministic, no ComfyUI needed:

    .venv/bin/python scripts/workflow_thumbnails.py            # (re)write every thumbnail
    .venv/bin/python scripts/workflow_thumbnails.py --check    # exit 1 if one is missing or stale
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
SIZE = (512, 384)  # 4:3, the template cards' aspect
HEADER = 58
QUALITY = 82
MAX_BYTES = 60_000
BG, PANEL, TEXT = (32, 33, 36), (53, 53, 58), (225, 225, 225)
OURS, OURS_EDGE = (46, 78, 120), (120, 170, 240)
LINK_COLOURS = {  # ComfyUI's default link colours
    "MODEL": (178, 157, 255),
    "CLIP": (255, 210, 49),
    "VAE": (255, 97, 97),
    "LATENT": (255, 158, 208),
    "CONDITIONING": (255, 169, 100),
    "IMAGE": (100, 181, 246),
    "SIGMAS": (205, 255, 205),
    "INT": (160, 200, 160),
    "FLOAT": (160, 200, 160),
    "STRING": (160, 200, 160),
}
FONT_PATHS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "DejaVuSans.ttf")


def _font(size: int, bold: bool = False) -> ImageFont.ImageFont:
    for path in FONT_PATHS:
        try:
            return ImageFont.truetype(path.replace("Sans.ttf", "Sans-Bold.ttf") if bold else path, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def title_of(name: str) -> str:
    """The workflow's TITLE from its spec (workflows/specs/<name>.py), else its file name."""
    spec = WORKFLOWS / "specs" / f"{name}.py"
    if spec.exists():
        m = re.search(r'^TITLE\s*=\s*["\'](.+?)["\']\s*$', spec.read_text(), re.M)
        if m:
            return m.group(1)
    return name.replace("_", " ")


def _fit(text: str, font, width: float, draw: ImageDraw.ImageDraw) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _wrap(text: str, font, width: float, draw: ImageDraw.ImageDraw, lines: int = 2) -> list[str]:
    out, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not line:
            line = trial
        else:
            out.append(line)
            line = word
    out.append(line)
    if len(out) > lines:
        out = out[: lines - 1] + [" ".join(out[lines - 1 :])]
    return [_fit(line, font, width, draw) for line in out]


def node_label(node: dict) -> str:
    """The node's title, or its type (UltraRes types: prefix dropped, CamelCase split into words)."""
    if node.get("title"):
        return node["title"].replace(" (UltraRes)", "")
    label = node["type"]
    if not label.startswith("UltraRes"):
        return label
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z][a-z])|(?<=[A-Z])(?=[A-Z][a-z]{2,})", " ", label[len("UltraRes") :])
    return words.replace("Lin Fusion", "LinFusion")


def render(workflow: dict, title: str) -> Image.Image:
    img = Image.new("RGB", SIZE, BG)
    draw = ImageDraw.Draw(img)
    nodes = workflow["nodes"]
    title_h = 26  # node title bar height in graph units, as in LiteGraph
    x0 = min(n["pos"][0] for n in nodes)
    y0 = min(n["pos"][1] - title_h for n in nodes)
    x1 = max(n["pos"][0] + n["size"][0] for n in nodes)
    y1 = max(n["pos"][1] + n["size"][1] for n in nodes)
    pad = 14
    area = (pad, HEADER + pad // 2, SIZE[0] - pad, SIZE[1] - pad)
    scale = min((area[2] - area[0]) / (x1 - x0), (area[3] - area[1]) / (y1 - y0))
    ox = area[0] + ((area[2] - area[0]) - (x1 - x0) * scale) / 2
    oy = area[1] + ((area[3] - area[1]) - (y1 - y0) * scale) / 2

    def pt(x: float, y: float) -> tuple[float, float]:
        return ox + (x - x0) * scale, oy + (y - y0) * scale

    by_id = {n["id"]: n for n in nodes}

    def slot_y(node: dict, slot: int) -> float:
        return node["pos"][1] + 14 + 20 * slot

    for link in workflow["links"]:
        _, src, src_slot, dst, dst_slot, kind = link[:6]
        if src not in by_id or dst not in by_id:
            continue
        a, b = by_id[src], by_id[dst]
        p0 = pt(a["pos"][0] + a["size"][0], slot_y(a, src_slot))
        p3 = pt(b["pos"][0], slot_y(b, dst_slot))
        dx = max(abs(p3[0] - p0[0]) * 0.5, 12)
        pts = []
        for i in range(25):  # cubic Bezier, as LiteGraph's spline links
            t = i / 24
            u = 1 - t
            x = u**3 * p0[0] + 3 * u * u * t * (p0[0] + dx) + 3 * u * t * t * (p3[0] - dx) + t**3 * p3[0]
            y = u**3 * p0[1] + 3 * u * u * t * p0[1] + 3 * u * t * t * p3[1] + t**3 * p3[1]
            pts.append((x, y))
        draw.line(pts, fill=LINK_COLOURS.get(str(kind), (170, 170, 170)), width=2)

    label_size = max(9, min(13, int(11 * scale / 0.35)))
    font = _font(label_size)
    for n in nodes:
        left, top = pt(n["pos"][0], n["pos"][1] - title_h)
        right, bottom = pt(n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
        ours = n["type"].startswith("UltraRes")
        draw.rounded_rectangle(
            [left, top, right, bottom],
            radius=4,
            fill=OURS if ours else PANEL,
            outline=OURS_EDGE if ours else (90, 90, 96),
            width=2 if ours else 1,
        )
        draw.line([left + 1, top + title_h * scale, right - 1, top + title_h * scale], fill=(25, 25, 28))
        lines = _wrap(node_label(n), font, right - left - 6, draw, lines=3)
        ty = top + 3
        for line in lines:
            if ty + label_size > bottom:
                break
            draw.text((left + 4, ty), line, fill=TEXT, font=font)
            ty += label_size + 2

    draw.rectangle([0, 0, SIZE[0], HEADER - 6], fill=(22, 22, 25))
    head = _font(19, bold=True)
    lines = _wrap(title, head, SIZE[0] - 24, draw, lines=2)
    ty = (HEADER - 6 - len(lines) * 22) / 2
    for line in lines:
        draw.text((12, ty), line, fill=(240, 240, 240), font=head)
        ty += 22
    draw.text((SIZE[0] - 8, SIZE[1] - 6), "UltraRes", fill=OURS_EDGE, font=_font(11), anchor="rd")
    return img


def encode(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=QUALITY, optimize=True)
    return buf.getvalue()


def thumbnail_bytes(name: str) -> bytes:
    workflow = json.loads((WORKFLOWS / f"{name}.json").read_text())
    data = encode(render(workflow, title_of(name)))
    if len(data) > MAX_BYTES:
        raise ValueError(f"{name}.jpg would be {len(data)} bytes, over the {MAX_BYTES} limit")
    return data


def names() -> list[str]:
    return sorted(p.stem for p in WORKFLOWS.glob("*.json"))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed files instead of writing"
    )
    args = parser.parse_args()
    bad = 0
    for name in names():
        data, path = thumbnail_bytes(name), WORKFLOWS / f"{name}.jpg"
        if args.check:
            if not path.exists() or path.read_bytes() != data:
                print(
                    f"{path.relative_to(ROOT)}: missing or stale (run scripts/workflow_thumbnails.py)",
                    file=sys.stderr,
                )
                bad += 1
        else:
            path.write_bytes(data)
            print(f"{path.relative_to(ROOT)}: {len(data)} bytes")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
