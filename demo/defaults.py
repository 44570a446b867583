"""The tabs' default inputs and expected times, as ``scripts/pick_demo_seeds.py`` chose and measured
them (``demo/defaults.json``, committed): seeds picked by scoring candidates (DINOv2 distance of each
generated emoji to the nearest training image of its class), the example image the image tabs open
on, and the wall-clock seconds of each tab's default run. Missing entries fall back to the tab's own
constants, so the demo runs without the file."""

from __future__ import annotations

import functools
import json
from pathlib import Path

PATH = Path(__file__).resolve().with_name("defaults.json")
EXAMPLES = Path(__file__).resolve().parent / "examples"


@functools.cache
def load() -> dict:
    """The whole file ({} when it is missing)."""
    return json.loads(PATH.read_text()) if PATH.is_file() else {}


def of(tab: str, fallback: dict) -> dict:
    """A tab's defaults: ``fallback`` (the tab's constants) updated with what the file chose."""
    chosen = load().get(tab, {})
    return {**fallback, **{k: chosen[k] for k in fallback if k in chosen}}


def seconds(tab: str) -> float | None:
    """The measured wall-clock seconds of the tab's default run (None: not measured)."""
    value = load().get(tab, {}).get("seconds")
    return float(value) if value is not None else None


def measured_on() -> str:
    return str(load().get("measured_on", ""))


def example(name: str | None) -> str | None:
    """The path of an example image in demo/examples (None when absent)."""
    path = EXAMPLES / name if name else None
    return str(path) if path is not None and path.is_file() else None
