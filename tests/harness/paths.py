"""Where things are: the checkout, ComfyUI (``COMFYUI_PATH`` or the one ``make setup`` unpacked)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEST_PACKS = ROOT / "tests" / "comfy_packs"
WORKFLOWS = ROOT / "workflows"


def comfy_root() -> Path:
    """``COMFYUI_PATH``, else the ComfyUI ``make setup`` unpacked (the demo's lookup, shared)."""
    from ultrares.demo.runtime import comfy_root as demo_comfy_root

    return demo_comfy_root()


def comfy_site(root: Path) -> Path | None:
    """The version's own pinned packages folder beside its tree, if ``make setup`` made one."""
    from ultrares.demo.runtime import comfy_site as demo_comfy_site

    return demo_comfy_site(root)
