"""CLEAR: FLUX.1 attention restricted to a circular window on the token grid (linear cost).

CLEAR (Liu, Tan, Wang, arXiv 2412.16112) fine-tunes FLUX.1's attention projections so that every
image query attends only to the image tokens inside a circle around it, plus all text tokens.
The ``down`` variants add key/value tokens pooled ``df x df`` by a learned per-layer weight, so a
query still sees a coarse summary of the whole image. Cost per image query is
``T + pi window^2 + N / df^2`` keys instead of ``T + N``.

Sequence layout, as in FLUX (ComfyUI and diffusers alike)::

    [ text (T tokens) | image grid (h rows x w columns, row-major) | tail (E tokens) ]

The tail holds the tokens some FLUX models append after the image (Kontext's reference images).
The official code knows no tail (E = 0); here tail tokens are treated like text ("global"): every
query sees them and they see every token of the sequence.

Mask (``True`` = may attend), for a query ``q`` and a key ``k`` (keys = sequence + ``(h/df)(w/df)``
downsampled tokens when ``df > 1``)::

    q text or tail  -> every sequence token (text, image, tail), no downsampled token
    q image (y, x)  -> every text and tail token, every downsampled token, and the image tokens
                       (y', x') with (y - y')^2 + (x - x')^2 < window^2

which is the official ``local_mask`` / ``local_dwonsample_mask`` pair for E = 0 and any text length
(the official code hard-codes T = 512).

Downsampled tokens: the image part of the (rotary-embedded) keys and values is viewed as
``[h/df, df, w/df, df]``, multiplied by ``spatial_weight`` ``(df, df)`` and summed over the two ``df``
axes, giving ``(h/df) * (w/df)`` tokens in row-major order; ``h`` and ``w`` must be divisible by df.

Scale: ``head_dim ** -0.5``, or with proportional attention ``sqrt(log_4608(n) / head_dim)`` where
``n`` is the sequence length (``10 n`` in the down variants, as in the official down processor);
4608 = 64^2 + 512 is the training sequence (1024 px + 512 text tokens). NTK: RoPE's theta is
multiplied by ``ntk_factor`` (the official high-resolution notebook uses 10), see :func:`ntk_theta`.

Three implementations of :func:`clear_attention`, same results:

* ``"flex"``: ``torch.nn.attention.flex_attention`` with a block-sparse mask built once per
  (grid, text length, tail, window, df, device) and cached; the fast path on CUDA.
* ``"blocked"``: plain PyTorch whose memory grows linearly with the image tokens (the CPU and
  low-memory path). Text and tail queries run full attention (``T + E`` rows); image queries are
  split into two key sets whose softmaxes are merged exactly through their log-sum-exp: the global
  keys (text, tail, downsampled; one fused attention call per band of ``tile`` grid rows) and the
  local keys: a ``tile x TILE_COLS`` tile of queries sees the ``(tile + 2 window - 2) x (TILE_COLS +
  2 window - 2)`` rectangle around it, masked to each query's circle; a band's tiles run as one strided
  batch over a column-major copy of the keys in reach. No ``N x N`` mask or score matrix exists at any
  point.
* ``"dense"``: the full boolean mask and one ``scaled_dot_product_attention`` (O(N^2) memory; tests).

``"auto"`` picks flex on CUDA (when this torch has it) and blocked elsewhere; if FlexAttention fails
there (no Triton, an old driver), one warning is logged and the blocked path is used from then on.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

__all__ = [
    "TRAIN_SEQ_LEN",
    "IMPLEMENTATIONS",
    "Layout",
    "ClearGridError",
    "check_grid",
    "nearest_divisible",
    "attention_scale",
    "ntk_theta",
    "downsample_tokens",
    "clear_mask_mod",
    "clear_mask",
    "clear_block_mask",
    "clear_attention",
    "flex_available",
    "choose_impl",
]

TRAIN_SEQ_LEN = 64**2 + 512
"""The sequence length CLEAR was distilled at (a 1024 px image + 512 text tokens): the base of the
proportional-attention logarithm."""

IMPLEMENTATIONS = ("auto", "flex", "blocked", "dense")
DEFAULT_TILE = 16  # grid rows per band of image queries in the blocked path
TILE_COLS = 8  # grid columns per query tile: each tile sees its (16 + 2 window - 2) x (8 + 2 window - 2) keys
DEFAULT_BUDGET = 128 << 20  # bytes of scores + gathered keys/values per blocked step


class ClearGridError(ValueError):
    """The token grid does not fit the CLEAR settings (e.g. a side not divisible by the down factor)."""


@dataclass(frozen=True)
class Layout:
    """Where the tokens are: ``txt`` text tokens, an ``height x width`` image grid, ``tail`` extra."""

    txt: int
    height: int
    width: int
    tail: int = 0

    @property
    def image(self) -> int:
        return self.height * self.width

    @property
    def seq(self) -> int:
        return self.txt + self.image + self.tail

    def down_tokens(self, down_factor: int) -> int:
        """Number of downsampled tokens (0 without downsampling)."""
        if down_factor <= 1:
            return 0
        return (self.height // down_factor) * (self.width // down_factor)

    @classmethod
    def from_seq(cls, seq_len: int, txt: int, height: int, width: int) -> Layout:
        """The layout of a ``seq_len``-token sequence with this text and grid; the rest is the tail."""
        tail = seq_len - txt - height * width
        if tail < 0:
            raise ClearGridError(
                f"a {seq_len}-token sequence cannot hold {txt} text tokens and a {height}x{width} grid"
            )
        return cls(txt, height, width, tail)


def nearest_divisible(n: int, m: int) -> int:
    """The multiple of ``m`` nearest to ``n`` (ties go up), at least ``m``."""
    lo = (n // m) * m
    hi = lo + m
    return max(m, lo if n - lo < hi - n else hi)


def check_grid(layout: Layout, window: int, down_factor: int) -> None:
    """Raise :class:`ClearGridError` when the settings cannot run on ``layout``."""
    if window < 1:
        raise ClearGridError(f"window must be >= 1 token; got {window}")
    if down_factor < 1:
        raise ClearGridError(f"down factor must be >= 1; got {down_factor}")
    if layout.height < 1 or layout.width < 1:
        raise ClearGridError(f"empty image grid {layout.height}x{layout.width}")
    if down_factor > 1 and (layout.height % down_factor or layout.width % down_factor):
        raise ClearGridError(
            f"the image grid of {layout.height}x{layout.width} tokens is not divisible by the down factor "
            f"{down_factor}; the nearest grid that works is "
            f"{nearest_divisible(layout.height, down_factor)}x{nearest_divisible(layout.width, down_factor)}"
        )


def attention_scale(head_dim: int, seq_len: int, proportional: bool = False, down: bool = False) -> float:
    """Softmax scale: ``head_dim ** -0.5``, or proportional attention's
    ``sqrt(log_4608(n) / head_dim)`` with ``n = seq_len`` (``10 * seq_len`` for the down variants).
    ``seq_len`` counts text, image and tail tokens (not the downsampled ones), as the official code."""
    if not proportional:
        return head_dim**-0.5
    n = seq_len * (10 if down else 1)
    return math.sqrt(math.log(n, TRAIN_SEQ_LEN) / head_dim)


def ntk_theta(theta: float, ntk_factor: float) -> float:
    """RoPE base after the NTK factor (``theta * ntk_factor``, as diffusers' ``get_1d_rotary_pos_embed``)."""
    return float(theta) * float(ntk_factor)


def downsample_tokens(x: torch.Tensor, height: int, width: int, weight: torch.Tensor) -> torch.Tensor:
    """Pool image tokens ``df x df`` with a learned weight.

    Args:
        x: ``[B, heads, height * width, D]`` image tokens (row-major), any float dtype.
        weight: ``spatial_weight`` of ``df * df`` elements (the official ``(1,1,1,df,1,df,1)`` or ``(df, df)``),
            indexed (row offset, column offset).
    Returns: ``[B, heads, (height/df) * (width/df), D]`` in ``x.dtype``, row-major.
    """
    df = math.isqrt(weight.numel())
    grid = rearrange(x, "b n (y i x j) d -> b n y x i j d", y=height // df, i=df, x=width // df, j=df)
    w = weight.reshape(df, df).to(device=x.device, dtype=x.dtype)
    return rearrange((grid * w[:, :, None]).sum(dim=(-3, -2)), "b n y x d -> b n (y x) d")


# ------------------------------------------------------------------------------------------ masks


def clear_mask_mod(layout: Layout, window: int, down_factor: int = 1):
    """FlexAttention ``mask_mod(b, head, q_idx, kv_idx) -> bool`` for ``layout`` (see the module doc)."""
    t, w, end = layout.txt, layout.width, layout.txt + layout.image
    seq, r2 = layout.seq, window * window

    def mask_mod(b, head, q_idx, kv_idx):
        q_img = (q_idx >= t) & (q_idx < end)
        kv_img = (kv_idx >= t) & (kv_idx < end)
        kv_down = kv_idx >= seq
        qi, ki = q_idx - t, kv_idx - t
        dy = qi // w - ki // w
        dx = qi % w - ki % w
        near = dy * dy + dx * dx < r2
        return (q_img & (~kv_img | near)) | (~q_img & ~kv_down)

    return mask_mod


def clear_mask(layout: Layout, window: int, down_factor: int = 1, device=None) -> torch.Tensor:
    """The mask evaluated on every pair: boolean ``[seq, seq + down tokens]`` (tests, dense path)."""
    kv_len = layout.seq + layout.down_tokens(down_factor)
    qi = torch.arange(layout.seq, device=device)[:, None]
    ki = torch.arange(kv_len, device=device)[None, :]
    return clear_mask_mod(layout, window, down_factor)(None, None, qi, ki)


@functools.lru_cache(maxsize=1)
def flex_available() -> bool:
    """Whether this torch has FlexAttention (torch >= 2.5)."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=16)
def _block_mask_cached(layout: Layout, window: int, down_factor: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    kv_len = layout.seq + layout.down_tokens(down_factor)
    # on CUDA the compiled builder evaluates the mask block by block; eager materialises it (CPU tests)
    return create_block_mask(
        clear_mask_mod(layout, window, down_factor),
        None,
        None,
        layout.seq,
        kv_len,
        device=device,
        _compile=device.startswith("cuda"),
    )


def clear_block_mask(layout: Layout, window: int, down_factor: int = 1, device="cpu"):
    """The block-sparse FlexAttention mask, cached per (layout, window, df, device)."""
    check_grid(layout, window, down_factor)
    return _block_mask_cached(layout, int(window), int(down_factor), str(torch.device(device)))


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


_FLEX_BROKEN = False


def _flex_failed(exc: Exception) -> None:
    global _FLEX_BROKEN
    _FLEX_BROKEN = True
    logging.getLogger(__name__).warning(
        "CLEAR: FlexAttention failed (%s: %s); using the blocked implementation from now on.",
        type(exc).__name__,
        str(exc).splitlines()[0][:200] if str(exc) else "",
    )


def choose_impl(q: torch.Tensor, impl: str = "auto") -> str:
    """The implementation ``impl="auto"`` resolves to for ``q``: flex on CUDA, blocked elsewhere."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}; got {impl!r}")
    if impl != "auto":
        return impl
    return "flex" if q.is_cuda and flex_available() else "blocked"


# ------------------------------------------------------------------------------ implementations


def _with_down(k, v, layout: Layout, down_factor: int, spatial_weight):
    if down_factor <= 1:
        return k, v
    img = slice(layout.txt, layout.txt + layout.image)
    kd = downsample_tokens(k[:, :, img], layout.height, layout.width, spatial_weight)
    vd = downsample_tokens(v[:, :, img], layout.height, layout.width, spatial_weight)
    return torch.cat([k, kd], dim=2), torch.cat([v, vd], dim=2)


def _dense(q, k, v, layout, window, down_factor, spatial_weight, scale):
    kk, vv = _with_down(k, v, layout, down_factor, spatial_weight)
    mask = clear_mask(layout, window, down_factor, device=q.device)
    return F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, scale=scale)


def _flex(q, k, v, layout, window, down_factor, spatial_weight, scale):
    from torch.nn.attention.flex_attention import flex_attention

    kk, vv = _with_down(k, v, layout, down_factor, spatial_weight)
    mask = clear_block_mask(layout, window, down_factor, q.device)
    run = _compiled_flex() if q.is_cuda else flex_attention
    return run(q.contiguous(), kk.contiguous(), vv.contiguous(), block_mask=mask, scale=scale)


_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _attend_lse(q, k, v, scale: float, budget: int, bias: torch.Tensor | None = None):
    """Softmax attention with its log-sum-exp: ``(out [B,H,L,D] fp32, lse [B,H,L] fp32)``.

    ``q, k, v`` fp32 ``[B, H, L|M, D]``; ``bias`` an additive fp32 mask broadcastable to
    ``[B, H, L, M]``. On the CPU through the fused flash kernel (tiled: no score matrix, one pass of
    exponentials); elsewhere in query chunks of at most ``budget`` bytes of scores."""
    if q.device.type == "cpu" and _FLASH_CPU is not None:
        try:
            out, lse = _FLASH_CPU(q, k, v, 0.0, False, attn_mask=bias, scale=scale)
            return out, lse.float()
        except RuntimeError:  # an unsupported shape or build: the chunked path below
            pass
    b, h, n, _ = q.shape
    step = max(1, budget // max(1, b * h * k.shape[2] * 4))
    outs, lses = [], []
    for s in range(0, n, step):
        scores = torch.matmul(q[:, :, s : s + step], k.transpose(-1, -2)) * scale
        if bias is not None:
            scores = scores + (bias if bias.shape[-2] == 1 else bias[..., s : s + step, :])
        lse = torch.logsumexp(scores, dim=-1)
        outs.append(torch.matmul(torch.exp(scores - lse[..., None]), v))
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def _band_bias(
    window: int, oy: int, th: int, rows: int, tw: int, x_first: int, tiles: int, width: int, device
) -> torch.Tensor:
    """Additive fp32 mask ``[tiles, 1, th*tw, cols*rows]`` (``cols = tw + 2 (window - 1)``) for a row
    of ``tiles`` query tiles of ``th x tw`` tokens, the first starting at image column ``x_first``.

    Each tile's keys are the ``rows x cols`` rectangle around it, column-major (key ``c * rows + a``),
    starting ``oy`` rows above the tile and ``window - 1`` columns to its left; columns outside the
    image (zero padding) are masked. 0 where ``dy^2 + dx^2 < window^2``, else the most negative float
    (never -inf: a row cannot turn into NaN)."""
    p = window - 1
    cols = tw + 2 * p
    i = torch.arange(th, device=device)[:, None, None, None] + oy
    j = torch.arange(tw, device=device)[None, :, None, None] + p
    c = torch.arange(cols, device=device)[None, None, :, None]
    a = torch.arange(rows, device=device)[None, None, None, :]
    near = ((a - i) ** 2 + (c - j) ** 2 < window * window).reshape(th * tw, cols, rows)
    x = x_first - p + tw * torch.arange(tiles, device=device)[:, None] + torch.arange(cols, device=device)
    inside = (x >= 0) & (x < width)  # [tiles, cols]
    keep = near[None] & inside[:, None, :, None]
    bias = torch.zeros(keep.shape, device=device).masked_fill_(~keep, torch.finfo(torch.float32).min)
    return bias.reshape(tiles, 1, th * tw, cols * rows)


def _local_chunk(qi, ki, vi, y0, y1, x0, x1, window, tw, scale, budget, biases, buffers):
    """Local attention of the image queries ``[y0:y1, x0:x1]`` (one batch item) over their windows.

    ``qi, ki, vi``: ``[heads, h, w, D]`` views of the image grid; ``x1 - x0`` a multiple of ``tw``
    (or the row's end). The keys of the rows in reach are copied once, column-major and zero-padded
    by ``window - 1`` columns on each side, into a strip in which every tile's rectangle is a
    contiguous block at a constant stride: the tiles are one strided batch (no per-tile copy) for
    one fused attention call. ``buffers``: two flat fp32 tensors large enough for the strips (reused
    from chunk to chunk). Returns ``(out [heads, th, x1-x0, D], lse [heads, th, x1-x0])`` fp32."""
    nh, h, w, d = qi.shape
    p, th = window - 1, y1 - y0
    ya, yb = max(0, y0 - p), min(h, y1 + p)
    rows, span = yb - ya, x1 - x0
    tiles = -(-span // tw)
    cols = tiles * tw + 2 * p  # the strip: this chunk's columns plus the reach on both sides
    xa, xb = max(0, x0 - p), min(w, x0 - p + cols)
    strips, lo, hi = [], xa - (x0 - p), xb - (x0 - p)
    for src, buf in zip((ki, vi), buffers):
        strip = buf[: nh * cols * rows * d].view(nh, cols, rows, d)
        strip[:, :lo].zero_()  # the columns beyond the grid (masked; zero keeps them finite)
        strip[:, hi:].zero_()
        strip[:, lo:hi] = src[:, ya:yb, xa:xb].transpose(1, 2)
        shape, stride = (tiles, nh, (tw + 2 * p) * rows, d), (tw * rows * d, cols * rows * d, d, 1)
        strips.append(strip.as_strided(shape, stride))
    qt = qi[:, y0:y1, x0:x1].to(torch.float32)
    if span < tiles * tw:  # the row's last tile is narrower: pad its queries (dropped below)
        qt = F.pad(qt, (0, 0, 0, tiles * tw - span))
    qt = rearrange(qt, "n i (t j) d -> t n (i j) d", j=tw)
    inner = x0 - p >= 0 and x0 - p + cols <= w  # no padding: one bias serves every tile (stays in cache)
    key = (y0 - ya, th, rows, tw) + (() if inner else (x0, tiles))
    if key not in biases:
        biases[key] = _band_bias(window, y0 - ya, th, rows, tw, x0, 1 if inner else tiles, w, qi.device)
    out, lse = _attend_lse(qt, strips[0], strips[1], scale, budget, biases[key])
    out = rearrange(out, "t n (i j) d -> n i (t j) d", j=tw)[:, :, :span]
    lse = rearrange(lse, "t n (i j) -> n i (t j)", j=tw)[:, :, :span]
    return out, lse


def _image_queries(q, k, v, out, layout, window, kg, vg, scale, tile, budget):
    """Image queries, one band of ``tile`` grid rows at a time, written into ``out``.

    ``q, k, v``: ``[B, H, seq, D]``; ``out`` the same shape (any strides); ``kg, vg``: the global
    keys/values (text, tail, downsampled; fp32, possibly empty). Per band: the global part for the
    whole band (one fused call), then the local part in chunks of columns (:func:`_local_chunk`),
    each merged into the global result through the two log-sum-exps. Memory: the output plus
    O(budget) per step, linear in tokens."""
    b, nh, _, d = q.shape
    t0, h, w = layout.txt, layout.height, layout.width
    tw = max(1, min(TILE_COLS, w))
    p, f32 = window - 1, torch.float32
    per_col = 2 * nh * min(h, tile + 2 * p) * d * 4  # bytes of the key + value strips per column
    chunk = max(tw, (max(1, budget // per_col) - 2 * p) // tw * tw)
    biases: dict[tuple, torch.Tensor] = {}
    size = nh * (min(chunk, -(-w // tw) * tw) + 2 * p) * min(h, tile + 2 * p) * d  # the widest strip
    buffers = [torch.empty(size, dtype=f32, device=q.device) for _ in range(2)]
    for n in range(b):
        qi, ki, vi = (x[n, :, t0 : t0 + h * w].unflatten(1, (h, w)) for x in (q, k, v))
        oi = out[n, :, t0 : t0 + h * w].unflatten(1, (h, w))
        for y0 in range(0, h, tile):
            y1 = min(h, y0 + tile)
            if kg.shape[2]:
                band = q[n : n + 1, :, t0 + y0 * w : t0 + y1 * w].to(f32)
                og, lg = _attend_lse(band, kg[n : n + 1], vg[n : n + 1], scale, budget)
                og, lg = og[0].unflatten(1, (y1 - y0, w)), lg[0].unflatten(1, (y1 - y0, w))
            for x0 in range(0, w, chunk):
                x1 = min(w, x0 + chunk)
                ol, ll = _local_chunk(qi, ki, vi, y0, y1, x0, x1, window, tw, scale, budget, biases, buffers)
                if kg.shape[2]:  # softmax over both key sets: weights exp(lse) each
                    ol = og[:, :, x0:x1].lerp_(ol, torch.sigmoid(ll - lg[:, :, x0:x1])[..., None])
                oi[:, y0:y1, x0:x1] = ol.to(out.dtype)


def _blocked(q, k, v, layout, window, down_factor, spatial_weight, scale, tile, budget):
    """The blocked path; returns ``[B, seq, H, D]`` (its ``transpose(1, 2)`` is the usual layout)."""
    t, n = layout.txt, layout.image
    b, nh, seq, d = q.shape
    out = torch.empty(b, seq, nh, d, dtype=q.dtype, device=q.device).transpose(1, 2)
    if t or layout.tail:  # text and tail queries: every sequence token (fused SDPA, linear memory)
        qg = torch.cat([q[:, :, :t], q[:, :, t + n :]], dim=2)
        og = F.scaled_dot_product_attention(qg, k, v, scale=scale)
        out[:, :, :t] = og[:, :, :t]
        out[:, :, t + n :] = og[:, :, t:]
    f32 = torch.float32
    kg = [k[:, :, :t], k[:, :, t + n :]]
    vg = [v[:, :, :t], v[:, :, t + n :]]
    if down_factor > 1:
        img = slice(t, t + n)
        kg.append(
            downsample_tokens(k[:, :, img].to(f32), layout.height, layout.width, spatial_weight.to(f32))
        )
        vg.append(
            downsample_tokens(v[:, :, img].to(f32), layout.height, layout.width, spatial_weight.to(f32))
        )
    kg = torch.cat([x.to(f32) for x in kg], dim=2).contiguous()
    vg = torch.cat([x.to(f32) for x in vg], dim=2).contiguous()
    _image_queries(q, k, v, out, layout, window, kg, vg, scale, tile, budget)
    return out.transpose(1, 2)


def clear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: Layout,
    window: int,
    down_factor: int = 1,
    spatial_weight: torch.Tensor | None = None,
    scale: float | None = None,
    impl: str = "auto",
    tile: int = DEFAULT_TILE,
    budget: int = DEFAULT_BUDGET,
    heads_last: bool = False,
) -> torch.Tensor:
    """CLEAR attention over a ``[text | image grid | tail]`` sequence.

    Args:
        q, k, v: ``[B, heads, layout.seq, D]`` (any float dtype; rotary embedding already applied).
        layout: token counts (:class:`Layout`); ``layout.seq`` must equal the sequence length.
        window: circle radius in tokens (``dy^2 + dx^2 < window^2``), >= 1.
        down_factor: 1 (no downsampled tokens) or ``df`` dividing both grid sides.
        spatial_weight: the layer's ``df * df`` pooling weight (required when ``down_factor > 1``).
        scale: softmax scale; ``None`` = ``D ** -0.5`` (see :func:`attention_scale`).
        impl: ``"auto"`` | ``"flex"`` | ``"blocked"`` | ``"dense"`` (see the module doc).
        tile, budget: the blocked path's band height (grid rows) and bytes per step.
        heads_last: return ``[B, seq, heads, D]`` instead (contiguous, so ``.flatten(2)`` is
            ComfyUI's ``[B, seq, heads * D]`` without a copy; the blocked path writes it directly).
    Returns: ``[B, heads, layout.seq, D]`` in ``q.dtype`` (a view of a heads-last buffer on the blocked path).
    """
    if q.ndim != 4 or k.shape != q.shape or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(
            f"q, k, v must be [B, heads, seq, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[2] != layout.seq:
        raise ClearGridError(f"sequence of {q.shape[2]} tokens, but the layout {layout} has {layout.seq}")
    check_grid(layout, window, down_factor)
    if down_factor > 1 and (spatial_weight is None or spatial_weight.numel() != down_factor**2):
        raise ValueError(f"down_factor {down_factor} needs a spatial_weight of {down_factor**2} elements")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    which = choose_impl(q, impl)
    if which == "dense":
        out = _dense(q, k, v, layout, window, down_factor, spatial_weight, scale)
        return out.transpose(1, 2).contiguous() if heads_last else out
    if which == "flex" and not _FLEX_BROKEN:
        if not flex_available():
            raise RuntimeError("impl='flex' needs torch >= 2.5 (torch.nn.attention.flex_attention)")
        try:
            out = _flex(q, k, v, layout, window, down_factor, spatial_weight, scale)
            return out.transpose(1, 2).contiguous() if heads_last else out
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # no Triton, an old driver...: the blocked path, once and for all
            if impl == "flex":
                raise
            _flex_failed(exc)
    out = _blocked(q, k, v, layout, window, down_factor, spatial_weight, scale, int(tile), int(budget))
    return out if heads_last else out.transpose(1, 2)
