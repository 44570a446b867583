"""Hourglass Diffusion Transformer (HDiT, arXiv 2401.11605): the model, with k-diffusion's module tree.

The module tree mirrors k-diffusion's ``image_transformer_v2`` so its state dicts load with strict
key checks. Config parsing and checkpoint I/O (k-diffusion's ``.pth`` and safetensors inference
formats) live in :mod:`ultrares.kernels.hdit_format`; the DPM++ sampler and the Karras noise grid
in :mod:`ultrares.kernels.schedules`. Attention runs through :mod:`ultrares.kernels.neighborhood`
(pure PyTorch, no NATTEN needed).

Tensor conventions: images are ``[B, C, H, W]`` float in model space (k-diffusion trains on
``[-1, 1]`` pixels); ``sigma`` is the *raw* noise level ``[B]`` (> 0); tokens inside the model are
channels-last ``[B, h, w, width]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from . import neighborhood as na

__all__ = [
    "GlobalAttentionSpec",
    "NeighborhoodAttentionSpec",
    "ShiftedWindowAttentionSpec",
    "NoAttentionSpec",
    "LevelSpec",
    "MappingSpec",
    "HDiT",
    "Denoiser",
    "UNCOND",
]

# ----------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class GlobalAttentionSpec:
    d_head: int = 64


@dataclass(frozen=True)
class NeighborhoodAttentionSpec:
    d_head: int = 64
    kernel_size: int = 7
    dilation: int = 1


@dataclass(frozen=True)
class ShiftedWindowAttentionSpec:
    d_head: int = 64
    window_size: int = 8


@dataclass(frozen=True)
class NoAttentionSpec:
    pass


@dataclass(frozen=True)
class LevelSpec:
    depth: int
    width: int
    d_ff: int
    self_attn: Any
    dropout: float = 0.0


@dataclass(frozen=True)
class MappingSpec:
    depth: int
    width: int
    d_ff: int
    dropout: float = 0.0


# ----------------------------------------------------------------------------- helpers


def _zero_init(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / rms(x) * scale`` over the last axis, computed in at least float32."""
    dtype = torch.promote_types(torch.promote_types(x.dtype, scale.dtype), torch.float32)
    mean_sq = x.to(dtype).pow(2).mean(dim=-1, keepdim=True)
    return x * (scale.to(dtype) * torch.rsqrt(mean_sq + eps)).to(x.dtype)


def cosine_sim_scale(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6):
    """L2-normalise q and k over the last axis and multiply each by ``sqrt(scale)`` (per head)."""
    dtype = torch.promote_types(torch.promote_types(q.dtype, scale.dtype), torch.float32)
    root = scale.to(dtype).sqrt()
    sq = root * torch.rsqrt(q.to(dtype).pow(2).sum(-1, keepdim=True) + eps)
    sk = root * torch.rsqrt(k.to(dtype).pow(2).sum(-1, keepdim=True) + eps)
    return q * sq.to(q.dtype), k * sk.to(k.dtype)


def apply_rotary(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs ``(x[i], x[d + i])`` for ``i < d = theta.shape[-1]`` by ``theta``;
    channels from ``2d`` on pass through. ``theta`` broadcasts against ``x[..., :d]``."""
    d = theta.shape[-1]
    if 2 * d > x.shape[-1]:
        raise ValueError(f"rotary angles need 2*{d} <= head dim {x.shape[-1]}")
    dtype = torch.promote_types(torch.promote_types(x.dtype, theta.dtype), torch.float32)
    x1, x2, rest = x[..., :d].to(dtype), x[..., d : 2 * d].to(dtype), x[..., 2 * d :]
    cos, sin = theta.to(dtype).cos(), theta.to(dtype).sin()
    y1 = (x1 * cos - x2 * sin).to(x.dtype)
    y2 = (x2 * cos + x1 * sin).to(x.dtype)
    return torch.cat((y1, y2, rest), dim=-1)


def make_axial_pos(h: int, w: int, device=None, dtype=None) -> torch.Tensor:
    """Token-centre coordinates ``[h, w, 2]`` (row, col) inside an aspect-correct box: the longer
    side spans [-1, 1], the shorter one is shrunk in proportion."""
    ar = w / h
    y0, y1, x0, x1 = -1.0, 1.0, -1.0, 1.0
    if ar > 1:
        y0, y1 = -1 / ar, 1 / ar
    elif ar < 1:
        x0, x1 = -ar, ar

    def centres(a, b, n):
        edges = torch.linspace(a, b, n + 1, device=device, dtype=dtype)
        return (edges[:-1] + edges[1:]) / 2

    return torch.stack(torch.meshgrid(centres(y0, y1, h), centres(x0, x1, w), indexing="ij"), dim=-1)


def downscale_pos(pos: torch.Tensor) -> torch.Tensor:
    """Average positions over 2x2 token groups: ``[h, w, 2] -> [h/2, w/2, 2]``."""
    return rearrange(pos, "(h nh) (w nw) e -> h w (nh nw) e", nh=2, nw=2).mean(dim=-2)


# ----------------------------------------------------------------------------- layers


class FourierFeatures(nn.Module):
    """``cat(cos, sin)(2 pi x W^T)`` with a fixed random buffer ``weight [out/2, in]``."""

    def __init__(self, in_features: int, out_features: int, std: float = 1.0):
        super().__init__()
        if out_features % 2:
            raise ValueError("FourierFeatures needs an even out_features")
        self.register_buffer("weight", torch.randn(out_features // 2, in_features) * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = 2 * math.pi * x @ self.weight.T.to(x.dtype)
        return torch.cat([f.cos(), f.sin()], dim=-1)


class LinearGEGLU(nn.Linear):
    """Linear to ``2*out`` then ``a * gelu(gate)`` with ``a, gate`` the two halves (a first)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__(in_features, out_features * 2, bias=bias)
        self.out_features_geglu = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = super().forward(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class RMSNorm(nn.Module):
    def __init__(self, features: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.scale, self.eps)


class AdaRMSNorm(nn.Module):
    """RMSNorm whose scale is ``1 + Linear(cond)`` (zero-init, no bias). x ``[B,h,w,d]``, cond ``[B,c]``."""

    def __init__(self, features: int, cond_features: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.linear = _zero_init(nn.Linear(cond_features, features, bias=False))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.linear(cond)[:, None, None, :] + 1, self.eps)


class AxialRoPE(nn.Module):
    """Axial rotary angles. ``freqs [n_heads, dim/4]`` log-spaced in [pi, 10 pi); for positions
    ``[..., 2]`` returns ``[..., n_heads, dim/2]`` = cat(row * f, col * f). Built with
    ``dim = d_head / 2`` so a quarter of each head rotates by row and a quarter by column."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        n = n_heads * dim // 4
        freqs = torch.linspace(math.log(math.pi), math.log(10 * math.pi), n + 1)[:-1].exp()
        self.register_buffer("freqs", freqs.view(dim // 4, n_heads).T.contiguous())

    def _apply(self, fn, recurse=True):
        # ``model.to(bfloat16)`` must not round the frequencies: keep the buffer float32 (moved to
        # the new device only), like k-diffusion, whose weights stay float32 under autocast.
        freqs = self.freqs
        super()._apply(fn, recurse)
        if freqs.dtype == torch.float32 and self.freqs.dtype != torch.float32:
            self.freqs = freqs.to(self.freqs.device)
        return self

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        """Angles in at least float32 whatever the activation dtype. (In bfloat16 a position near 1
        is rounded to 1/256 and an angle near 30 rad to 1/8: at 512 tokens per side that is the
        whole step between neighbouring tokens.)"""
        dtype = torch.promote_types(torch.promote_types(pos.dtype, self.freqs.dtype), torch.float32)
        f = self.freqs.to(dtype)
        pos = pos.to(dtype)
        return torch.cat((pos[..., None, 0:1] * f, pos[..., None, 1:2] * f), dim=-1)


class AttentionBlock(nn.Module):
    """AdaRMSNorm -> qkv -> cosine-sim (per-head scale) -> axial RoPE -> attention -> out_proj, residual."""

    def __init__(self, d_model: int, cond_features: int, spec, layer_index: int = 0, dropout: float = 0.0):
        super().__init__()
        if d_model % spec.d_head:
            raise ValueError(f"width {d_model} is not a multiple of d_head {spec.d_head}")
        if spec.d_head % 8:
            raise ValueError(f"d_head must be a multiple of 8 for axial RoPE; got {spec.d_head}")
        self.spec = spec
        self.d_head = spec.d_head
        self.n_heads = d_model // spec.d_head
        self.shift = 0
        if isinstance(spec, ShiftedWindowAttentionSpec):
            self.shift = 0 if layer_index % 2 == 0 else spec.window_size // 2
        self.norm = AdaRMSNorm(d_model, cond_features)
        self.qkv_proj = nn.Linear(d_model, d_model * 3, bias=False)
        self.scale = nn.Parameter(torch.full([self.n_heads], 10.0))
        self.pos_emb = AxialRoPE(spec.d_head // 2, self.n_heads)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = _zero_init(nn.Linear(d_model, d_model, bias=False))

    def rotate(self, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor):
        """Axial RoPE on q, k ``[B, heads, h, w, d_head]`` for token positions ``pos [h, w, 2]``.
        Positions and angles stay float32 (k-diffusion computes them in float32 outside global
        attention); the rotation runs in float32 and only its result is cast to q's dtype."""
        theta = rearrange(self.pos_emb(pos), "h w nh e -> nh h w e")
        return apply_rotary(q, theta), apply_rotary(k, theta)

    def attend(self, q, k, v):
        """q, k, v ``[B, heads, h, w, d_head]`` (already cosine-scaled and rotated)."""
        spec = self.spec
        if isinstance(spec, NeighborhoodAttentionSpec):
            return na.neighborhood_attention_2d(q, k, v, spec.kernel_size, spec.dilation, scale=1.0)
        if isinstance(spec, ShiftedWindowAttentionSpec):
            return na.shifted_window_attention_2d(q, k, v, spec.window_size, self.shift, scale=1.0)
        return na.global_attention_2d(q, k, v, scale=1.0)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        skip = x
        x = self.norm(x, cond)
        qkv = self.qkv_proj(x)
        q, k, v = rearrange(qkv, "b h w (t nh e) -> t b nh h w e", t=3, e=self.d_head)
        q, k = self.rotate(*cosine_sim_scale(q, k, self.scale[:, None, None, None]), pos)
        x = rearrange(self.attend(q, k, v), "b nh h w e -> b h w (nh e)")
        return self.out_proj(self.dropout(x)) + skip


class FeedForwardBlock(nn.Module):
    def __init__(self, d_model: int, d_ff: int, cond_features: int, dropout: float = 0.0):
        super().__init__()
        self.norm = AdaRMSNorm(d_model, cond_features)
        self.up_proj = LinearGEGLU(d_model, d_ff, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.down_proj = _zero_init(nn.Linear(d_ff, d_model, bias=False))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.dropout(self.up_proj(self.norm(x, cond)))) + x


class TransformerLayer(nn.Module):
    def __init__(self, spec: LevelSpec, cond_features: int, layer_index: int):
        super().__init__()
        if not isinstance(spec.self_attn, NoAttentionSpec):
            self.self_attn = AttentionBlock(
                spec.width, cond_features, spec.self_attn, layer_index, spec.dropout
            )
        else:
            self.self_attn = None
        self.ff = FeedForwardBlock(spec.width, spec.d_ff, cond_features, spec.dropout)

    def forward(self, x, pos, cond):
        if self.self_attn is not None:
            x = self.self_attn(x, pos, cond)
        return self.ff(x, cond)


class Level(nn.ModuleList):
    def forward(self, x, pos, cond):
        for layer in self:
            x = layer(x, pos, cond)
        return x


class MappingFeedForwardBlock(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.norm = RMSNorm(d_model)
        self.up_proj = LinearGEGLU(d_model, d_ff, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.down_proj = _zero_init(nn.Linear(d_ff, d_model, bias=False))

    def forward(self, x):
        return self.down_proj(self.dropout(self.up_proj(self.norm(x)))) + x


class MappingNetwork(nn.Module):
    def __init__(self, n_layers: int, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.in_norm = RMSNorm(d_model)
        self.blocks = nn.ModuleList(
            [MappingFeedForwardBlock(d_model, d_ff, dropout) for _ in range(n_layers)]
        )
        self.out_norm = RMSNorm(d_model)

    def forward(self, x):
        x = self.in_norm(x)
        for block in self.blocks:
            x = block(x)
        return self.out_norm(x)


class TokenMerge(nn.Module):
    """``[.., h*ph, w*pw, c] -> [.., h, w, out]``: concatenate each patch (ph, pw, c order), Linear."""

    def __init__(self, in_features: int, out_features: int, patch_size=(2, 2)):
        super().__init__()
        self.h, self.w = patch_size
        self.proj = nn.Linear(in_features * self.h * self.w, out_features, bias=False)

    def forward(self, x):
        return self.proj(rearrange(x, "... (h nh) (w nw) e -> ... h w (nh nw e)", nh=self.h, nw=self.w))


class TokenSplitWithoutSkip(nn.Module):
    def __init__(self, in_features: int, out_features: int, patch_size=(2, 2)):
        super().__init__()
        self.h, self.w = patch_size
        self.proj = nn.Linear(in_features, out_features * self.h * self.w, bias=False)

    def forward(self, x):
        return rearrange(self.proj(x), "... h w (nh nw e) -> ... (h nh) (w nw) e", nh=self.h, nw=self.w)


class TokenSplit(TokenSplitWithoutSkip):
    """Split then ``lerp(skip, x, fac)`` with a learned scalar ``fac`` (init 0.5)."""

    def __init__(self, in_features: int, out_features: int, patch_size=(2, 2)):
        super().__init__(in_features, out_features, patch_size)
        self.fac = nn.Parameter(torch.ones(1) * 0.5)

    def forward(self, x, skip):
        return torch.lerp(skip, super().forward(x), self.fac.to(x.dtype))


# ----------------------------------------------------------------------------- model


UNCOND = -1
"""The class id meaning "the model's unconditional row" (:meth:`HDiT.forward_any_size`)."""


class HDiT(nn.Module):
    """k-diffusion ``ImageTransformerDenoiserModelV2``: the *inner* model (no EDM scalings).

    forward(x ``[B, C, H, W]`` (H, W multiples of patch * 2**(levels-1)), sigma ``[B]`` raw > 0,
    class_cond ``[B]`` int64 in ``[0, num_classes]`` (the last id is unconditional) or None,
    aug_cond ``[B, 9]`` or None, mapping_cond ``[B, mapping_cond_dim]`` or None) -> ``[B, C, H, W]``.
    """

    def __init__(
        self,
        levels: list[LevelSpec],
        mapping: MappingSpec,
        in_channels: int,
        out_channels: int,
        patch_size=(4, 4),
        num_classes: int = 0,
        mapping_cond_dim: int = 0,
    ):
        super().__init__()
        self.levels = list(levels)
        self.patch_size = tuple(patch_size)
        self.in_channels = in_channels
        self.num_classes = num_classes  # embedding rows (dataset classes + 1 uncond row), 0 = none
        self.patch_in = TokenMerge(in_channels, levels[0].width, self.patch_size)
        self.time_emb = FourierFeatures(1, mapping.width)
        self.time_in_proj = nn.Linear(mapping.width, mapping.width, bias=False)
        self.aug_emb = FourierFeatures(9, mapping.width)
        self.aug_in_proj = nn.Linear(mapping.width, mapping.width, bias=False)
        self.class_emb = nn.Embedding(num_classes, mapping.width) if num_classes else None
        self.mapping_cond_in_proj = (
            nn.Linear(mapping_cond_dim, mapping.width, bias=False) if mapping_cond_dim else None
        )
        self.mapping = MappingNetwork(mapping.depth, mapping.width, mapping.d_ff, mapping.dropout)
        self.down_levels, self.up_levels = nn.ModuleList(), nn.ModuleList()
        for i, spec in enumerate(levels):
            if i < len(levels) - 1:
                self.down_levels.append(
                    Level([TransformerLayer(spec, mapping.width, j) for j in range(spec.depth)])
                )
                self.up_levels.append(
                    Level([TransformerLayer(spec, mapping.width, j + spec.depth) for j in range(spec.depth)])
                )
            else:
                self.mid_level = Level([TransformerLayer(spec, mapping.width, j) for j in range(spec.depth)])
        self.merges = nn.ModuleList([TokenMerge(a.width, b.width) for a, b in zip(levels[:-1], levels[1:])])
        self.splits = nn.ModuleList([TokenSplit(b.width, a.width) for a, b in zip(levels[:-1], levels[1:])])
        self.out_norm = RMSNorm(levels[0].width)
        self.patch_out = TokenSplitWithoutSkip(levels[0].width, out_channels, self.patch_size)
        nn.init.zeros_(self.patch_out.proj.weight)

    @property
    def size_multiple(self) -> tuple[int, int]:
        """H and W must be multiples of these."""
        mh = self.patch_size[0] * 2 ** (len(self.levels) - 1)
        mw = self.patch_size[1] * 2 ** (len(self.levels) - 1)
        for i, lv in enumerate(self.levels):
            if isinstance(lv.self_attn, ShiftedWindowAttentionSpec):
                ws = lv.self_attn.window_size
                mh = math.lcm(mh, self.patch_size[0] * 2**i * ws)
                mw = math.lcm(mw, self.patch_size[1] * 2**i * ws)
        return mh, mw

    def min_size(self) -> tuple[int, int]:
        """Smallest (height, width) in pixels the model samples: every neighborhood-attention level
        needs ``kernel_size * dilation`` tokens per side; sides are padded to :attr:`size_multiple`."""
        (mh, mw), (ph, pw) = self.size_multiple, self.patch_size
        need_h, need_w = mh, mw
        for i, lv in enumerate(self.levels):
            sa = lv.self_attn
            if isinstance(sa, NeighborhoodAttentionSpec):
                need_h = max(need_h, sa.kernel_size * sa.dilation * ph * 2**i)
                need_w = max(need_w, sa.kernel_size * sa.dilation * pw * 2**i)
        return -(-need_h // mh) * mh, -(-need_w // mw) * mw

    def size_problem(self, h: int, w: int) -> str | None:
        """A message in pixels when an image of ``h`` x ``w`` px is below :meth:`min_size`, else None."""
        min_h, min_w = self.min_size()
        if h >= min_h and w >= min_w:
            return None
        return (
            f"HDiT: this model needs images of at least {min_w}x{min_h} px (width x height); got {w}x{h} px, too "
            f"small for its attention windows. Set width and height to at least {min_w} and {min_h} (e.g. on "
            f"EmptyChromaRadianceLatentImage; with tiling, the tile size), or sample larger and downscale."
        )

    def class_problem(self, ids) -> str | None:
        """A message when a class id (any int tensor or sequence) is not a dataset class
        ``0..classes-1`` nor :data:`UNCOND` (the model's unconditional row), else None."""
        ids = torch.as_tensor(ids).reshape(-1).long()
        if self.class_emb is None:
            bad = ids[ids != UNCOND]
            if bad.numel():
                return (
                    f"class_id {int(bad[0])} was given, but this HDiT is unconditional "
                    f"(num_classes 0); turn on 'unconditional' on UltraResHDiTClass."
                )
            return None
        n = self.num_classes - 1  # dataset classes; the last embedding row is the unconditional one
        bad = ids[(ids < UNCOND) | (ids >= n)]
        if bad.numel():
            return (
                f"class_id {int(bad[0])} is out of range for this HDiT, which has {n} classes "
                f"(ids 0-{n - 1}); use a smaller id, or turn on 'unconditional' for unconditional sampling."
            )
        return None

    def forward_any_size(self, x: torch.Tensor, sigma: torch.Tensor, class_ids=None) -> torch.Tensor:
        """:meth:`forward` on an image of any size from :meth:`min_size` up, for dataset class ids.

        ``x`` ``[B, C, H, W]``; ``sigma`` raw ``[B]`` > 0; ``class_ids`` ``[B]`` int ids ``0..classes-1``
        or :data:`UNCOND` (-1) for the unconditional row, None for unconditional sampling (ignored by an
        unconditional model). Sides that are not multiples of :attr:`size_multiple` are padded (reflect:
        the pad is always shorter than the side, which is at least one multiple) and the output cropped
        back to H x W.
        Raises ``ValueError`` with :meth:`class_problem` or :meth:`size_problem`'s message."""
        if class_ids is not None and (problem := self.class_problem(class_ids)):
            raise ValueError(problem)
        row = None
        if self.class_emb is not None:
            uncond_row = self.num_classes - 1
            if class_ids is None:
                row = torch.full((x.shape[0],), uncond_row, dtype=torch.long, device=x.device)
            else:
                row = torch.as_tensor(class_ids).to(x.device).long().reshape(-1)
                row = torch.where(row == UNCOND, torch.full_like(row, uncond_row), row)
        h, w = x.shape[-2:]
        if problem := self.size_problem(h, w):
            raise ValueError(problem)
        mh, mw = self.size_multiple
        ph, pw = (-h) % mh, (-w) % mw
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        return self(x, sigma, class_cond=row)[..., :h, :w]

    def forward(self, x, sigma, class_cond=None, aug_cond=None, mapping_cond=None):
        mh, mw = self.size_multiple
        if x.ndim != 4 or x.shape[-2] % mh or x.shape[-1] % mw:
            raise ValueError(
                f"HDiT input must be [B, C, H, W] with H a multiple of {mh} and W of {mw}; got {tuple(x.shape)}"
            )
        b = x.shape[0]
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).reshape(-1).expand(b)
        x = self.patch_in(x.movedim(-3, -1))
        pos = make_axial_pos(x.shape[-3], x.shape[-2], device=x.device)
        if self.class_emb is not None and class_cond is None:
            raise ValueError(
                "this HDiT is class-conditional: pass class_cond (use the last id for unconditional)"
            )
        if self.class_emb is None and class_cond is not None:
            raise ValueError("this HDiT has no class embedding; class_cond must be None")
        if self.mapping_cond_in_proj is not None and mapping_cond is None:
            raise ValueError("this HDiT needs mapping_cond")
        c_noise = torch.log(sigma) / 4
        emb = self.time_in_proj(self.time_emb(c_noise[:, None]))
        aug = x.new_zeros(b, 9) if aug_cond is None else aug_cond
        emb = emb + self.aug_in_proj(self.aug_emb(aug))
        if self.class_emb is not None:
            emb = emb + self.class_emb(class_cond.to(x.device).long().reshape(-1).expand(b))
        if self.mapping_cond_in_proj is not None:
            emb = emb + self.mapping_cond_in_proj(mapping_cond)
        cond = self.mapping(emb)

        skips, poses = [], []
        for level, merge in zip(self.down_levels, self.merges):
            x = level(x, pos, cond)
            skips.append(x)
            poses.append(pos)
            x = merge(x)
            pos = downscale_pos(pos)
        x = self.mid_level(x, pos, cond)
        for level, split, skip, p in reversed(list(zip(self.up_levels, self.splits, skips, poses))):
            x = level(split(x, skip), p, cond)
        x = self.patch_out(self.out_norm(x))
        return x.movedim(-1, -3)


class Denoiser(nn.Module):
    """EDM preconditioning around an inner model F: ``D(x, sigma) = c_skip x + c_out F(c_in x, sigma)``
    with ``c_skip = sd^2/(s^2+sd^2)``, ``c_out = s sd / sqrt(s^2+sd^2)``, ``c_in = 1/sqrt(s^2+sd^2)``."""

    def __init__(self, inner_model: nn.Module, sigma_data: float = 0.5, weighting: str = "soft-min-snr"):
        super().__init__()
        if weighting not in ("karras", "soft-min-snr", "snr"):
            raise ValueError(f"unknown loss weighting {weighting!r}; use 'karras', 'soft-min-snr' or 'snr'")
        self.inner_model = inner_model
        self.sigma_data = float(sigma_data)
        self.weighting = weighting

    def scalings(self, sigma: torch.Tensor):
        sd2 = self.sigma_data**2
        denom = sigma**2 + sd2
        return sd2 / denom, sigma * self.sigma_data / denom.sqrt(), 1 / denom.sqrt()

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        if self.weighting == "karras":
            return torch.ones_like(sigma)
        sd = self.sigma_data
        if self.weighting == "snr":
            return sd**2 / (sigma**2 + sd**2)  # F-space weight equivalent to SNR weighting of D
        return (sigma * sd) ** 2 / (sigma**2 + sd**2) ** 2

    def loss(self, x: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, **kwargs) -> torch.Tensor:
        """Per-sample loss ``[B]``: ``mean((F(c_in x_n) - (x - c_skip x_n)/c_out)^2) * w(sigma)``."""
        c_skip, c_out, c_in = (t[:, None, None, None] for t in self.scalings(sigma))
        noised = x + noise * sigma[:, None, None, None]
        out = self.inner_model(noised * c_in, sigma, **kwargs)
        target = (x - c_skip * noised) / c_out
        return (out - target).pow(2).flatten(1).mean(1) * self.loss_weight(sigma)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        c_skip, c_out, c_in = (t[:, None, None, None] for t in self.scalings(sigma))
        return self.inner_model(x * c_in, sigma, **kwargs) * c_out + x * c_skip
