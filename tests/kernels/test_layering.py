"""The three floors of docs/ARCHITECTURE.md, checked on the source: kernels <- nodes <- demo."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMFY_MODULES = {
    "comfy",
    "comfy_api",
    "comfy_execution",
    "comfy_extras",
    "folder_paths",
    "nodes",
    "server",
    "latent_preview",
    "node_helpers",
    "execution",
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(relative level, module) of every import in ``path`` (level 0 = absolute)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or ""))
    return found


def _sources(floor: str) -> list[Path]:
    return sorted((ROOT / floor).rglob("*.py"))


@pytest.mark.parametrize("path", _sources("kernels"), ids=lambda p: p.name)
def test_kernels_import_nothing_of_comfyui_nor_the_floors_above(path):
    for level, module in _imports(path):
        top = module.split(".")[0]
        assert not (level == 0 and top in COMFY_MODULES), f"{path.name} imports {module}"
        assert not (level == 0 and module.startswith(("ultrares.nodes", "ultrares.demo"))), (
            f"{path.name}: {module}"
        )
        assert not (level >= 2 and top in ("nodes", "demo")), f"{path.name} imports {'.' * level}{module}"


@pytest.mark.parametrize("path", _sources("nodes"), ids=lambda p: p.name)
def test_nodes_do_not_import_the_demo(path):
    for level, module in _imports(path):
        assert not (level == 0 and module.startswith("ultrares.demo")), f"{path.name} imports {module}"
        assert not (level >= 2 and module.split(".")[0] == "demo"), (
            f"{path.name} imports {'.' * level}{module}"
        )
