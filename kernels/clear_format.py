"""CLEAR weight files (Huage001/CLEAR releases) and their mapping onto ComfyUI's fused FLUX layers.

An official file (``clear_local_32``, ``clear_local_16``, ``clear_local_8``, ``clear_local_16_down_4``,
``clear_local_8_down_4``; ``.safetensors``, float32/bfloat16/float16) holds the attention weights the
distillation trained, under diffusers' FLUX key names (``h`` = hidden size, 3072 for FLUX.1)::

    transformer_blocks.{i}.attn.to_{q,k,v}.{weight [h, h], bias [h]}          i < double blocks (19)
    transformer_blocks.{i}.attn.to_out.0.{weight [h, h], bias [h]}
    single_transformer_blocks.{j}.attn.to_{q,k,v}.{weight [h, h], bias [h]}   j < single blocks (38)
    {transformer_blocks.i | single_transformer_blocks.j}.attn.processor.spatial_weight
                                                     [1, 1, 1, df, 1, df, 1]  (down variants only)

Window and down factor come from the file name (``clear_local_{window}[_down_{df}]``) or from the
metadata keys ``window_size`` / ``down_factor``; the down factor must agree with the
``spatial_weight`` shape. Either can be overridden (a down factor on a file without pooling weights
starts from the official initial weight ``1/df^2``, i.e. an untrained mean).

ComfyUI's FLUX fuses these (``comfy/ldm/flux/layers.py``)::

    double_blocks.{i}.img_attn.qkv   rows [0:h] = to_q, [h:2h] = to_k, [2h:3h] = to_v
    double_blocks.{i}.img_attn.proj  = to_out.0
    single_blocks.{j}.linear1        rows [0:3h] = to_q, to_k, to_v; rows [3h:7h] = the MLP input (untouched)

:func:`fused_patches` gives each CLEAR tensor with its ComfyUI key and row range. Header and key
checks read only the safetensors header (:func:`read_clear`); tensors are read by :meth:`ClearFile.load`
after the caller has checked the layout against its model (:meth:`ClearFile.check_model`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch

DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
NAME_PATTERN = re.compile(r"clear_local_(\d+)(?:_down_(\d+))?", re.IGNORECASE)
_KEY = re.compile(
    r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.attn\."
    r"(to_q\.weight|to_q\.bias|to_k\.weight|to_k\.bias|to_v\.weight|to_v\.bias|"
    r"to_out\.0\.weight|to_out\.0\.bias|processor\.spatial_weight)$"
)
DOUBLE, SINGLE = "transformer_blocks", "single_transformer_blocks"
_PROJ = ("to_q", "to_k", "to_v")
_HINT = "Use an official CLEAR file (huggingface.co/Huage001/CLEAR) made for FLUX.1."


class ClearFormatError(ValueError):
    """A CLEAR file is unreadable, has foreign keys or shapes, or does not fit the model."""


def settings_from_name(name: str) -> tuple[int | None, int | None]:
    """``(window, down_factor)`` from a file name such as ``clear_local_16_down_4.safetensors``
    (``down_factor`` 1 when the name has no ``_down_``); ``(None, None)`` when it does not match."""
    m = NAME_PATTERN.search(os.path.basename(name))
    if not m:
        return None, None
    return int(m[1]), int(m[2]) if m[2] else 1


def expected_keys(hidden: int, n_double: int, n_single: int, down_factor: int) -> dict[str, tuple]:
    """Every key of a CLEAR file for a FLUX of this size, with its shape."""
    out: dict[str, tuple] = {}
    sw = (1, 1, 1, down_factor, 1, down_factor, 1)
    for prefix, n, projs in ((DOUBLE, n_double, (*_PROJ, "to_out.0")), (SINGLE, n_single, _PROJ)):
        for i in range(n):
            for p in projs:
                out[f"{prefix}.{i}.attn.{p}.weight"] = (hidden, hidden)
                out[f"{prefix}.{i}.attn.{p}.bias"] = (hidden,)
            if down_factor > 1:
                out[f"{prefix}.{i}.attn.processor.spatial_weight"] = sw
    return out


@dataclass
class ClearFile:
    """A checked CLEAR file: its layout from the header, and the settings to run it with."""

    name: str
    path: str
    window: int
    down_factor: int
    hidden: int
    n_double: int
    n_single: int
    dtype: torch.dtype
    has_spatial_weight: bool
    shapes: dict[str, tuple] = field(repr=False, default_factory=dict)

    def describe(self) -> str:
        down = f", down factor {self.down_factor}" if self.down_factor > 1 else ""
        return (
            f"CLEAR window {self.window}{down} for a FLUX of hidden size {self.hidden} "
            f"({self.n_double} double + {self.n_single} single blocks)"
        )

    def check_model(self, hidden: int, n_double: int, n_single: int, model_desc: str = "the model") -> None:
        """Raise :class:`ClearFormatError` unless the file fits a FLUX with these sizes."""
        if (hidden, n_double, n_single) != (self.hidden, self.n_double, self.n_single):
            raise ClearFormatError(
                f"{self.name} ({self.describe()}) does not fit {model_desc} (hidden size {hidden}, "
                f"{n_double} double + {n_single} single blocks). {_HINT}"
            )

    def load(self) -> dict[str, torch.Tensor]:
        """The file's tensors (as stored), plus ``spatial_weight`` at the official initial value
        ``1/df^2`` for every layer when the down factor was set on a file without them."""
        from safetensors import safe_open

        try:
            with safe_open(self.path, framework="pt", device="cpu") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception:  # truncated data, I/O errors
            raise ClearFormatError(
                f"{self.name}: the tensor data cannot be read (the file is truncated or corrupt); download it again."
            ) from None
        if self.down_factor > 1 and not self.has_spatial_weight:
            init = torch.full((1, 1, 1, self.down_factor, 1, self.down_factor, 1), 1.0 / self.down_factor**2)
            for prefix, n in ((DOUBLE, self.n_double), (SINGLE, self.n_single)):
                for i in range(n):
                    tensors[f"{prefix}.{i}.attn.processor.spatial_weight"] = init.clone()
        return tensors


def _header(path: str, name: str) -> tuple[dict[str, tuple], dict[str, str], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            shapes, dtypes = {}, {}
            for k in f.keys():
                s = f.get_slice(k)
                shapes[k], dtypes[k] = tuple(s.get_shape()), str(s.get_dtype())
    except Exception:  # HeaderTooLarge, InvalidHeaderDeserialization, MetadataIncompleteBuffer, OSError...
        raise ClearFormatError(
            f"{name} is not a valid .safetensors file: its header cannot be read (the file is truncated, "
            f"corrupt or in another format). {_HINT}"
        ) from None
    return shapes, dtypes, meta


def _int_setting(meta: dict, key: str, name: str) -> int | None:
    if key not in meta:
        return None
    try:
        value = int(meta[key])
    except ValueError:
        raise ClearFormatError(f"{name}: metadata {key}={meta[key]!r} is not an integer") from None
    if value < 1:
        raise ClearFormatError(f"{name}: metadata {key}={value} must be >= 1")
    return value


def read_clear(
    path: str, name: str | None = None, window: int | None = None, down_factor: int | None = None
) -> ClearFile:
    """Check a CLEAR file from its header alone and settle its window and down factor.

    Args:
        path: the ``.safetensors`` file; ``name``: how messages call it (default: its base name).
        window, down_factor: overrides (``None``: from the metadata, else the file name; the down
            factor defaults to what the ``spatial_weight`` shape says).
    Raises :class:`ClearFormatError` naming the file and the first problem: unreadable header, a
    dtype other than float32/bfloat16/float16, a key outside the CLEAR layout, a missing key, a
    shape that disagrees with the others, settings that disagree, no window anywhere.
    """
    name = name or os.path.basename(path)
    if not os.path.isfile(path):
        raise ClearFormatError(f"CLEAR file {name} not found")
    shapes, dtypes, meta = _header(path, name)
    if not shapes:
        raise ClearFormatError(f"{name} holds no tensors. {_HINT}")
    bad = sorted(k for k in shapes if not _KEY.match(k))
    if bad:
        raise ClearFormatError(
            f"{name} has keys outside the CLEAR layout, e.g. {bad[:3]} ({len(bad)} in all); a CLEAR file holds "
            f"only transformer_blocks.N.attn.to_q/to_k/to_v/to_out.0, single_transformer_blocks.N.attn.to_q/"
            f"to_k/to_v and processor.spatial_weight. {_HINT}"
        )
    odd = sorted({d for d in dtypes.values() if d not in DTYPES})
    if odd:
        raise ClearFormatError(f"{name} stores {odd} tensors; CLEAR files are float32, bfloat16 or float16.")
    q0 = f"{DOUBLE}.0.attn.to_q.weight"
    if q0 not in shapes or len(shapes[q0]) != 2:
        raise ClearFormatError(f"{name} has no 2-D {q0}. {_HINT}")
    hidden = shapes[q0][0]
    idx = {
        p: sorted({int(_KEY.match(k)[2]) for k in shapes if k.startswith(p + ".")}) for p in (DOUBLE, SINGLE)
    }
    n_double, n_single = len(idx[DOUBLE]), len(idx[SINGLE])
    sw = [shapes[k] for k in shapes if k.endswith("spatial_weight")]
    file_df = sw[0][3] if sw and len(sw[0]) == 7 else 1
    expected = expected_keys(hidden, n_double, n_single, file_df)
    if not sw:
        expected = {k: s for k, s in expected.items() if not k.endswith("spatial_weight")}
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    if missing or extra:
        raise ClearFormatError(
            f"{name}: the CLEAR layout is incomplete: missing keys {missing[:4]}"
            + (f", unexpected keys {extra[:4]}" if extra else "")
            + f" (block numbers must run from 0; found double blocks {idx[DOUBLE][:3]}..., "
            f"single blocks {idx[SINGLE][:3]}...). {_HINT}"
        )
    for k, shape in expected.items():
        if shapes[k] != shape:
            raise ClearFormatError(
                f"{name}: key {k} has shape {list(shapes[k])}, the layout (hidden size {hidden}) needs {list(shape)}. {_HINT}"
            )
    name_window, name_df = settings_from_name(name)
    meta_window = _int_setting(meta, "window_size", name)
    meta_df = _int_setting(meta, "down_factor", name)
    stated_df = meta_df if meta_df is not None else name_df
    if down_factor is None:
        if stated_df is not None and stated_df != file_df and (stated_df > 1 or sw):
            raise ClearFormatError(
                f"{name}: the name/metadata says down factor {stated_df} but the file's spatial_weight "
                f"gives {file_df}; rename the file or set the down factor."
            )
        down_factor = file_df
    elif sw and down_factor != file_df:
        raise ClearFormatError(
            f"down factor {down_factor} does not fit {name}, whose spatial_weight is for down factor {file_df}"
        )
    if window is None:
        window = meta_window if meta_window is not None else name_window
    if window is None:
        raise ClearFormatError(
            f"{name}: no window size in the file name (clear_local_<window>[_down_<df>]) or metadata "
            "('window_size'); set the window on Apply CLEAR or rename the file."
        )
    if window < 1 or down_factor < 1:
        raise ClearFormatError(f"{name}: window {window} and down factor {down_factor} must be >= 1")
    dtype = DTYPES[dtypes[q0]]
    return ClearFile(
        name, path, int(window), int(down_factor), hidden, n_double, n_single, dtype, bool(sw), shapes
    )


def fused_patches(tensors: dict[str, torch.Tensor], n_double: int, n_single: int, hidden: int):
    """``[(comfy_key, offset, tensor)]``: each CLEAR projection in ComfyUI's fused FLUX layout.

    ``comfy_key`` is relative to the diffusion model (``double_blocks.0.img_attn.qkv.weight``);
    ``offset`` is ``None`` (the whole tensor) or ``(dim, start, length)``, ComfyUI's row-range
    convention (``single_blocks.J.linear1`` rows ``[0, 3h)``; its MLP rows stay untouched)."""
    out = []
    for i in range(n_double):
        p = f"{DOUBLE}.{i}.attn"
        for part in ("weight", "bias"):
            qkv = torch.cat([tensors[f"{p}.{n}.{part}"] for n in _PROJ], dim=0)
            out.append((f"double_blocks.{i}.img_attn.qkv.{part}", None, qkv))
            out.append((f"double_blocks.{i}.img_attn.proj.{part}", None, tensors[f"{p}.to_out.0.{part}"]))
    for j in range(n_single):
        p = f"{SINGLE}.{j}.attn"
        for part in ("weight", "bias"):
            qkv = torch.cat([tensors[f"{p}.{n}.{part}"] for n in _PROJ], dim=0)
            out.append((f"single_blocks.{j}.linear1.{part}", (0, 0, 3 * hidden), qkv))
    return out


def spatial_weights(
    tensors: dict[str, torch.Tensor], n_double: int, n_single: int
) -> dict[tuple[str, int], torch.Tensor]:
    """``{("double", i) | ("single", j): [df, df] float32}`` (empty without downsampling)."""
    out = {}
    for prefix, kind, n in ((DOUBLE, "double", n_double), (SINGLE, "single", n_single)):
        for i in range(n):
            t = tensors.get(f"{prefix}.{i}.attn.processor.spatial_weight")
            if t is not None:
                df = t.shape[3]
                out[(kind, i)] = t.reshape(df, df).float()
    return out
