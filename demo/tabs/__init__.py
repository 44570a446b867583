"""The demo's tabs, one module per technique, in the order they appear.

A tab module defines ``TITLE`` (the tab's label), ``ID`` (its element id) and ``build(shared)``,
which lays out its controls inside the open ``gr.Tab`` and wires them to its own handlers: plain
functions (no Gradio) that reach the pack only through node ids (:mod:`ultrares.demo.session`)
and ``ultrares.kernels``. Adding a tab = adding its module here and its name to :data:`TABS`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

TABS = (
    # a new first tab goes here
    "relay_emoji",
    "hdit",
    "tiled_diffusion",
    "relay",
    "linfusion",
    "digit",
    "inversion",
)


def modules() -> list[ModuleType]:
    """The tab modules of :data:`TABS`, imported, in order."""
    return [importlib.import_module(f"{__name__}.{name}") for name in TABS]
