"""Small helpers shared by several node modules."""

from __future__ import annotations

import math

import torch

DEFAULT_DOWNSCALE = 8  # SD1.x/2.x/XL/3/Flux VAEs

SEED_MAX = 0xFFFFFFFFFFFFFFFF
"""Largest seed of every UltraRes seed input: ComfyUI's own (KSampler's ``noise_seed``), so a seed
copied from a stock node is accepted unchanged by ours."""


def seed_input(tooltip: str, name: str = "seed", control_after_generate: bool = True):
    """The one seed widget of every UltraRes node: INT 0..:data:`SEED_MAX`, default 0, with ComfyUI's
    control-after-generate menu unless ``control_after_generate`` is False."""
    from comfy_api.latest import io

    extra = {"control_after_generate": True} if control_after_generate else {}
    return io.Int.Input(name, default=0, min=0, max=SEED_MAX, tooltip=tooltip, **extra)


# Pixels per latent pixel of the ComfyUI latent formats whose ratio is not 8, as ComfyUI 0.30 states
# them (``LatentFormat.spacial_downscale_ratio``). ComfyUI 0.3.75's formats do not state a ratio; its
# classes of the same names are the same latents (Flux.2's 16x VAE, HunyuanImage 2.1's 32x VAE,
# Chroma Radiance's pixel space...), so the ratio is read from this table by class there.
STATED_DOWNSCALE = {
    "ChromaRadiance": 1,  # pixel space (and 0.30's ZImagePixelSpace, HiDreamO1Pixel... subclasses)
    "SC_B": 4,
    "Flux2": 16,
    "Wan22": 16,
    "HunyuanVideo15": 16,
    "HunyuanImage21": 32,
    "LTXV": 32,
    "SC_Prior": 42,
}


def latent_downscale_ratio(model) -> int:
    """Pixels per latent pixel (per side) of a ComfyUI BaseModel (or ModelPatcher), from its latent format.

    The ratio the format states (``spacial_downscale_ratio``: every format of ComfyUI >= 0.30, and this
    pack's pixel-space format) wins; on older ComfyUI, whose formats state none, the format's class (or
    the nearest base class) named in :data:`STATED_DOWNSCALE`; else 8, the ratio of the SD/SDXL/SD3/Flux
    VAEs that ComfyUI itself assumes when a format states nothing."""
    base = getattr(model, "model", model)
    fmt = getattr(base, "latent_format", None)
    if fmt is None and hasattr(model, "get_model_object"):
        fmt = model.get_model_object("latent_format")
    stated = getattr(fmt, "spacial_downscale_ratio", None)
    if stated is not None:
        return int(stated)
    for cls in type(fmt).__mro__:
        if cls.__name__ in STATED_DOWNSCALE:
            return STATED_DOWNSCALE[cls.__name__]
    return DEFAULT_DOWNSCALE


def require_image_latent(samples: torch.Tensor, node: str, frame_axis: bool = False) -> None:
    """Refuse video/audio/other non-image latents with a message that says what was received.

    frame_axis: also accept a single image with a singleton frame axis ``[batch, channels, 1, height,
    width]``, the shape ComfyUI gives every latent of a model with a video VAE (Qwen-Image, whose latent
    format is Wan 2.1's). Without it, such a latent is refused with a message that says so."""
    if samples.ndim == 4:
        return
    shape = tuple(samples.shape)
    if samples.ndim == 5 and samples.shape[2] == 1:
        if frame_axis:
            return
        raise ValueError(
            f"{node} works on image latents [batch, channels, height, width]; it received a single-frame "
            f"latent with a frame axis, shape {shape}, as ComfyUI makes for models with a video VAE "
            "(Qwen-Image and its edit models). This node does not support those models yet."
        )
    if samples.ndim == 5:
        raise ValueError(
            f"{node} works on images; it received a video latent of {shape[2]} frames, shape {shape} "
            "[batch, channels, frames, height, width]. Use it with image models (one frame) only."
        )
    kind = {3: "an audio or sequence latent"}.get(samples.ndim, "a non-image latent")
    raise ValueError(
        f"{node} works on image latents [batch, channels, height, width]; it received {kind} "
        f"of shape {shape}. Use it with image models only."
    )


_SHOW_LIMIT = 60  # characters of a bad value shown back to the user


def show_value(value) -> str:
    """A bad value as the user should see it: repr, shortened (a fuzzed value can be megabytes)."""
    text = repr(value)
    if len(text) > _SHOW_LIMIT:
        text = text[: _SHOW_LIMIT - 15] + f"... ({len(text)} chars)"
    return text


def _looks_linked(value) -> bool:
    """A link ``[node_id, output_index]`` as ComfyUI's ``is_link`` sees it: its value is not known at queue time."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], (int, float))
        and not isinstance(value[1], bool)
    )


class CheckedInputs(dict):
    """Converted input values from :func:`check_inputs`; read them as ``v.steps`` or ``v["steps"]``.

    A value that is not known at queue time (a linked input, or one left out) is ``None``. An input
    named like a dict method (``clear``, ``items``...) is read as the input, not the method."""

    def __getattribute__(self, name):
        if not name.startswith("_") and dict.__contains__(self, name):
            return dict.__getitem__(self, name)
        return super().__getattribute__(name)

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _range_text(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f" from {lo} to {hi}"
    if lo is not None:
        return f" of at least {lo}"
    if hi is not None:
        return f" of at most {hi}"
    return ""


def _number(name: str, value, whole: bool, lo, hi):
    """(converted value, None) or (None, message) for an INT (``whole``) or FLOAT widget value, converted
    as ComfyUI's executor does (``int(value)`` / ``float(value)``); NaN and inf are refused."""
    what = "a whole number" if whole else "a number"
    give = ("a whole number" if whole else "a finite number") + _range_text(lo, hi)
    if whole and isinstance(value, float) and not math.isfinite(value):
        return None, f"{name}={show_value(value)} is not a finite number; give {give}"
    try:
        value = int(value) if whole else float(value)
    except (TypeError, ValueError, OverflowError):
        return None, f"{name}={show_value(value)} is not {what}; give {give}"
    if not whole and not math.isfinite(value):
        return None, f"{name}={show_value(value)} is not a finite number; give {give}"
    return value, None


def _check_one(name: str, spec, value):
    """(converted value, None) or (None, message) for one widget value, as ComfyUI would convert it."""
    if isinstance(value, dict) and "__value__" in value:  # ComfyUI's wrapper for list-valued widgets
        value = value["__value__"]
    kind = str(spec.get_io_type())
    lo, hi = getattr(spec, "min", None), getattr(spec, "max", None)
    if kind in ("INT", "FLOAT"):
        value, problem = _number(name, value, kind == "INT", lo, hi)
        if problem:
            return None, problem
    elif kind == "BOOLEAN":
        value = bool(
            value
        )  # ComfyUI converts before validate_inputs sees it; done here for in-process callers
    elif kind == "STRING":
        value = str(value)
    elif kind == "COMBO":
        options = list(getattr(spec, "options", None) or [])
        values = value if getattr(spec, "multiselect", False) and isinstance(value, list) else [value]
        for one in values:
            try:
                known = one in options
            except TypeError:  # a value whose comparison raises
                known = False
            if not known:
                shown = ", ".join(str(o) for o in options[:12]) or "(none)"
                more = f" (and {len(options) - 12} more)" if len(options) > 12 else ""
                return None, f"{name}={show_value(one)} is not one of: {shown}{more}"
        return value, None
    else:  # a socket type (MODEL, LATENT...): its value comes from a link, nothing to check here
        return value, None
    if lo is not None and value < lo:
        return (
            None,
            f"{name}={show_value(value)} is below the minimum {lo}; give a value{_range_text(lo, hi)}",
        )
    if hi is not None and value > hi:
        return (
            None,
            f"{name}={show_value(value)} is above the maximum {hi}; give a value{_range_text(lo, hi)}",
        )
    return value, None


def check_inputs(node_cls, /, *, combo_hints: dict[str, str] | None = None, **values) -> CheckedInputs | str:
    """Queue-time checks of a V3 node's widget values; the first call of every ``validate_inputs``.

    ComfyUI hands ``validate_inputs`` the values it names *without* its own min/max (and, for V3
    combos, membership) checks, and the raw value when its INT/FLOAT conversion failed; it lets NaN
    and inf through. For each named input this reads the node's schema, skips values not known at
    queue time (``None``, a link), converts the value as ComfyUI does (INT, FLOAT, BOOLEAN, STRING),
    refuses NaN/inf, applies min/max and combo membership. Returns the converted values
    (:class:`CheckedInputs`) or one message naming every bad input, its value and the fix::

        v = check_inputs(cls, steps=steps, cfg=cfg)
        if isinstance(v, str):
            return v
        ...node rules on v.steps, v.cfg (None when linked)...

    ``combo_hints`` adds a hint after a combo's message, e.g. where to put model files."""
    specs = {spec.id: spec for spec in node_cls.define_schema().inputs}
    checked, problems = CheckedInputs(), []
    for name, value in values.items():
        spec = specs.get(name)
        if spec is None:  # a programming error in the node, caught by the tests
            raise KeyError(
                f"{node_cls.__name__}.validate_inputs names {name!r}, which its schema does not declare"
            )
        if value is None or _looks_linked(value):
            checked[name] = None
            continue
        checked[name], problem = _check_one(name, spec, value)
        if problem:
            problems.append(
                problem + ((combo_hints or {}).get(name, "") if str(spec.get_io_type()) == "COMBO" else "")
            )
    return ". ".join(problems) + "." if problems else checked


def available_memory(model) -> tuple[int, str]:
    """(bytes, device name): free memory on the model's device at run time (ComfyUI's
    ``get_free_memory``) plus, on a GPU, what ComfyUI can free by unloading models already loaded there."""
    import comfy.model_management as mm

    dev = model.load_device
    free = int(mm.get_free_memory(dev))
    if getattr(dev, "type", "cpu") not in ("cpu", "mps"):  # unified memory: unloading frees nothing
        free += sum(
            int(m.loaded_size()) for m in mm.loaded_models() if getattr(m, "load_device", None) == dev
        )
    return free, str(dev)


def frugal_activation_bytes(model, shape) -> int:
    """ComfyUI's own activation estimate for one model call on ``shape`` (B, C, H, W), the smaller of
    its two formulas (``BaseModel.memory_required``: memory-frugal attention vs the rest), so a
    refusal built on it means no attention backend could fit the call."""
    import comfy.model_management as mm

    b, c, h, w = (int(v) for v in shape)
    base = model.model
    dtype = base.manual_cast_dtype or base.get_dtype()
    frugal = b * h * w * mm.dtype_size(dtype) * 0.01 * base.memory_usage_factor * 1024 * 1024
    return int(min(base.memory_required([b, c, h, w]), frugal))
