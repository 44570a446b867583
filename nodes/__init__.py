"""ComfyUI adapters (V3 schema API), one module per technique.

Every public module here (name not starting with ``_``) defines ``NODES``, the list of its
``io.ComfyNode`` classes; they are collected in file-name order. Node ids are stable: saved
workflows refer to them by ``node_id``.
"""

from __future__ import annotations

import importlib
import pkgutil

from comfy_api.latest import ComfyExtension, io

from . import _paths

_paths.register_model_folders()


def all_nodes() -> list[type[io.ComfyNode]]:
    found: list[type[io.ComfyNode]] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.extend(getattr(module, "NODES", []))
    return found


class UltraResExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return all_nodes()
