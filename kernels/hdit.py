"""Hourglass Diffusion Transformer (HDiT, arXiv 2401.11605) with k-diffusion's checkpoint layout.

The module tree mirrors k-diffusion's ``image_transformer_v2`` so its state dicts (training
``.pth`` ``model_ema`` or the safetensors inference format with ``{"config": json}`` metadata)
load with strict key checks, and its config JSON is parsed with the same defaults.
Attention runs through :mod:`ultrares.kernels.neighborhood` (pure PyTorch, no NATTEN needed).

Tensor conventions: images are ``[B, C, H, W]`` float in model space (k-diffusion trains on
``[-1, 1]`` pixels); ``sigma`` is the *raw* noise level ``[B]`` (> 0); tokens inside the model are
channels-last ``[B, h, w, width]``.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
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
    "HDiTConfig",
    "parse_config",
    "build_model",
    "load_state_dict_strict",
    "load_checkpoint",
    "save_inference",
    "HDiTLoadError",
    "activation_bytes_per_pixel",
    "expected_shapes",
    "check_shapes",
    "LIMITS",
]


class HDiTLoadError(ValueError):
    """A checkpoint/config that cannot be turned into an HDiT (message says what and why)."""


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
            self.self_attn = AttentionBlock(spec.width, cond_features, spec.self_attn, layer_index, spec.dropout)
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
        self.blocks = nn.ModuleList([MappingFeedForwardBlock(d_model, d_ff, dropout) for _ in range(n_layers)])
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
                self.down_levels.append(Level([TransformerLayer(spec, mapping.width, j) for j in range(spec.depth)]))
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
            raise ValueError("this HDiT is class-conditional: pass class_cond (use the last id for unconditional)")
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


def _float(value, name: str, lo: float | None = None, hi: float | None = None, open_lo: bool = False) -> float:
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
        return NeighborhoodAttentionSpec(d_head, ks, _int(d.get("dilation", 1), f"{where}.dilation", "dilation"))
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
        raise HDiTLoadError(f"config model.widths has {n} levels; at most {LIMITS['levels'][1]} are supported: {_FIX}")
    depths = [_int(d, f"model.depths[{i}]", "depth") for i, d in enumerate(_list(model, "depths", n))]
    model.setdefault("d_ffs", [w * 3 for w in widths])
    d_ffs = [_int(f, f"model.d_ffs[{i}]", "d_ff") for i, f in enumerate(_list(model, "d_ffs", n))]
    model.setdefault(
        "self_attns",
        [{"type": "neighborhood", "d_head": 64, "kernel_size": 7}] * (n - 1) + [{"type": "global", "d_head": 64}],
    )
    attns = [_attn_spec(sa, i, widths[i]) for i, sa in enumerate(_list(model, "self_attns", n))]
    dr = model.setdefault("dropout_rate", [0.0] * n)
    if isinstance(dr, (int, float)) and not isinstance(dr, bool):
        model["dropout_rate"] = [dr] * n
    dropouts = [_float(d, f"model.dropout_rate[{i}]", 0.0, 1.0) for i, d in enumerate(_list(model, "dropout_rate", n))]
    mapping_width = _int(model.setdefault("mapping_width", 256), "model.mapping_width", "mapping_width")
    if mapping_width % 2:
        raise HDiTLoadError(f"config model.mapping_width = {mapping_width} must be even (Fourier features): {_FIX}")
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
        raise HDiTLoadError(f"config model.sigma_min = {sigma_min} must be below model.sigma_max = {sigma_max}: {_FIX}")
    if not isinstance(model["sigma_sample_density"], dict):
        raise HDiTLoadError(f"config model.sigma_sample_density must be a JSON object: {_FIX}")
    levels = [LevelSpec(dp, w, ff, sa, do) for dp, w, ff, sa, do in zip(depths, widths, d_ffs, attns, dropouts)]
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
            raise HDiTLoadError(f"{source}: state-dict entry {str(k)[:80]!r} is not a named tensor; the file is not "
                                f"an HDiT checkpoint")


def load_state_dict_strict(model: nn.Module, state_dict: dict, source: str = "checkpoint") -> None:
    """Copy ``state_dict`` into ``model`` (dtype cast to the model's), refusing non-tensors, missing or
    unexpected keys, shape mismatches (one message that lists them all) and NaN/Inf values."""
    sd = _strip_prefixes(dict(state_dict))
    _require_tensors(sd, source)
    own = model.state_dict()
    check_shapes({k: tuple(v.shape) for k, v in own.items()}, {k: tuple(v.shape) for k, v in sd.items()}, source)
    for k, v in sd.items():
        if not torch.isfinite(v.float()).all():
            raise HDiTLoadError(f"{source}: tensor {k!r} contains NaN/Inf values (corrupt or diverged weights)")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)


_REEXPORT = ("Download or export it again (k-diffusion's convert_for_inference.py writes the .safetensors "
             "inference format with its config).")


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
        raise HDiTLoadError(f"{name}: the tensor data cannot be read (truncated or corrupt file). {_REEXPORT}") from None


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
        raise HDiTLoadError(f"{name} is not a PyTorch checkpoint (it is corrupt or in another format). "
                            f"{_REEXPORT}") from None
    except Exception:
        raise HDiTLoadError(f"{name} cannot be read as a PyTorch checkpoint (truncated or corrupt). "
                            f"{_REEXPORT}") from None
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
        raise HDiTLoadError(f"{name} cannot be read as UTF-8 JSON text; save the config as a .json file") from None


def load_checkpoint(path: str, config: dict | str | None = None, name: str | None = None) -> tuple[HDiT, HDiTConfig]:
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
        raise HDiTLoadError(f"{name}: unsupported extension {ext!r}; use .safetensors, .pth or a .json config")
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


def save_inference(model: HDiT, config: HDiTConfig | dict, path: str, dtype=torch.float16) -> None:
    """Write the k-diffusion inference format: safetensors of the state dict (``dtype``) with
    metadata ``{"config": json.dumps(config)}``."""
    from safetensors.torch import save_file

    raw = config.raw if isinstance(config, HDiTConfig) else config
    sd = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous() for k, v in model.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    save_file(sd, tmp, metadata={"config": json.dumps(raw, indent=4)})
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- sampling (comfy-free)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device=None) -> torch.Tensor:
    """Karras et al. noise levels: ``[n + 1]`` float32, descending from sigma_max to sigma_min, then 0."""
    ramp = torch.linspace(0, 1, n, device=device)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoiser,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    class_cond: torch.Tensor | None = None,
    cfg_scale: float = 1.0,
    uncond_class: int | None = None,
    callback=None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (deterministic). ``noise`` ``[B, C, H, W]`` standard normal; ``sigmas``
    from :func:`karras_sigmas`; ``class_cond`` ``[B]`` int64 or None. With ``cfg_scale != 1`` the
    batch is also denoised with ``uncond_class`` and combined as ``u + (c - u) * cfg_scale``.
    Returns the denoised sample ``[B, C, H, W]`` (model space, about [-1, 1])."""

    def d_fn(x, s):
        sig = s.expand(x.shape[0])
        if class_cond is None or cfg_scale == 1.0:
            kw = {} if class_cond is None else {"class_cond": class_cond}
            return denoiser(x, sig, **kw)
        unc = torch.full_like(class_cond, uncond_class)
        both = denoiser(torch.cat([x, x]), torch.cat([sig, sig]), class_cond=torch.cat([class_cond, unc]))
        c, u = both.chunk(2)
        return u + (c - u) * cfg_scale

    x = noise * sigmas[0]
    old = None
    for i in range(len(sigmas) - 1):
        den = d_fn(x, sigmas[i])
        if callback is not None:
            callback(i, den)
        if sigmas[i + 1] == 0:
            x = den
            break
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        if old is None:
            d = den
        else:
            h_last = t - (-sigmas[i - 1].log())
            r = h_last / h
            d = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old
        x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * d
        old = den
    return x
