"""Comfy-free PyTorch implementations, one module per technique.

Nothing in this package may import ComfyUI (``comfy``, ``comfy_api``, ``folder_paths``, ...):
the modules are pure functions and ``nn.Module``s usable from any Python program, and the
nodes in ``nodes/`` are thin adapters around them.
"""
