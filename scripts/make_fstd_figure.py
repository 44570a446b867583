"""Draw docs/images/fstd_grids.png: the tiles the planner evaluates per step (FSTD vs MultiDiffusion).

.venv/bin/python scripts/make_fstd_figure.py
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw
from ultrares.kernels.tiled_diffusion import TilePlanner

ROOT = Path(__file__).resolve().parents[1]
SCALE = 2  # screen pixels per latent pixel
LAT = 192  # a 1536x1536 image in an 8x latent
TILE = 64  # 512 px tiles
COLOURS = [(230, 85, 60), (60, 130, 220), (60, 170, 90), (200, 150, 40), (150, 80, 200), (40, 170, 170)]


def panel(plan, title: str) -> Image.Image:
    size = LAT * SCALE
    img = Image.new("RGB", (size + 20, size + 44), "white")
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    if plan.uncovered is not None:
        ys, xs = plan.uncovered.nonzero(as_tuple=True)
        for y, x in zip(ys.tolist(), xs.tolist()):
            d.rectangle(
                [x * SCALE, y * SCALE, x * SCALE + SCALE - 1, y * SCALE + SCALE - 1], fill=(40, 40, 40, 200)
            )
    for i, t in enumerate(plan.tiles):
        c = COLOURS[i % len(COLOURS)]
        box = [t.x * SCALE, t.y * SCALE, (t.x + t.w) * SCALE - 1, (t.y + t.h) * SCALE - 1]
        d.rectangle(box, fill=(*c, 70), outline=(*c, 255), width=2)
    img.paste(layer, (10, 34), layer)
    ImageDraw.Draw(img).rectangle([10, 34, 10 + size - 1, 34 + size - 1], outline="black")
    ImageDraw.Draw(img).text((10, 8), title, fill="black")
    return img


def main() -> None:
    fstd = TilePlanner("fstd", LAT, LAT, TILE, TILE, reset_interval=4, seed=3)
    md = TilePlanner("multidiffusion", LAT, LAT, TILE, TILE, overlap=5)
    panels = [
        panel(fstd.plan(s), f"FSTD step {s}: offset {fstd.plan(s).offset}, {len(fstd.plan(s).tiles)} tiles")
        for s in range(4)
    ]
    mplan = md.plan(0)
    panels.append(
        panel(mplan, f"MultiDiffusion: {len(mplan.tiles)} tiles, area x{mplan.tile_area_ratio:.2f}")
    )
    width = sum(p.width for p in panels)
    out = Image.new("RGB", (width, panels[0].height + 24), "white")
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width
    ImageDraw.Draw(out).text(
        (10, panels[0].height + 4),
        "1536x1536 image, 512 px tiles. Dark: strips filled from "
        "the previous step's noise prediction (FSTD). Overlaps show as darker tints.",
        fill="black",
    )
    path = ROOT / "docs" / "images" / "fstd_grids.png"
    out.save(path)
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
