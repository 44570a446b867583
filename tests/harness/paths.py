"""Where things are: the checkout, the test pack, the workflows, ComfyUI (the shared dev-tools host's
lookup: ``COMFYUI_PATH``, ``COMFYUI_VERSION`` or the one ``make setup`` unpacked)."""

from __future__ import annotations

from ultrares.devtools.comfy_host import ROOT, comfy_root, comfy_site  # noqa: F401  (re-exported)

TEST_PACKS = ROOT / "tests" / "comfy_packs"
WORKFLOWS = ROOT / "workflows"
