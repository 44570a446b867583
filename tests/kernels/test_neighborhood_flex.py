"""FlexAttention neighborhood attention (kernels/neighborhood_flex.py) against the reference NATTEN
semantics of kernels/neighborhood.py: the mask_mod reproduces the clamped, dilated windows exactly,
and the eager FlexAttention run (CPU) matches the reference outputs. The compiled CUDA run is in
tests/cuda/."""

from __future__ import annotations

import warnings

import pytest
import torch
from ultrares.kernels import neighborhood as N
from ultrares.kernels import neighborhood_flex as NF

pytestmark = pytest.mark.skipif(not NF.available(), reason="this torch has no flex_attention")


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex_attention warns that it is unfused (expected on CPU)
        yield


@pytest.mark.parametrize(
    "h,w,ks,dil",
    [(9, 11, 3, 1), (12, 10, 5, 2), (16, 16, 7, 1), (13, 14, 3, 3), (7, 21, 7, 1), (24, 18, 5, 3)],
)
def test_mask_mod_reproduces_natten_windows(h, w, ks, dil):
    got = NF.dense_mask(h, w, ks, dil)
    assert torch.equal(got, N.neighborhood_mask_2d(h, w, ks, dil))
    assert bool((got.sum(1) == ks * ks).all())  # clamped, never shrunk


def test_mask_mod_independent_brute_force():
    """The clamped-window rule written out per pixel with Python ints (independent of both kernels)."""
    h, w, ks, dil = 10, 9, 3, 2

    def window(i, length):
        g, j = i % dil, i // dil
        n_g = len(range(g, length, dil))
        start = min(max(j - ks // 2, 0), n_g - ks)
        return {g + dil * (start + t) for t in range(ks)}

    got = NF.dense_mask(h, w, ks, dil)
    for qy in range(h):
        for qx in range(w):
            want = {ky * w + kx for ky in window(qy, h) for kx in window(qx, w)}
            assert set(torch.nonzero(got[qy * w + qx]).flatten().tolist()) == want


@pytest.mark.parametrize(
    "h,w,ks,dil,scale,dv", [(12, 10, 5, 2, None, 8), (16, 16, 3, 1, 1.0, 8), (11, 13, 5, 1, None, 4)]
)
def test_flex_matches_reference(h, w, ks, dil, scale, dv):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 2, h, w, 8, generator=gen)
    k = torch.randn(2, 2, h, w, 8, generator=gen)
    v = torch.randn(2, 2, h, w, dv, generator=gen)
    got = NF.neighborhood_attention_flex(q, k, v, ks, dil, scale=scale, compiled=False)
    want = N.neighborhood_attention_2d(q, k, v, ks, dil, scale=scale, method="gather")
    assert got.shape == want.shape == (2, 2, h, w, dv)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_block_mask_is_sparse_at_larger_sizes():
    """At 64x64 tokens with a 7x7 window most 128-token blocks are skipped (the point of the fast path)."""
    bm = NF.natten_block_mask(64, 64, 7, 1)
    assert bm.sparsity() > 80.0, bm.sparsity()


def test_auto_choice_and_errors():
    q = torch.zeros(1, 1, 8, 8, 4)
    assert not NF.use_flex(q)  # CPU: the reference (eager flex is dense)
    with pytest.raises(ValueError, match="kernel_size \\* dilation = 9"):
        NF.neighborhood_attention_flex(q, q, q, 3, 3)
    with pytest.raises(ValueError, match="positive odd"):
        NF.natten_mask_mod(8, 8, 4)
    with pytest.raises(ValueError, match="\\[B, heads, H, W, D\\]"):
        NF.neighborhood_attention_flex(q[0], q[0], q[0], 3)


def test_the_kernel_entry_point_routes_method_flex_to_the_fast_path():
    """neighborhood_attention_2d(method="flex") is the FlexAttention path and equals the reference."""
    from ultrares.kernels.neighborhood import neighborhood_attention_2d

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 12, 10, 8, generator=g) for _ in range(3))
    for dilation in (1, 2):
        ref = neighborhood_attention_2d(q, k, v, 5, dilation, method="gather")
        fast = neighborhood_attention_2d(q, k, v, 5, dilation, method="flex")
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
