"""NATTEN-equivalent 2-D neighborhood attention through ``torch.nn.attention.flex_attention``.

The same semantics as :func:`ultrares.kernels.neighborhood.neighborhood_attention_2d` (every query
sees exactly ``kernel_size**2`` keys; the window is clamped at the borders, not shrunk; with
``dilation = d`` it is taken inside the query's own d x d interleaved sub-grid), expressed as a
FlexAttention ``mask_mod`` over the flattened ``H*W`` tokens, so one fused kernel skips every
fully-masked ``BLOCK x BLOCK`` tile (a block-sparse mask from ``create_block_mask``) instead of
gathering windows.

Per axis (``L`` = side length, ``i`` query position, ``t`` key position)::

    g = i % d,  j = i // d,  L_g = ceil((L - g) / d)            (query's sub-grid and its length)
    start = min(max(j - k // 2, 0), L_g - k)                     (clamped window start)
    allowed(i, t) = (t % d == g) and start <= t // d < start + k

and a key is visible iff it is allowed along both rows and columns.

Where it runs: on CUDA ``flex_attention`` is compiled (Triton) and is the fast path; on the CPU
the eager ``flex_attention`` evaluates the dense scores (``O(N^2)`` memory), so it is used there
only by tests at small sizes -- :func:`use_flex` says when callers should pick it.
"""

from __future__ import annotations

import functools

import torch
from einops import rearrange

__all__ = [
    "available",
    "use_flex",
    "natten_mask_mod",
    "natten_block_mask",
    "dense_mask",
    "neighborhood_attention_flex",
]


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether this torch has FlexAttention (torch >= 2.5)."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def use_flex(q: torch.Tensor) -> bool:
    """The automatic choice: FlexAttention on CUDA when this torch has it, else the reference."""
    return q.is_cuda and available()


def _check(length: int, kernel_size: int, dilation: int, side: str) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer (NATTEN convention); got {kernel_size}")
    if dilation < 1:
        raise ValueError(f"dilation must be >= 1; got {dilation}")
    if length < kernel_size * dilation:
        raise ValueError(
            f"neighborhood attention needs each side >= kernel_size * dilation = {kernel_size * dilation} "
            f"tokens, got {side} = {length}; use a smaller kernel/dilation or a larger image"
        )


def _allowed_1d(i, t, length: int, kernel_size: int, dilation: int):
    """Tensor expression: key position ``t`` is in query position ``i``'s clamped window (one axis)."""
    g = i % dilation
    j = i // dilation
    group_len = (length - g + dilation - 1) // dilation
    start = torch.minimum(torch.clamp(j - kernel_size // 2, min=0), group_len - kernel_size)
    tj = t // dilation
    return ((t % dilation) == g) & (tj >= start) & (tj < start + kernel_size)


def natten_mask_mod(h: int, w: int, kernel_size: int, dilation: int = 1):
    """FlexAttention ``mask_mod(b, head, q_idx, kv_idx) -> bool`` for row-major ``H*W`` tokens."""
    _check(h, kernel_size, dilation, "H")
    _check(w, kernel_size, dilation, "W")

    def mask_mod(b, head, q_idx, kv_idx):
        qy, qx = q_idx // w, q_idx % w
        ky, kx = kv_idx // w, kv_idx % w
        return _allowed_1d(qy, ky, h, kernel_size, dilation) & _allowed_1d(qx, kx, w, kernel_size, dilation)

    return mask_mod


def dense_mask(h: int, w: int, kernel_size: int, dilation: int = 1, device=None) -> torch.Tensor:
    """The mask_mod evaluated on every (query, key) pair: boolean ``[H*W, H*W]`` (for tests)."""
    n = h * w
    qi = torch.arange(n, device=device)[:, None]
    ki = torch.arange(n, device=device)[None, :]
    return natten_mask_mod(h, w, kernel_size, dilation)(None, None, qi, ki)


@functools.lru_cache(maxsize=32)
def _block_mask_cached(h, w, kernel_size, dilation, device_str, block_size):
    from torch.nn.attention.flex_attention import create_block_mask

    n = h * w
    # eager create_block_mask materialises the dense [N, N] mask (fine for the CPU's small test sizes);
    # on CUDA the compiled builder evaluates it block by block (262k tokens = 6.9e10 pairs at 2048 px)
    return create_block_mask(
        natten_mask_mod(h, w, kernel_size, dilation),
        None,
        None,
        n,
        n,
        device=device_str,
        BLOCK_SIZE=block_size,
        _compile=device_str.startswith("cuda"),
    )


def natten_block_mask(
    h: int, w: int, kernel_size: int, dilation: int = 1, device="cpu", block_size: int = 128
):
    """The block-sparse FlexAttention mask (cached per size/device)."""
    _check(h, kernel_size, dilation, "H")
    _check(w, kernel_size, dilation, "W")
    return _block_mask_cached(h, w, kernel_size, dilation, str(torch.device(device)), block_size)


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def neighborhood_attention_flex(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    scale: float | None = None,
    compiled: bool | None = None,
    block_size: int = 128,
) -> torch.Tensor:
    """NATTEN ``na2d`` through FlexAttention.

    Args:
        q, k: ``[B, heads, H, W, D]``; v: ``[B, heads, H, W, Dv]`` (any float dtype).
        kernel_size, dilation: as :func:`~ultrares.kernels.neighborhood.neighborhood_attention_2d`.
        scale: logit multiplier (``None`` -> ``D**-0.5``).
        compiled: run the ``torch.compile``-d kernel (default: on CUDA only; eager elsewhere).
        block_size: FlexAttention's sparsity block (tokens).
    Returns: ``[B, heads, H, W, Dv]`` in ``q.dtype``.
    """
    if not available():
        raise RuntimeError(
            "torch.nn.attention.flex_attention needs torch >= 2.5; use neighborhood_attention_2d"
        )
    if q.ndim != 5 or k.shape != q.shape or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(
            "q, k, v must have shape [B, heads, H, W, D] (v may differ in D only); got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    from torch.nn.attention.flex_attention import flex_attention

    b, nh, h, w, d = q.shape
    scale = d**-0.5 if scale is None else float(scale)
    mask = natten_block_mask(h, w, kernel_size, dilation, q.device, block_size)
    qf, kf, vf = (rearrange(t, "b n h w d -> b n (h w) d").contiguous() for t in (q, k, v))
    run = _compiled_flex() if (q.is_cuda if compiled is None else compiled) else flex_attention
    out = run(qf, kf, vf, block_mask=mask, scale=scale)
    return rearrange(out, "b n (h w) d -> b n h w d", h=h, w=w).to(q.dtype)
