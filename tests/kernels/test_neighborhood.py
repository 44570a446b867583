"""Neighborhood / shifted-window / global attention vs brute-force masked global attention."""

import pytest
import torch
from ultrares.kernels.neighborhood import (
    global_attention_2d,
    neighborhood_attention_2d,
    neighborhood_indices_1d,
    neighborhood_mask_2d,
    shifted_window_attention_2d,
)


def natten_window_start(index: int, length: int, kernel_size: int, dilation: int) -> int:
    """NATTEN's published window-start rule (written independently of the kernel's formulation)."""
    ns = kernel_size // 2
    if dilation <= 1:
        return max(index - ns, 0) + (index + ns >= length) * (length - index - ns - 1)
    ni = index - ns * dilation
    if ni < 0:
        return index % dilation
    if index + ns * dilation >= length:
        imodd = index % dilation
        a = (length // dilation) * dilation
        b = length - a
        if imodd < b:
            return length - b + imodd - 2 * ns * dilation
        return a + imodd - kernel_size * dilation
    return ni


def natten_mask(h, w, kernel_size, dilation):
    """[H*W, H*W] boolean mask: query (row) may attend key (column)."""
    mask = torch.zeros(h * w, h * w, dtype=torch.bool)
    for qi in range(h):
        sh = natten_window_start(qi, h, kernel_size, dilation)
        rows = [sh + dilation * t for t in range(kernel_size)]
        for qj in range(w):
            sw = natten_window_start(qj, w, kernel_size, dilation)
            cols = [sw + dilation * t for t in range(kernel_size)]
            for r in rows:
                for c in cols:
                    mask[qi * w + qj, r * w + c] = True
    return mask


def brute(q, k, v, mask, scale):
    b, n, h, w, d = q.shape
    qf, kf, vf = (t.reshape(b, n, h * w, -1).double() for t in (q, k, v))
    logits = qf @ kf.transpose(-1, -2) * scale
    logits = logits.masked_fill(~mask, float("-inf"))
    out = logits.softmax(-1) @ vf
    return out.reshape(b, n, h, w, -1)


@pytest.mark.parametrize(
    "h,w,ks,dil",
    [
        (9, 9, 3, 1),
        (11, 7, 5, 1),
        (8, 13, 7, 1),
        (12, 10, 3, 2),
        (13, 17, 3, 3),
        (15, 11, 5, 2),
        (7, 7, 7, 1),
    ],
)
def test_neighborhood_matches_masked_global(h, w, ks, dil):
    g = torch.Generator().manual_seed(h * 100 + w * 10 + ks + dil)
    q, k, v = (torch.randn(2, 3, h, w, 8, generator=g) for _ in range(3))
    mask = natten_mask(h, w, ks, dil)
    assert int(mask.sum(-1).min()) == ks * ks == int(mask.sum(-1).max())
    ref = brute(q, k, v, mask, 0.7)
    out = neighborhood_attention_2d(q, k, v, ks, dilation=dil, scale=0.7, method="gather")
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    # chunked over rows gives the same result
    out_chunked = neighborhood_attention_2d(
        q, k, v, ks, dilation=dil, scale=0.7, max_chunk_elems=1, method="gather"
    )
    torch.testing.assert_close(out_chunked, out, atol=1e-6, rtol=1e-6)
    # the dense masked path (used for small grids) agrees too
    out_dense = neighborhood_attention_2d(q, k, v, ks, dilation=dil, scale=0.7, method="dense")
    torch.testing.assert_close(out_dense.double(), ref, atol=1e-5, rtol=1e-5)
    if dil == 1:  # blocked (the default for large grids), with several block sizes and chunkings
        for blk, chunk in ((8, 1 << 24), (3, 1), (4, 5000)):
            out_blk = neighborhood_attention_2d(
                q, k, v, ks, scale=0.7, method="blocked", block=blk, max_chunk_elems=chunk
            )
            torch.testing.assert_close(out_blk.double(), ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(neighborhood_mask_2d(h, w, ks, dil), mask)


def test_neighborhood_gradients_match_brute():
    g = torch.Generator().manual_seed(3)
    q, k, v = (
        torch.randn(1, 2, 10, 9, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)
    )
    mask = natten_mask(10, 9, 3, 2)
    gref = torch.autograd.grad(brute(q, k, v, mask, 1.0).square().sum(), (q, k, v))
    gout = torch.autograd.grad(
        neighborhood_attention_2d(q, k, v, 3, dilation=2, scale=1.0, method="gather").square().sum(),
        (q, k, v),
    )
    for a, b in zip(gout, gref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    mask = natten_mask(10, 9, 3, 1)
    gref = torch.autograd.grad(brute(q, k, v, mask, 1.0).square().sum(), (q, k, v))
    gout = torch.autograd.grad(
        neighborhood_attention_2d(q, k, v, 3, scale=1.0, method="blocked", block=4).square().sum(), (q, k, v)
    )
    for a, b in zip(gout, gref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_neighborhood_indices_clamped():
    idx = neighborhood_indices_1d(10, 5)
    assert idx[0].tolist() == [0, 1, 2, 3, 4]
    assert idx[5].tolist() == [3, 4, 5, 6, 7]
    assert idx[9].tolist() == [5, 6, 7, 8, 9]
    idx = neighborhood_indices_1d(9, 3, dilation=2)
    assert idx[8].tolist() == [4, 6, 8] and idx[7].tolist() == [3, 5, 7] and idx[1].tolist() == [1, 3, 5]


def test_neighborhood_equals_global_when_window_covers_image():
    q, k, v = (torch.randn(1, 2, 5, 5, 4) for _ in range(3))
    torch.testing.assert_close(
        neighborhood_attention_2d(q, k, v, 5), global_attention_2d(q, k, v), atol=1e-5, rtol=1e-5
    )


def test_blocked_large_grid_matches_gather():
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 37, 45, 16, generator=g) for _ in range(3))
    a = neighborhood_attention_2d(q, k, v, 7, scale=0.3, method="blocked")
    b = neighborhood_attention_2d(q, k, v, 7, scale=0.3, method="gather")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_neighborhood_bad_inputs():
    q = torch.randn(1, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="kernel_size"):
        neighborhood_attention_2d(q, q, q, 4)
    with pytest.raises(ValueError, match="kernel_size \\* dilation"):
        neighborhood_attention_2d(q, q, q, 5)
    with pytest.raises(ValueError, match="shape"):
        neighborhood_attention_2d(q[0], q[0], q[0], 3)


def swin_mask(h, w, ws, shift):
    """Brute-force Swin mask in original coordinates: same window after rolling, and the same
    side of the wrap-around seam inside the first window row/column."""

    def code(p, length):
        r = (p + shift) % length
        win = r // ws
        return (win, 1 if (win == 0 and r < shift) else 0)

    mask = torch.zeros(h * w, h * w, dtype=torch.bool)
    for a in range(h * w):
        for b in range(h * w):
            mask[a, b] = code(a // w, h) == code(b // w, h) and code(a % w, w) == code(b % w, w)
    return mask


@pytest.mark.parametrize("h,w,ws,shift", [(8, 8, 4, 0), (8, 12, 4, 2), (6, 9, 3, 1)])
def test_shifted_window_matches_masked_global(h, w, ws, shift):
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 2, h, w, 6, generator=g) for _ in range(3))
    ref = brute(q, k, v, swin_mask(h, w, ws, shift), 6**-0.5)
    out = shifted_window_attention_2d(q, k, v, ws, shift)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_global_matches_brute():
    q, k, v = (torch.randn(1, 2, 4, 6, 8) for _ in range(3))
    ref = brute(q, k, v, torch.ones(24, 24, dtype=torch.bool), 1.0)
    torch.testing.assert_close(global_attention_2d(q, k, v, scale=1.0).double(), ref, atol=1e-5, rtol=1e-5)
