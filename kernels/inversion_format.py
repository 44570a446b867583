"""Domain-reference files: a set of in-domain inverted latents saved for later domain scores.

A reference is one ``.safetensors`` file with a single tensor ``"latents"`` ``[N, ...]`` (float32,
the inverted latents) and, in its metadata, the inversion record of those latents as JSON under
:data:`RECORD_KEY` (top sigma, steps, level, scheduler, model family; ``{}`` when unknown), plus any
string entries the writer adds (the node pack's file marker). Safetensors only: nothing here unpickles.
"""

from __future__ import annotations

import json

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
