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


PICKED = ("seed",)  # what the script chooses; every other setting is the tab's own constant


def of(tab: str, settings: dict) -> dict:
    """A tab's defaults: its own ``settings`` with the seed the file picked for them (the file also
    records the settings it scored with; tests/demo checks they are still the tab's)."""
    chosen = load().get(tab, {})
    return {**settings, **{k: chosen[k] for k in PICKED if k in chosen and k in settings}}


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
