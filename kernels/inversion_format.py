"""Domain-reference files: a set of in-domain inverted latents saved for later domain scores.

A reference is one ``.safetensors`` file with a single tensor ``"latents"`` ``[N, ...]`` (float32,
the inverted latents) and, in its metadata, the inversion record of those latents as JSON under
:data:`RECORD_KEY` (top sigma, steps, level, scheduler, model family; ``{}`` when unknown), plus any
string entries the writer adds (the node pack's file marker). Safetensors only: nothing here unpickles.

The inversion record itself (:func:`make_record`, :func:`read_record`) and the checks that a noise
latent fits the schedule it is generated with (:func:`check_generate_record`, :func:`sigmas_differ`)
are here too.
"""

from __future__ import annotations

import json
import math

import safetensors
import safetensors.torch
import torch

RECORD_KEY = "ultrares_inversion"
"""Metadata key of the inversion record (the same key the nodes use on a LATENT dict)."""


def save_reference(
    path: str, latents: torch.Tensor, record: dict | None, extra: dict[str, str] | None = None
) -> None:
    """Write ``latents`` ``[N, ...]`` (any float, stored as given) with its inversion ``record`` to ``path``."""
    metadata = {RECORD_KEY: json.dumps(record or {}), **(extra or {})}
    safetensors.torch.save_file({"latents": latents.contiguous()}, path, metadata=metadata)


def load_reference(path: str) -> tuple[torch.Tensor, dict | None]:
    """``(latents [N, ...] float32 on the CPU, inversion record or None)`` from a file written by
    :func:`save_reference`.

    Raises:
        ValueError: the file cannot be read, has no ``"latents"`` tensor or an unreadable record.
    """
    try:
        latents = safetensors.torch.load_file(path)["latents"].float()
        with safetensors.safe_open(path, framework="pt") as f:
            record = json.loads((f.metadata() or {}).get(RECORD_KEY, "{}")) or None
    except (OSError, KeyError, ValueError, RuntimeError, safetensors.SafetensorError) as err:
        raise ValueError(f"not a domain reference file ({type(err).__name__})") from None
    return latents, record


# ------------------------------------------------------------------------------------- inversion records


def make_record(
    sigma: float, steps: int, level: float, scheduler: str, model: str, shape: tuple[int, ...] | list[int]
) -> dict:
    """The inversion record a noise latent carries under :data:`RECORD_KEY`: its top ``sigma``, the
    ``steps``, ``level`` and ``scheduler`` of the inversion, the ``model`` family and the latent ``shape``
    (after the batch axis)."""
    return {
        "sigma": float(sigma),
        "steps": int(steps),
        "level": float(level),
        "scheduler": scheduler,
        "model": model,
        "shape": [int(v) for v in shape],
    }


def read_record(latent: dict) -> dict | None:
    """The inversion record of a LATENT dict, or None when it has none (or not a dict)."""
    record = latent.get(RECORD_KEY)
    return record if isinstance(record, dict) else None


def sigmas_differ(a: dict | None, b: dict | None) -> bool:
    """True when both records are known and their top sigmas differ (relative tolerance 1e-3)."""
    return bool(a and b and not math.isclose(a["sigma"], b["sigma"], rel_tol=1e-3))


def check_generate_record(
    record: dict | None, model: str, top_sigma: float, steps: int, level: float, scheduler: str
) -> None:
    """Refuse to generate from a noise latent whose ``record`` names another model family, or another
    top sigma than the schedule of ``steps``/``level``/``scheduler`` starts at (``top_sigma``)."""
    if record is None:
        return
    if record.get("model") not in (None, model):
        raise ValueError(
            f"the noise latent was inverted with a {record['model']} model but this model is "
            f"{model}; generate with the model that inverted it."
        )
    top = float(record.get("sigma", top_sigma))
    if not math.isclose(top, float(top_sigma), rel_tol=1e-3):
        raise ValueError(
            f"the noise latent sits at sigma {top:.5g} (inverted with steps={record.get('steps')}, "
            f"level={record.get('level')}, scheduler={record.get('scheduler')!r}) but steps={steps}, "
            f"level={level}, scheduler={scheduler!r} start at sigma {float(top_sigma):.5g}. Use the "
            "inversion's steps, level and scheduler."
        )
