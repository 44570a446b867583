"""UltraRes: high-resolution image-synthesis techniques as ComfyUI nodes.

ComfyUI loads this package from its ``custom_nodes/`` folder and calls :func:`comfy_entrypoint`
(the V3 extension API). Nothing ComfyUI-specific is imported at module import time, so the
comfy-free ``kernels`` sub-package stays usable from any Python program.
"""

__version__ = "0.1.0"

# Served by ComfyUI at /extensions/<this folder's name>/: web/docs/<NodeId>.md are the node help pages
# the frontend shows in its node library / selection toolbox help panel. No .js lives there.
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import UltraResExtension

    return UltraResExtension()
