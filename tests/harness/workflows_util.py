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
    "EmptyChromaRadianceLatentImage": ("width", "height"),
    "UltraResAnySizePlan": ("target_width", "target_height", "native_size"),
    "UltraResTiledDiffusion": ("tile_width", "tile_height", "overlap"),
    "VAEDecodeTiled": ("tile_size", "overlap"),
}
# Inputs counted in latent pixels (tokens), which scale with the square of the factor.
AREA_INPUTS = {"UltraResLinFusionApply": ("min_tokens",)}
# The smallest value each scaled input takes (the nodes' minimums).
LOWEST = {"tile_width": 64, "tile_height": 64, "target_width": 64, "target_height": 64, "native_size": 64}


def shrink(prompt: dict, factor: int) -> dict:
    """The same graph at 1/factor of its pixel sizes (image, tiles, overlaps, VAE tiles, an Any-Size
    plan's target and stated native size) and 1/factor^2 of its token thresholds (LinFusion's
    min_tokens), so a full-size workflow keeps its tile layout and which layers go linear while running
    quickly on the tiny test models. Sizes stay multiples of 8 (native_size of 64); tiles stay at least
    64 px (the node's minimum). An Any-Size plan that reads the native size from the model
    (native_size 0) should be given one the test can divide (e.g. 512 for the SD1.5 test model)."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs = node["inputs"]
        for name in PIXEL_INPUTS.get(node["class_type"], ()):
            value = inputs.get(name)
            if isinstance(value, int) and value:
                step = 64 if name == "native_size" else 8
                inputs[name] = max(LOWEST.get(name, 0), value // factor // step * step)
        for name in AREA_INPUTS.get(node["class_type"], ()):
            value = inputs.get(name)
            if isinstance(value, int):
                inputs[name] = value // (factor * factor)
    return prompt


def output_nodes(prompt: dict, class_type: str = "SaveImage") -> list[str]:
    return [k for k, v in prompt.items() if v["class_type"] == class_type]
