"""2-D attention patterns for pixel-space transformers, in plain PyTorch (no CUDA extension).

* :func:`neighborhood_attention_2d` reproduces NATTEN's ``na2d`` semantics: every query attends to
  exactly ``kernel_size**2`` keys. The window is centred on the query and *clamped* at the borders
  (a query in a corner sees the k x k block in that corner, not a smaller window), and with
  ``dilation = d`` the image is split into d x d interleaved sub-grids (pixels with the same row and
  column residue mod d) and the clamped window is taken inside the query's own sub-grid.
  Memory is O(N k^2) (gathered key/value windows, processed in chunks of query rows), never O(N^2).
* :func:`shifted_window_attention_2d`: Swin-style non-overlapping windows, with a cyclic shift and
  the masks that keep wrapped-around regions apart.
* :func:`global_attention_2d`: ordinary attention over all H*W tokens.

All three take ``q, k, v`` of shape ``[B, heads, H, W, D]`` (any float dtype, any values) and return
``[B, heads, H, W, D]`` in the dtype of ``q``. ``scale`` multiplies the logits; ``None`` means
``D ** -0.5`` (HDiT passes 1.0 because its q and k are already cosine-normalised and scaled).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

__all__ = [
    "neighborhood_indices_1d",
    "neighborhood_attention_2d",
    "neighborhood_mask_2d",
    "shifted_window_attention_2d",
    "global_attention_2d",
]


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.ndim != 5 or k.shape != q.shape or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(
            "q, k, v must have shape [B, heads, H, W, D] (v may differ in D only); got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )


def neighborhood_indices_1d(length: int, kernel_size: int, dilation: int = 1, device=None) -> torch.Tensor:
    """Key positions seen by every query position along one axis (NATTEN border rule).

    Returns an int64 tensor ``[length, kernel_size]``: row ``i`` lists the ``kernel_size`` key
    positions (ascending) of query ``i``. Position ``i`` belongs to sub-grid ``g = i % dilation`` at
    index ``j = i // dilation``; its window inside the sub-grid starts at
    ``clamp(j - kernel_size // 2, 0, L_g - kernel_size)`` where ``L_g`` is the sub-grid length.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer (NATTEN convention); got {kernel_size}")
    if dilation < 1:
        raise ValueError(f"dilation must be >= 1; got {dilation}")
    if length < kernel_size * dilation:
        raise ValueError(
            f"neighborhood attention needs each side >= kernel_size * dilation = {kernel_size * dilation} "
            f"tokens, got a side of {length}; use a smaller kernel/dilation or a larger image"
        )
    i = torch.arange(length, device=device)
    g = i % dilation
    j = i // dilation
    group_len = (length - g + dilation - 1) // dilation
    start = torch.minimum((j - kernel_size // 2).clamp(min=0), group_len - kernel_size)
    t = torch.arange(kernel_size, device=device)
    return g[:, None] + dilation * (start[:, None] + t[None, :])


def neighborhood_mask_2d(h: int, w: int, kernel_size: int, dilation: int = 1, device=None) -> torch.Tensor:
    """Boolean ``[H*W, H*W]`` mask (query row, key column) of the NATTEN neighborhoods."""
    ih = neighborhood_indices_1d(h, kernel_size, dilation, device=device)
    iw = neighborhood_indices_1d(w, kernel_size, dilation, device=device)
    rows = torch.zeros(h, h, dtype=torch.bool, device=device).scatter_(1, ih, True)  # [qh, kh]
    cols = torch.zeros(w, w, dtype=torch.bool, device=device).scatter_(1, iw, True)  # [qw, kw]
    return rearrange(rows[:, None, :, None] & cols[None, :, None, :], "qh qw kh kw -> (qh qw) (kh kw)")


def neighborhood_attention_2d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    scale: float | None = None,
    max_chunk_elems: int = 1 << 24,
    dense_factor: int = 8,
    method: str = "auto",
    block: int = 8,
) -> torch.Tensor:
    """NATTEN-equivalent 2-D neighborhood attention.

    Args:
        q, k: ``[B, heads, H, W, D]`` float tensors (any range).
        v: ``[B, heads, H, W, Dv]``.
        kernel_size: odd window side; each query sees ``kernel_size**2`` keys.
        dilation: sub-grid stride (NATTEN's ``dilation``); requires ``H, W >= kernel_size*dilation``.
        scale: logit multiplier (``None`` -> ``D**-0.5``).
        max_chunk_elems: bound on the gathered-window elements processed at once (rows are chunked),
            so peak memory stays ``O(min(N, chunk) * k^2 * D)``.
        dense_factor: when ``N = H*W <= dense_factor * k^2`` the same attention runs as one SDPA call
            with a boolean NATTEN mask (``N^2 <= dense_factor * N * k^2`` elements, so memory is still
            ``O(N k^2)``); it is much faster for small token grids, above all in the backward pass.
            ``0`` disables it.
        method: ``"auto"`` (FlexAttention on CUDA where available, else a dense mask for small grids,
            else ``"blocked"`` for dilation 1, else ``"gather"``), ``"flex"``, ``"blocked"``,
            ``"gather"`` or ``"dense"``. *blocked*: queries in
            ``block x block`` tiles attend, through one masked SDPA call per chunk of tiles, to the
            ``(block+k-1)^2`` key region that holds all their (clamped) windows: memory
            ``O(N (block+k-1)^2 / block^2)`` keys + ``O(N (block+k-1)^2)`` mask bits, fast batched
            matmuls. *gather*: every query's ``k^2`` keys are gathered (``O(N k^2 D)`` memory).
        block: query tile side of the blocked method.
    Returns:
        ``[B, heads, H, W, Dv]`` in ``q.dtype``; softmax is computed in float32.
    """
    _check_qkv(q, k, v)
    b, nh, h, w, d = q.shape
    scale = d**-0.5 if scale is None else scale
    idx_h = neighborhood_indices_1d(h, kernel_size, dilation, device=q.device)  # [H, kh]
    idx_w = neighborhood_indices_1d(w, kernel_size, dilation, device=q.device)  # [W, kw]
    ks = kernel_size
    if method not in ("auto", "blocked", "gather", "dense", "flex"):
        raise ValueError(f"method must be auto, blocked, gather, dense or flex; got {method!r}")
    from . import neighborhood_flex as NF  # FlexAttention fast path (CUDA), tested against this reference

    if method == "flex" or (method == "auto" and NF.use_flex(q)):
        return NF.neighborhood_attention_flex(q, k, v, kernel_size, dilation, scale)
    if method == "auto":
        method = "dense" if h * w <= dense_factor * ks * ks else "blocked" if dilation == 1 else "gather"
    if method == "blocked":
        if dilation != 1:
            raise ValueError("the blocked method supports dilation 1 only; use method='gather'")
        return _na2d_blocked(q, k, v, idx_h[:, 0], idx_w[:, 0], ks, scale, block, max_chunk_elems)
    if method == "dense":
        mask = neighborhood_mask_2d(h, w, ks, dilation, device=q.device)
        qf, kf, vf = (rearrange(t, "b n h w d -> b n (h w) d") for t in (q, k, v))
        out = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=mask, scale=scale)
        return rearrange(out, "b n (h w) d -> b n h w d", h=h, w=w).to(q.dtype)
    per_row = b * nh * w * ks * ks * max(d, v.shape[-1])
    rows = max(1, min(h, max_chunk_elems // max(per_row, 1)))
    out = []
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        rh = idx_h[r0:r1]  # [r, kh]
        # gather key rows, then key columns: [B, nh, r, kh, W, kw, D]
        # index_select (backward = index_add_) is far faster on CPU than advanced indexing
        nr = rh.shape[0]
        k_rows = k.index_select(2, rh.reshape(-1))  # [B, nh, r*kh, W, D]
        v_rows = v.index_select(2, rh.reshape(-1))
        k_win = k_rows.index_select(3, idx_w.reshape(-1)).view(b, nh, nr, ks, w, ks, d)
        v_win = v_rows.index_select(3, idx_w.reshape(-1)).view(b, nh, nr, ks, w, ks, v.shape[-1])
        qc = q[:, :, r0:r1]
        cdt = torch.promote_types(q.dtype, torch.float32)
        logits = torch.einsum("bnhwd,bnhiwjd->bnhwij", qc.to(cdt), k_win.to(cdt)) * scale
        attn = rearrange(logits, "b n h w i j -> b n h w (i j)").softmax(dim=-1)
        attn = rearrange(attn, "b n h w (i j) -> b n h w i j", i=ks, j=ks)
        out.append(torch.einsum("bnhwij,bnhiwjd->bnhwd", attn, v_win.to(cdt)).to(q.dtype))
    return torch.cat(out, dim=2)


def _block_regions(starts: torch.Tensor, length: int, ks: int, block: int):
    """For 1-D window starts ``[L]``: per query block its key-region start ``[nb]`` (region length
    ``R = min(length, block + ks - 1)``) and the window mask ``[nb, block, R]`` (padded queries reuse
    the last query's window)."""
    n = starts.shape[0]
    nb = -(-n // block)
    r = min(length, block + ks - 1)
    qi = torch.arange(nb * block, device=starts.device).clamp(max=n - 1)
    st = starts[qi].view(nb, block)
    region = torch.minimum(st[:, 0], torch.full_like(st[:, 0], length - r))
    pos = region[:, None, None] + torch.arange(r, device=starts.device)[None, None, :]  # [nb, 1, R]
    mask = (pos >= st[:, :, None]) & (pos < st[:, :, None] + ks)
    return region, mask, r


def _na2d_blocked(q, k, v, start_h, start_w, ks, scale, block, max_chunk_elems):
    b, nh, h, w, d = q.shape
    dv = v.shape[-1]
    reg_h, mask_h, rh = _block_regions(start_h, h, ks, block)
    reg_w, mask_w, rw = _block_regions(start_w, w, ks, block)
    nbh, nbw = reg_h.shape[0], reg_w.shape[0]
    ar_h = torch.arange(rh, device=q.device)
    ar_w = torch.arange(rw, device=q.device)
    # pad queries to whole blocks (the padded rows/cols are dropped at the end)
    qp = F.pad(q, (0, 0, 0, nbw * block - w, 0, nbh * block - h))
    qb = rearrange(qp, "b n (bh i) (bw j) d -> b n bh bw (i j) d", i=block, j=block)
    cols = (reg_w[:, None] + ar_w[None, :]).reshape(-1)  # [nbw * rw]
    per_block_row = b * nh * nbw * (rh * rw * (d + dv) + block * block * rh * rw)
    rows_per_chunk = max(1, min(nbh, max_chunk_elems // max(per_block_row, 1)))
    out = []
    for r0 in range(0, nbh, rows_per_chunk):
        r1 = min(nbh, r0 + rows_per_chunk)
        rows = (reg_h[r0:r1, None] + ar_h[None, :]).reshape(-1)  # [nr * rh]
        kr = k.index_select(2, rows).index_select(3, cols)  # [B, n, nr*rh, nbw*rw, D]
        vr = v.index_select(2, rows).index_select(3, cols)
        kr = rearrange(kr, "b n (bh i) (bw j) d -> b n bh bw (i j) d", i=rh, j=rw)
        vr = rearrange(vr, "b n (bh i) (bw j) d -> b n bh bw (i j) d", i=rh, j=rw)
        m = mask_h[r0:r1, None, :, None, :, None] & mask_w[None, :, None, :, None, :]
        m = rearrange(m, "bh bw qi qj ki kj -> bh bw (qi qj) (ki kj)")
        out.append(F.scaled_dot_product_attention(qb[:, :, r0:r1], kr, vr, attn_mask=m, scale=scale))
    o = torch.cat(out, dim=2)
    o = rearrange(o, "b n bh bw (i j) d -> b n (bh i) (bw j) d", i=block, j=block)
    return o[:, :, :h, :w].to(q.dtype)


def _window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    return rearrange(x, "b n (hw i) (ww j) d -> b n hw ww (i j) d", i=ws, j=ws)


def shifted_window_attention_2d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window_size: int,
    shift: int = 0,
    scale: float | None = None,
) -> torch.Tensor:
    """Swin-style window attention with a cyclic shift (k-diffusion's ``shifted-window`` type).

    The image is rolled by ``+shift`` on both axes, cut into ``window_size`` x ``window_size``
    windows and attention runs inside each window; in the first window row/column the tokens that
    wrapped around only attend to each other. The result is rolled back.

    Args: ``q, k`` ``[B, heads, H, W, D]``, ``v`` ``[B, heads, H, W, Dv]``; H and W must be
    multiples of ``window_size``; ``0 <= shift < window_size``.
    Returns: ``[B, heads, H, W, Dv]`` in ``q.dtype``.
    """
    _check_qkv(q, k, v)
    b, nh, h, w, d = q.shape
    if h % window_size or w % window_size:
        raise ValueError(
            f"shifted-window attention needs H, W divisible by window_size={window_size}; got {h}x{w}"
        )
    if not 0 <= shift < window_size:
        raise ValueError(f"shift must be in [0, window_size); got {shift}")
    scale = d**-0.5 if scale is None else scale
    if shift:
        q, k, v = (torch.roll(t, shifts=(shift, shift), dims=(2, 3)) for t in (q, k, v))
    qw, kw, vw = (_window_partition(t, window_size) for t in (q, k, v))  # [B, n, nH, nW, ws*ws, D]
    mask = None
    if shift:
        # region code of each *rolled* position: -1 for the wrapped strip inside window 0
        pos = torch.arange(h, device=q.device)
        rh = torch.where(pos < shift, -1, pos // window_size)
        pos = torch.arange(w, device=q.device)
        rw = torch.where(pos < shift, -1, pos // window_size)
        code_h = rearrange(rh, "(hw i) -> hw i", i=window_size)
        code_w = rearrange(rw, "(ww j) -> ww j", j=window_size)
        ch = code_h[:, None, :, None].expand(-1, w // window_size, -1, window_size)
        cw = code_w[None, :, None, :].expand(h // window_size, -1, window_size, -1)
        ch = rearrange(ch, "hw ww i j -> hw ww (i j)")
        cw = rearrange(cw, "hw ww i j -> hw ww (i j)")
        mask = (ch[..., :, None] == ch[..., None, :]) & (cw[..., :, None] == cw[..., None, :])
    out = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=mask, scale=scale)
    out = rearrange(out, "b n hw ww (i j) d -> b n (hw i) (ww j) d", i=window_size, j=window_size)
    if shift:
        out = torch.roll(out, shifts=(-shift, -shift), dims=(2, 3))
    return out.to(q.dtype)


def global_attention_2d(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Full attention over all ``H*W`` tokens. ``[B, heads, H, W, D]`` in, ``[B, heads, H, W, Dv]`` out."""
    _check_qkv(q, k, v)
    h, w = q.shape[2], q.shape[3]
    qf, kf, vf = (rearrange(t, "b n h w d -> b n (h w) d") for t in (q, k, v))
    out = F.scaled_dot_product_attention(qf, kf, vf, scale=scale)
    return rearrange(out, "b n (h w) d -> b n h w d", h=h, w=w)
