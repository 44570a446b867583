"""Loading the committed workflows for tests, with the one substitution allowed: the model loader."""

from __future__ import annotations

import copy
import json

from .paths import WORKFLOWS

# Real loaders -> the test pack's stand-in with the same outputs (MODEL, CLIP, VAE).
LOADER_SUBSTITUTES = {
    "CheckpointLoaderSimple": "UltraResTestCheckpointLoader",
    "ControlNetLoader": "UltraResTestControlNetLoader",
}
NAME_INPUT = {"CheckpointLoaderSimple": "ckpt_name", "ControlNetLoader": "control_net_name"}


def workflow_names() -> list[str]:
    return sorted(p.stem for p in WORKFLOWS.glob("*.json"))


def load_ui(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def load_api(name: str, substitute_loaders: bool = True) -> dict:
    prompt = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    return substitute(prompt) if substitute_loaders else prompt


def substitute(prompt: dict) -> dict:
    """Swap real checkpoint loaders for the tiny test models (keeping ckpt_name, which picks the family)."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        new = LOADER_SUBSTITUTES.get(node["class_type"])
        if new:
            key = NAME_INPUT[node["class_type"]]
            node["class_type"] = new
            node["inputs"] = {key: node["inputs"][key], "seed": 0}
    return prompt


# Inputs in pixels that scale with the image when a workflow is run shrunk.
PIXEL_INPUTS = {
    "EmptyLatentImage": ("width", "height"),
    "EmptySD3LatentImage": ("width", "height"),
    "UltraResTiledDiffusion": ("tile_width", "tile_height", "overlap"),
    "VAEDecodeTiled": ("tile_size", "overlap"),
}


def shrink(prompt: dict, factor: int) -> dict:
    """The same graph at 1/factor of its pixel sizes (image, tiles, overlaps, VAE tiles), so a
    full-size workflow keeps its tile layout while running quickly on the tiny test models.
    Sizes stay multiples of 8; tiles stay at least 64 px (the node's minimum)."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        for name in PIXEL_INPUTS.get(node["class_type"], ()):
            value = node["inputs"].get(name)
            if isinstance(value, int):
                low = 64 if name.startswith("tile") else 0
                node["inputs"][name] = max(low, value // factor // 8 * 8)
    return prompt


def output_nodes(prompt: dict, class_type: str = "SaveImage") -> list[str]:
    return [k for k, v in prompt.items() if v["class_type"] == class_type]
