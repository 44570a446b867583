"""Where things are: the checkout, ComfyUI (``COMFYUI_PATH`` or the one ``make setup`` unpacked)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEST_PACKS = ROOT / "tests" / "comfy_packs"
WORKFLOWS = ROOT / "workflows"


def comfy_root() -> Path:
    env = os.environ.get("COMFYUI_PATH")
    if env:
        return Path(env).resolve()
    recorded = ROOT / ".comfyui" / "path"
    if recorded.exists():
        return Path(recorded.read_text().strip())
    raise RuntimeError("ComfyUI not found: run `make setup` (or set COMFYUI_PATH to a ComfyUI checkout)")
