"""ComfyUI as a library, in this process, on the CPU, with UltraRes and the test pack loaded: the shared
dev-tools host (``ultrares.devtools.comfy_host``) plus what only tests know, the test pack.

``boot()`` is idempotent and returns the host's :class:`Runtime`. It must run before anything imports
``comfy.model_management`` (the CLI args are read at import time), which the test session's
``conftest.py`` guarantees by calling :func:`configure_args` in ``pytest_configure``.
"""

from __future__ import annotations

import sys

from ultrares.devtools.comfy_host import Runtime, node_info  # noqa: F401  (re-exported for tests)
from ultrares.devtools.comfy_host import boot as host_boot
from ultrares.devtools.comfy_host import configure_args as host_configure_args

from .paths import TEST_PACKS

TEST_PACK = TEST_PACKS / "ultrares_testing"  # tiny models and UltraResTest* nodes


def configure_args() -> None:
    """ComfyUI's CLI args for tests (before comfy.model_management is imported): the CPU, with torch's
    SDPA attention."""
    host_configure_args(cpu=True)


def boot() -> Runtime:
    """The host booted on the CPU with UltraRes and the test pack."""
    return host_boot(cpu=True, packs=[TEST_PACK])


def tiny_models_module():
    """The test pack's ``tiny_models`` module (the same module object the pack imported, so the
    build cache is shared); boots ComfyUI first."""
    boot()
    path = str(TEST_PACK)
    if path not in sys.path:
        sys.path.insert(0, path)
    import tiny_models

    return tiny_models


def tiny(family: str, seed: int = 0):
    """(MODEL, CLIP, VAE) tiny real-architecture model of ``family`` from the test pack; boots ComfyUI
    first. See tiny_models' docstring for the families (CLIP/VAE are None for some)."""
    return tiny_models_module().build(family, seed)
