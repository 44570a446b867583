"""HDiT configs and checkpoints in k-diffusion's formats (the model itself is :mod:`ultrares.kernels.hdit`).

- Config: k-diffusion's ``image_transformer_v2`` config JSON, parsed with the same defaults into an
  :class:`HDiTConfig` (with the ``"relay"`` section of a relay-trained model as a
  :class:`ultrares.kernels.relay.TrainedRelay`, parsed here once); every size is type-checked and bounded (:data:`LIMITS`) before anything is
  built, and :func:`activation_bytes_per_pixel` estimates the forward's peak memory from it.
- Checkpoints: the training ``.pth`` (``model_ema`` preferred, read with ``weights_only=True``) and
  the safetensors inference format with ``{"config": json}`` metadata; the state-dict layout
  (prefixes ``module.``, ``_orig_mod.``, ``inner_model.`` stripped) and the tensor shapes are
  checked against the config before any weight is allocated. Every problem raises
  :class:`HDiTLoadError` naming the file, what is wrong and what to do.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from .hdit import (
    GlobalAttentionSpec,
    HDiT,
    LevelSpec,
    MappingSpec,
    NeighborhoodAttentionSpec,
    NoAttentionSpec,
    ShiftedWindowAttentionSpec,
)
from .relay import TrainedRelay, relay_config

__all__ = [
    "HDiTConfig",
    "parse_config",
    "build_model",
    "load_state_dict_strict",
    "load_checkpoint",
    "open_checkpoint",
    "save_inference",
    "HDiTLoadError",
    "activation_bytes_per_pixel",
    "expected_shapes",
    "check_shapes",
    "LIMITS",
    "trained_relay",
]


class HDiTLoadError(ValueError):
    """A checkpoint/config that cannot be turned into an HDiT (message says what and why)."""


# ----------------------------------------------------------------------------- config


@dataclass
class HDiTConfig:
    """Parsed k-diffusion config. ``num_classes`` counts dataset classes (embedding has +1 rows)."""

    levels: list[LevelSpec]
    mapping: MappingSpec
    input_channels: int = 3
    input_size: tuple[int, int] = (256, 256)
    patch_size: tuple[int, int] = (4, 4)
    num_classes: int = 0
    mapping_cond_dim: int = 0
    sigma_data: float = 1.0
    sigma_min: float = 1e-2
    sigma_max: float = 80.0
    loss_weighting: str = "karras"
    sigma_sample_density: dict = field(default_factory=lambda: {"type": "cosine-interpolated"})
    raw: dict = field(default_factory=dict)  # the full config dict with defaults applied
    relay: TrainedRelay | None = None  # the "relay" section (a relay-trained stage two), parsed and checked


def trained_relay(model) -> TrainedRelay | None:
    """The one reader of the relay settings a loaded model was trained for (its config's ``"relay"``
    section, parsed and checked once at load into :attr:`HDiTConfig.relay`), for the nodes and the demo.

    ``model``: anything that carries its :class:`HDiTConfig` as ``hdit_config``, itself or through its
    ``.model`` (ComfyUI's ModelPatcher around the BaseModel that ``nodes/hdit.py`` builds); None for
    every other model, and for None. Read by attribute, not by class: ComfyUI loads the pack under its
    path-derived module name, so the demo's ``ultrares.kernels`` classes are copies of the node's."""
    cfg = getattr(getattr(model, "model", model), "hdit_config", None)
    return getattr(cfg, "relay", None)


# sane bounds for sizes declared in a config (checked before anything is built; the largest
# published HDiT, ImageNet-256 XL/4, stays far inside them)
LIMITS = {
    "levels": (1, 10),
    "width": (8, 16384),
    "depth": (0, 128),
    "d_ff": (1, 65536),
    "d_head": (8, 1024),
    "kernel_size": (1, 63),
    "dilation": (1, 64),
    "window_size": (1, 256),
    "mapping_width": (2, 16384),
    "mapping_depth": (0, 64),
    "mapping_cond_dim": (0, 65536),
    "input_channels": (1, 64),
    "patch_size": (1, 64),
    "input_size": (1, 65536),
    "num_classes": (0, 100_000),
}
_FIX = "fix the config (use the one these weights were trained with)"


def _int(value, name: str, limit: str) -> int:
    """An integer config value inside ``LIMITS[limit]`` (a float with an integral value is accepted)."""
    lo, hi = LIMITS[limit]
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise HDiTLoadError(f"config {name} must be an integer; got {value!r}: {_FIX}")
    if not lo <= value <= hi:
        raise HDiTLoadError(f"config {name} = {value} is outside the supported range {lo}..{hi}: {_FIX}")
    return value


def _float(
    value, name: str, lo: float | None = None, hi: float | None = None, open_lo: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise HDiTLoadError(f"config {name} must be a finite number; got {value!r}: {_FIX}")
    value = float(value)
    if (lo is not None and (value <= lo if open_lo else value < lo)) or (hi is not None and value > hi):
        rng = f"{'(' if open_lo else '['}{lo}, {hi if hi is not None else 'inf'}{']' if hi is not None else ')'}"
        raise HDiTLoadError(f"config {name} = {value} is outside {rng}: {_FIX}")
    return value


def _list(model: dict, key: str, n: int | None = None) -> list:
    v = model.get(key)
    if not isinstance(v, list) or not v:
        raise HDiTLoadError(f"config model.{key} must be a non-empty list; got {v!r}: {_FIX}")
    if n is not None and len(v) != n:
        raise HDiTLoadError(f"config model.{key} has {len(v)} entries but widths has {n}: {_FIX}")
    return v


def _pair(v, name, limit="patch_size"):
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise HDiTLoadError(f"config model.{name} must be an int or [h, w]; got {v!r}: {_FIX}")
        return (_int(v[0], f"model.{name}[0]", limit), _int(v[1], f"model.{name}[1]", limit))
    v = _int(v, f"model.{name}", limit)
    return (v, v)


_ATTN_KEYS = {
    "global": {"type", "d_head"},
    "neighborhood": {"type", "d_head", "kernel_size", "dilation"},
    "shifted-window": {"type", "d_head", "window_size"},
    "none": {"type"},
}


def _attn_spec(d: dict, i: int, width: int):
    where = f"model.self_attns[{i}]"
    if not isinstance(d, dict) or "type" not in d:
        raise HDiTLoadError(f"config {where} must be a dict with a 'type'; got {d!r}: {_FIX}")
    t = d["type"]
    if t not in _ATTN_KEYS:
        raise HDiTLoadError(
            f"config {where}.type {t!r} is unknown; use global, neighborhood, shifted-window or none"
        )
    unknown = sorted(str(k) for k in set(d) - _ATTN_KEYS[t])
    if unknown:
        raise HDiTLoadError(
            f"config {where} ({t}) has unknown keys {unknown}; allowed: {sorted(_ATTN_KEYS[t])}: {_FIX}"
        )
    if t == "none":
        return NoAttentionSpec()
    d_head = _int(d.get("d_head", 64), f"{where}.d_head", "d_head")
    if d_head % 8 or width % d_head:
        raise HDiTLoadError(
            f"config {where}.d_head = {d_head} must be a multiple of 8 that divides the level width {width}: {_FIX}"
        )
    if t == "global":
        return GlobalAttentionSpec(d_head)
    if t == "neighborhood":
        ks = _int(d.get("kernel_size", 7), f"{where}.kernel_size", "kernel_size")
        if ks % 2 == 0:
            raise HDiTLoadError(f"config {where}.kernel_size = {ks} must be odd (NATTEN convention): {_FIX}")
        return NeighborhoodAttentionSpec(
            d_head, ks, _int(d.get("dilation", 1), f"{where}.dilation", "dilation")
        )
    if "window_size" not in d:
        raise HDiTLoadError(f"config {where} (shifted-window) needs 'window_size': {_FIX}")
    return ShiftedWindowAttentionSpec(d_head, _int(d["window_size"], f"{where}.window_size", "window_size"))


def parse_config(config: dict | str) -> HDiTConfig:
    """Parse a k-diffusion config (full ``{"model": ..., "dataset": ...}`` dict, a bare model dict,
    or their JSON text) applying k-diffusion's defaults (``d_ffs = 3*width``,
    ``mapping_d_ff = 3*mapping_width``, neighborhood attention (d_head 64, kernel 7) at every level
    but the last, which is global, ``dataset.num_classes = 0``, ``cond_dropout_rate = 0.1``).

    Every size is type-checked and bounded (:data:`LIMITS`) here, so nothing is built from a config
    that asks for absurd tensors; all problems raise :class:`HDiTLoadError` naming the key."""
    if isinstance(config, bytes):
        config = config.decode("utf-8", errors="replace")
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError as e:
            raise HDiTLoadError(
                f"config is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}): fix or replace the JSON"
            ) from None
        except RecursionError:
            raise HDiTLoadError("config JSON is nested too deeply to be a k-diffusion config") from None
    if not isinstance(config, dict):
        raise HDiTLoadError(f"config must be a JSON object; got {type(config).__name__}")
    raw = copy.deepcopy(config)
    if "model" not in raw and "type" in raw:
        raw = {"model": raw}
    model = raw.get("model")
    if not isinstance(model, dict):
        raise HDiTLoadError("config has no 'model' section: use a k-diffusion image_transformer_v2 config")
    if model.get("type") != "image_transformer_v2":
        raise HDiTLoadError(
            f"config model.type is {model.get('type')!r}; only 'image_transformer_v2' (HDiT) is supported"
        )
    widths = [_int(w, f"model.widths[{i}]", "width") for i, w in enumerate(_list(model, "widths"))]
    n = len(widths)
    if n > LIMITS["levels"][1]:
        raise HDiTLoadError(
            f"config model.widths has {n} levels; at most {LIMITS['levels'][1]} are supported: {_FIX}"
        )
    depths = [_int(d, f"model.depths[{i}]", "depth") for i, d in enumerate(_list(model, "depths", n))]
    model.setdefault("d_ffs", [w * 3 for w in widths])
    d_ffs = [_int(f, f"model.d_ffs[{i}]", "d_ff") for i, f in enumerate(_list(model, "d_ffs", n))]
    model.setdefault(
        "self_attns",
        [{"type": "neighborhood", "d_head": 64, "kernel_size": 7}] * (n - 1)
        + [{"type": "global", "d_head": 64}],
    )
    attns = [_attn_spec(sa, i, widths[i]) for i, sa in enumerate(_list(model, "self_attns", n))]
    dr = model.setdefault("dropout_rate", [0.0] * n)
    if isinstance(dr, (int, float)) and not isinstance(dr, bool):
        model["dropout_rate"] = [dr] * n
    dropouts = [
        _float(d, f"model.dropout_rate[{i}]", 0.0, 1.0) for i, d in enumerate(_list(model, "dropout_rate", n))
    ]
    mapping_width = _int(model.setdefault("mapping_width", 256), "model.mapping_width", "mapping_width")
    if mapping_width % 2:
        raise HDiTLoadError(
            f"config model.mapping_width = {mapping_width} must be even (Fourier features): {_FIX}"
        )
    mapping = MappingSpec(
        _int(model.setdefault("mapping_depth", 2), "model.mapping_depth", "mapping_depth"),
        mapping_width,
        _int(model.setdefault("mapping_d_ff", mapping_width * 3), "model.mapping_d_ff", "d_ff"),
        _float(model.setdefault("mapping_dropout_rate", 0.0), "model.mapping_dropout_rate", 0.0, 1.0),
    )
    model.setdefault("mapping_cond_dim", 0)
    model.setdefault("input_channels", 3)
    model.setdefault("patch_size", 1)
    model.setdefault("sigma_data", 1.0)
    model.setdefault("sigma_min", 1e-2)
    model.setdefault("sigma_max", 80.0)
    model.setdefault("loss_weighting", "karras")
    model.setdefault("sigma_sample_density", {"type": "lognormal", "mean": -1.2, "std": 1.2})
    dataset = raw.setdefault("dataset", {})
    if not isinstance(dataset, dict):
        raise HDiTLoadError(f"config dataset must be a JSON object; got {type(dataset).__name__}: {_FIX}")
    dataset.setdefault("num_classes", model.get("num_classes", 0))
    dataset.setdefault("cond_dropout_rate", 0.1)
    sigma_min = _float(model["sigma_min"], "model.sigma_min", 0.0, open_lo=True)
    sigma_max = _float(model["sigma_max"], "model.sigma_max", 0.0, open_lo=True)
    if sigma_min >= sigma_max:
        raise HDiTLoadError(
            f"config model.sigma_min = {sigma_min} must be below model.sigma_max = {sigma_max}: {_FIX}"
        )
    if not isinstance(model["sigma_sample_density"], dict):
        raise HDiTLoadError(f"config model.sigma_sample_density must be a JSON object: {_FIX}")
    levels = [
        LevelSpec(dp, w, ff, sa, do) for dp, w, ff, sa, do in zip(depths, widths, d_ffs, attns, dropouts)
    ]
    try:
        relay = relay_config(raw)
    except ValueError as e:
        raise HDiTLoadError(f"{e}: fix the config's 'relay' section or remove it") from None
    return HDiTConfig(
        levels=levels,
        mapping=mapping,
        input_channels=_int(model["input_channels"], "model.input_channels", "input_channels"),
        input_size=_pair(model.get("input_size", [256, 256]), "input_size", "input_size"),
        patch_size=_pair(model["patch_size"], "patch_size"),
        num_classes=_int(dataset["num_classes"] or 0, "dataset.num_classes", "num_classes"),
        mapping_cond_dim=_int(model["mapping_cond_dim"] or 0, "model.mapping_cond_dim", "mapping_cond_dim"),
        sigma_data=_float(model["sigma_data"], "model.sigma_data", 0.0, open_lo=True),
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        loss_weighting=str(model["loss_weighting"]),
        sigma_sample_density=dict(model["sigma_sample_density"]),
        raw=raw,
        relay=relay,
    )


MEMORY_MARGIN = 1.25


def activation_bytes_per_pixel(config: HDiTConfig | dict | str, margin: float = MEMORY_MARGIN) -> float:
    """Peak activation memory of one inference forward, in bytes per image pixel per batch item.

    A model of this module's own forward, calibrated against the CPU allocator's peak (torch
    profiler) for several configs (patch 1-4, 2-4 levels, each attention type, bf16 and fp32; the
    model is within 0.95-1.1x of the measured peak, 0.7-1.9x over the extremes, before ``margin``).
    Everything is counted in float32 bytes because norms, RoPE, softmax and attention logits run in
    float32 whatever the weight dtype. Per level ``i`` with ``t = 1 / (patch_h patch_w 4**i)`` tokens
    per pixel, width ``w``, ``n`` heads, the largest block temporary (float32 elements per token) is
    ``max(attention, w + 4 d_ff)`` with attention ``9.5 w`` (global: SDPA without logits),
    ``+ 3.5 n ws^2`` (shifted window), ``w (9.5 + R^2/24) + 2.25 n R^2`` with ``R = 8 + k - 1``
    (neighborhood, blocked) or ``w (9.5 + 3.5 k^2) + 3 n k^2`` (dilated, gathered windows); add the
    level's residual and skip ``2 w`` and the skips of the levels above. The peak is the largest
    level plus the input (``8 C`` bytes). Linear in pixels, like ComfyUI's ``memory_required``
    (large images use less: neighborhood attention runs in bounded chunks)."""
    cfg = config if isinstance(config, HDiTConfig) else parse_config(config)
    ph, pw = cfg.patch_size
    skips, peak = 0.0, 0.0
    for i, lv in enumerate(cfg.levels):
        t = 1.0 / (ph * pw * 4**i)
        w, sa = lv.width, lv.self_attn
        attn = 0.0
        if not isinstance(sa, NoAttentionSpec):
            n = w // sa.d_head
            if isinstance(sa, GlobalAttentionSpec):
                attn = 9.5 * w
            elif isinstance(sa, ShiftedWindowAttentionSpec):
                attn = 9.5 * w + 3.5 * n * sa.window_size**2
            elif sa.dilation == 1:
                r2 = (8 + sa.kernel_size - 1) ** 2
                attn = w * (9.5 + r2 / 24) + 2.25 * n * r2
            else:
                k2 = sa.kernel_size**2
                attn = w * (9.5 + 3.5 * k2) + 3 * n * k2
        peak = max(peak, skips + t * 4 * (max(attn, w + 4 * lv.d_ff) + 2 * w))
        skips += t * 4 * w
    return (peak + 8 * cfg.input_channels) * margin


def build_model(config: HDiTConfig | dict | str) -> HDiT:
    """Config -> freshly initialised inner :class:`HDiT` (float32)."""
    cfg = config if isinstance(config, HDiTConfig) else parse_config(config)
    return HDiT(
        cfg.levels,
        cfg.mapping,
        cfg.input_channels,
        cfg.input_channels,
        cfg.patch_size,
        num_classes=cfg.num_classes + 1 if cfg.num_classes else 0,
        mapping_cond_dim=cfg.mapping_cond_dim,
    )


# ----------------------------------------------------------------------------- checkpoints

_PREFIXES = ("module.", "_orig_mod.", "inner_model.")


def _strip_prefixes(sd: dict) -> dict:
    changed = True
    while changed and sd:
        changed = False
        for p in _PREFIXES:
            if all(isinstance(k, str) and k.startswith(p) for k in sd):
                sd = {k[len(p) :]: v for k, v in sd.items()}
                changed = True
    return sd


def expected_shapes(config: HDiTConfig | dict | str) -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape of the HDiT a (bounded, validated) config describes, without
    allocating any weights (the model is built on the ``meta`` device)."""
    cfg = config if isinstance(config, HDiTConfig) else parse_config(config)
    with torch.device("meta"):
        model = build_model(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_shapes(expected: dict, found: dict, source: str = "checkpoint") -> None:
    """Refuse missing or unexpected keys and shape mismatches between a config's ``expected``
    shapes and a file's ``found`` shapes (key -> tuple), with one message that lists them all."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(str(k) for k in set(found) - set(expected))
    shapes = [
        f"{k}: file {tuple(found[k])} vs config {tuple(expected[k])}"
        for k in expected
        if k in found and tuple(found[k]) != tuple(expected[k])
    ]
    if not (missing or unexpected or shapes):
        return

    def fmt(items, limit=12):
        more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
        return ", ".join(items[:limit]) + more

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {fmt(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {fmt(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches: {fmt(shapes, 6)}")
    raise HDiTLoadError(
        f"{source} does not match its HDiT config (is the config for these weights?): " + "; ".join(parts)
    )


def _require_tensors(sd: dict, source: str) -> None:
    for k, v in sd.items():
        if not isinstance(k, str) or not torch.is_tensor(v):
            raise HDiTLoadError(
                f"{source}: state-dict entry {str(k)[:80]!r} is not a named tensor; the file is not "
                f"an HDiT checkpoint"
            )


def load_state_dict_strict(model: nn.Module, state_dict: dict, source: str = "checkpoint") -> None:
    """Copy ``state_dict`` into ``model`` (dtype cast to the model's), refusing non-tensors, missing or
    unexpected keys, shape mismatches (one message that lists them all) and NaN/Inf values."""
    sd = _strip_prefixes(dict(state_dict))
    _require_tensors(sd, source)
    own = model.state_dict()
    check_shapes(
        {k: tuple(v.shape) for k, v in own.items()}, {k: tuple(v.shape) for k, v in sd.items()}, source
    )
    for k, v in sd.items():
        if not torch.isfinite(v.float()).all():
            raise HDiTLoadError(
                f"{source}: tensor {k!r} contains NaN/Inf values (corrupt or diverged weights)"
            )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)


_REEXPORT = (
    "Download or export it again (k-diffusion's convert_for_inference.py writes the .safetensors "
    "inference format with its config)."
)


def _safetensors_header(path: str, name: str):
    """``(key -> shape, config text or None)`` from the header only: no tensor is read."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception:  # HeaderTooLarge, InvalidHeaderDeserialization, MetadataIncompleteBuffer, OSError...
        raise HDiTLoadError(
            f"{name} is not a valid .safetensors file: its header cannot be read (the file is truncated, "
            f"corrupt or in another format). {_REEXPORT}"
        ) from None
    return shapes, meta.get("config")


def _safetensors_tensors(path: str, name: str) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception:
        raise HDiTLoadError(
            f"{name}: the tensor data cannot be read (truncated or corrupt file). {_REEXPORT}"
        ) from None


def _read_pth(path: str, name: str):
    import pickle
    import zipfile

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if zipfile.is_zipfile(path):
            raise HDiTLoadError(
                f"{name} holds Python objects other than tensors and plain containers, and UltraRes never "
                f"unpickles those (that could run code from the file). Save only the weights and the config, "
                f"e.g. {{'config': ..., 'model_ema': model_ema.state_dict()}}, or convert the checkpoint to the "
                f".safetensors inference format with k-diffusion's convert_for_inference.py."
            ) from None
        raise HDiTLoadError(
            f"{name} is not a PyTorch checkpoint (it is corrupt or in another format). {_REEXPORT}"
        ) from None
    except Exception:
        raise HDiTLoadError(
            f"{name} cannot be read as a PyTorch checkpoint (truncated or corrupt). {_REEXPORT}"
        ) from None
    if not isinstance(obj, dict):
        raise HDiTLoadError(f"{name} holds a {type(obj).__name__}, not a checkpoint dict")
    config = obj.get("config")
    for key in ("model_ema", "model"):
        if isinstance(obj.get(key), dict):
            return obj[key], config
    if obj and all(torch.is_tensor(v) for v in obj.values()):
        return obj, config
    keys = ", ".join(repr(str(k)[:40]) for k in list(obj)[:10])
    raise HDiTLoadError(f"{name} has no 'model_ema' or 'model' state dict (its entries: {keys})")


def _read_text(path: str, name: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(16 * 1024 * 1024 + 1)[: 16 * 1024 * 1024]
    except (OSError, UnicodeDecodeError):
        raise HDiTLoadError(
            f"{name} cannot be read as UTF-8 JSON text; save the config as a .json file"
        ) from None


def load_checkpoint(
    path: str, config: dict | str | None = None, name: str | None = None
) -> tuple[HDiT, HDiTConfig]:
    """Load an HDiT from a k-diffusion file and return ``(inner model in eval mode, float32, config)``.

    ``path``: ``.safetensors`` (inference format, config in the ``"config"`` metadata), ``.pth``/
    ``.pt``/``.ckpt`` training checkpoint (``model_ema`` preferred, then ``model``; read with
    ``weights_only=True``), or a ``.json`` config with the weights beside it (same stem with
    ``.safetensors`` or ``.pth``). ``config`` overrides/supplies the config; otherwise a ``.json``
    with the same stem next to the weights is used when the file has none. ``name`` is how messages
    call the file (default: its base name; the node passes the name relative to the models folder).

    The config is validated and bounded and the file's tensor shapes (the safetensors header, read
    without loading any tensor) are checked against it *before* any weight is allocated; every
    problem raises :class:`HDiTLoadError` naming the file, what is wrong and what to do.
    """
    name = name or os.path.basename(path)
    if not os.path.isfile(path):
        raise HDiTLoadError(f"HDiT file {name} not found")
    stem, ext = os.path.splitext(path)
    ext = ext.lower()
    sibling = lambda e: os.path.join(os.path.dirname(name), os.path.basename(stem) + e)  # noqa: E731
    if ext == ".json":
        json_cfg = _read_text(path, name)
        for cand in (".safetensors", ".pth", ".pt", ".ckpt"):
            if os.path.isfile(stem + cand):
                return load_checkpoint(stem + cand, config if config is not None else json_cfg, sibling(cand))
        raise HDiTLoadError(
            f"{name} is a config; put the weights beside it as {os.path.basename(stem)}.safetensors or .pth"
        )
    sd = None
    if ext == ".safetensors":
        shapes, file_cfg = _safetensors_header(path, name)
    elif ext in (".pth", ".pt", ".ckpt"):
        sd, file_cfg = _read_pth(path, name)
        sd = _strip_prefixes(dict(sd))
        _require_tensors(sd, name)
        shapes = {k: tuple(v.shape) for k, v in sd.items()}
    else:
        raise HDiTLoadError(
            f"{name}: unsupported extension {ext!r}; use .safetensors, .pth or a .json config"
        )
    where = "the given config"
    if config is None and file_cfg is not None:
        config, where = file_cfg, f"the config inside {name}"
    if config is None and os.path.isfile(stem + ".json"):
        config, where = _read_text(stem + ".json", sibling(".json")), sibling(".json")
    if config is None:
        raise HDiTLoadError(
            f"{name} carries no config (no 'config' metadata/entry); put the k-diffusion "
            f"config JSON beside it as {os.path.basename(stem)}.json"
        )
    try:
        cfg = parse_config(config)
    except HDiTLoadError as e:
        raise HDiTLoadError(f"{name}: {where} is not usable: {e}") from None
    check_shapes(expected_shapes(cfg), _strip_prefixes(shapes), name)  # before any weight is allocated
    if sd is None:
        sd = _safetensors_tensors(path, name)
    model = build_model(cfg)
    load_state_dict_strict(model, sd, name)
    return model.eval(), cfg


def open_checkpoint(path: str, name: str | None = None) -> tuple[HDiT, HDiTConfig]:
    """:func:`load_checkpoint` for a user's file: every failure is an :class:`HDiTLoadError` naming the
    file (``name``, default its base name) and what to do; running out of memory says so, and any other
    error (a bug, or a file nobody foresaw) is logged with its traceback and named by its type."""
    name = name or os.path.basename(path)
    try:
        return load_checkpoint(path, name=name)
    except HDiTLoadError:
        raise
    except MemoryError:
        raise HDiTLoadError(
            f"not enough memory to load {name}; free memory (unload other models) or use a smaller model."
        ) from None
    except Exception as e:
        logging.getLogger(__name__).exception("loading HDiT file %s failed", name)
        raise HDiTLoadError(
            f"cannot load {name}: unexpected {type(e).__name__} while reading it (details in the ComfyUI "
            "log). Check that it is a k-diffusion image_transformer_v2 checkpoint."
        ) from None


def save_inference(model: HDiT, config: HDiTConfig | dict, path: str, dtype=torch.float16) -> None:
    """Write the k-diffusion inference format: safetensors of the state dict (``dtype``) with
    metadata ``{"config": json.dumps(config)}``."""
    from safetensors.torch import save_file

    raw = config.raw if isinstance(config, HDiTConfig) else config
    sd = {
        k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
        for k, v in model.state_dict().items()
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    save_file(sd, tmp, metadata={"config": json.dumps(raw, indent=4)})
    os.replace(tmp, path)
