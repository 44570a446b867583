"""ComfyUI as a library for the demo: the shared dev-tools host (``ultrares.devtools.comfy_host``)
booted in this process with the UltraRes pack, plus the demo's progress hook."""

from __future__ import annotations

from collections.abc import Callable

from ultrares.devtools.comfy_host import ComfyNotFound, Runtime, boot  # noqa: F401 (the demo's names for them)


def progress_hook(report: Callable[[int, int], None]):
    """A hook for ``comfy.utils.set_progress_bar_global_hook``: forwards (value, total) and, like
    ComfyUI's server hook, raises when processing was interrupted."""
    import comfy.model_management

    def hook(value, total, preview=None, prompt_id=None, node_id=None):
        comfy.model_management.throw_exception_if_processing_interrupted()
        report(int(value), int(total))

    return hook
