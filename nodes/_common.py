"""Small helpers shared by several node modules."""

from __future__ import annotations

import torch

DEFAULT_DOWNSCALE = 8  # SD1.x/2.x/XL/3/Flux VAEs


def latent_downscale_ratio(model) -> int:
    """Pixels per latent pixel for a ComfyUI BaseModel (or ModelPatcher).

    ComfyUI's latent formats do not state it; pixel-space formats of this pack set
    ``spacial_downscale_ratio = 1`` and everything else is taken to be an 8x VAE."""
    base = getattr(model, "model", model)
    fmt = getattr(base, "latent_format", None)
    return int(getattr(fmt, "spacial_downscale_ratio", DEFAULT_DOWNSCALE))


def require_image_latent(samples: torch.Tensor, node: str) -> None:
    """Refuse video/audio/other non-image latents with a message that says what was received."""
    if samples.ndim != 4:
        kind = {3: "an audio or sequence latent", 5: "a video latent"}.get(samples.ndim, "a non-image latent")
        raise ValueError(f"{node} works on image latents [batch, channels, height, width]; it received {kind} "
                         f"of shape {tuple(samples.shape)}. Use it with image models only.")


def check_choice(name: str, value: str, options, hint: str = "") -> bool | str:
    """``validate_inputs`` helper: ComfyUI 0.3.75 does not check V3 combo values at queue time.

    Returns True, or a message naming the input, the bad value and (the first 12 of) the choices."""
    if value in options:
        return True
    shown = ", ".join(list(options)[:12]) or "(none)"
    return f"{name}={value!r} is not one of: {shown}{hint}"
