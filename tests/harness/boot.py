"""ComfyUI as a library, in this process, on the CPU, with UltraRes and the test pack loaded.

``boot()`` is idempotent and returns a :class:`Runtime`. It must run before anything imports
``comfy.model_management`` (the CLI args are read at import time), which the test session's
``conftest.py`` guarantees by booting in ``pytest_configure``.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from ultrares.demo.runtime import Runtime as DemoRuntime
from ultrares.demo.runtime import put_comfy_on_path

from .paths import ROOT, TEST_PACKS, comfy_root  # noqa: F401  (TEST_PACKS re-exported)

_RUNTIME: Runtime | None = None


def configure_args() -> None:
    """Set ComfyUI's CLI args for tests (before comfy.model_management is imported)."""
    put_comfy_on_path(comfy_root())
    # As main.py does: claim the name "utils" for ComfyUI's package before anything can put
    # comfy/ on sys.path and shadow it with comfy/utils.py (app.frontend_management needs it).
    import utils.extra_config  # noqa: F401
    from comfy.cli_args import args

    args.cpu = True
    # ComfyUI picks sub-quadratic attention on CPU, ~4x slower here than torch's SDPA.
    args.use_pytorch_cross_attention = True
    args.disable_all_custom_nodes = True
    args.whitelist_custom_nodes = ["ultrares", "ultrares_testing"]


class Runtime(DemoRuntime):
    """The demo's runtime (run_node, validate, filenames, ...) plus what tests need on top."""

    def object_info(self, node_id: str) -> dict:
        """What the server would return at /object_info/<node_id>."""
        return node_info(self.node_class(node_id), node_id)


def node_info(cls: type, node_id: str) -> dict:
    """Same shape as server.py's node_info (V3 via GET_NODE_INFO_V1, V1 from the class attributes)."""
    from comfy_api.internal import _ComfyNodeInternal

    if issubclass(cls, _ComfyNodeInternal):
        return cls.GET_NODE_INFO_V1()
    import nodes

    types = cls.INPUT_TYPES()
    return {
        "input": types,
        "input_order": {key: list(value.keys()) for key, value in types.items()},
        "output": cls.RETURN_TYPES,
        "output_is_list": getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES)),
        "output_name": getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES),
        "name": node_id,
        "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(node_id, node_id),
        "description": getattr(cls, "DESCRIPTION", ""),
        "category": getattr(cls, "CATEGORY", "sd"),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
    }


# Core node modules that cannot load in-process, with the reason that does not matter to the tests.
SERVER_ONLY_CORE_MODULES = {
    # 0.30+: registers node-id replacements (old id -> new id, for the graph editor's missing-node
    # dialog) with PromptServer.instance.node_replace_manager. Only a running server has that
    # instance (the server tests' main.py subprocess loads it); it defines no node, and building a
    # PromptServer in-process would create user folders and a web app for nothing.
    "nodes_replacements.py": "needs the running PromptServer (frontend node-replacement registry)",
}


async def _init_nodes(nodes) -> None:
    """ComfyUI's ``init_extra_nodes`` step by step (public APIs, core extra nodes, custom nodes), so
    core modules that need a running server fail quietly while any other import failure, and the
    custom packs' tracebacks, are still reported."""
    await nodes.init_public_apis()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ComfyUI logs each failed core module with a generic warning
    try:
        failed = await nodes.init_builtin_extra_nodes()
    finally:
        root.setLevel(level)
    unexpected = [f for f in failed if f not in SERVER_ONLY_CORE_MODULES]
    if unexpected:
        logging.warning("ComfyUI core node modules that did not import: %s", ", ".join(unexpected))
    await nodes.init_external_custom_nodes()


def boot() -> Runtime:
    global _RUNTIME
    if _RUNTIME is not None:
        return _RUNTIME
    configure_args()
    import folder_paths

    folder_paths.add_model_folder_path("custom_nodes", str(TEST_PACKS))
    import nodes

    before = set(nodes.NODE_CLASS_MAPPINGS)
    logging.getLogger().setLevel(logging.WARNING)
    asyncio.run(_init_nodes(nodes))
    added = sorted(set(nodes.NODE_CLASS_MAPPINGS) - before)
    missing = [
        m
        for m in ("ultrares", "ultrares_testing")
        if not any(str(p).endswith(m) for p in nodes.LOADED_MODULE_DIRS.values())
    ]
    if missing:
        raise RuntimeError(
            f"ComfyUI did not load {missing}; check the custom_nodes link made by `make setup` "
            f"(expected {comfy_root() / 'custom_nodes' / 'ultrares'} -> {ROOT})"
        )
    _RUNTIME = Runtime(
        comfy_path=comfy_root(),
        nodes=nodes.NODE_CLASS_MAPPINGS,
        pack_nodes=[n for n in added if n.startswith("UltraRes") and not n.startswith("UltraResTest")],
    )
    return _RUNTIME


def tiny_models_module():
    """The test pack's ``tiny_models`` module (the same module object the pack imported, so the
    build cache is shared); boots ComfyUI first."""
    boot()
    path = str(TEST_PACKS / "ultrares_testing")
    if path not in sys.path:
        sys.path.insert(0, path)
    import tiny_models

    return tiny_models


def tiny(family: str, seed: int = 0):
    """(MODEL, CLIP, VAE) tiny real-architecture model of ``family`` from the test pack; boots ComfyUI
    first. See tiny_models' docstring for the families (CLIP/VAE are None for some)."""
    return tiny_models_module().build(family, seed)
