"""CLEAR attention (kernels/clear.py) against the port of the official code (clear_reference.py)."""

from __future__ import annotations

import math

import pytest
import torch
from clear_reference import (
    official_dense_mask,
    official_downsample,
    official_scale,
    processor_attention,
)
from ultrares.kernels import clear as C

pytestmark = pytest.mark.usefixtures("one_thread")

# (text tokens, grid rows, grid cols, window, down factor)
MASK_CASES = [
    (7, 8, 12, 16, 1),  # the window covers the whole grid
    (7, 20, 24, 3, 1),  # the window masks most tokens
    (5, 16, 20, 4, 4),
    (0, 8, 8, 2, 2),  # no text
    (12, 12, 16, 8, 4),
    (512, 4, 8, 2, 4),  # the official text length
]


@pytest.mark.parametrize("t,h,w,window,df", MASK_CASES)
def test_mask_equals_the_official_mask_pair_by_pair(t, h, w, window, df):
    ours = C.clear_mask(C.Layout(t, h, w), window, df)
    official = official_dense_mask(t, h, w, window, df)
    assert ours.shape == official.shape
    assert torch.equal(ours, official)
    if window <= 4:  # the circle really masks something (the test would be void otherwise)
        assert not bool(ours[t:, t : t + h * w].all())


def test_tail_tokens_are_global():
    lay = C.Layout(3, 6, 6, tail=4)
    m = C.clear_mask(lay, 2, 2)
    tail = slice(lay.txt + lay.image, lay.seq)
    assert m[:, tail].all()  # everyone sees the tail
    assert m[tail, : lay.seq].all() and not m[tail, lay.seq :].any()  # the tail sees the sequence only
    assert m[lay.txt :, lay.seq :][: lay.image].all()  # image queries see every downsampled token


def test_downsample_equals_the_official_formula():
    g = torch.Generator().manual_seed(0)
    t, h, w, df = 5, 8, 12, 4
    x = torch.randn(2, 3, t + h * w, 16, generator=g)
    sw = torch.rand(1, 1, 1, df, 1, df, 1, generator=g)
    ours = C.downsample_tokens(x[:, :, t:], h, w, sw)
    torch.testing.assert_close(ours, official_downsample(x, t, h, w, df, sw), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("proportional", [False, True])
@pytest.mark.parametrize("down", [False, True])
def test_scale_equals_the_official_formula(proportional, down):
    for seq in (512 + 4096, 512 + 16384, 77 + 256):
        assert math.isclose(
            C.attention_scale(128, seq, proportional, down), official_scale(128, seq, proportional, down)
        )
    assert C.TRAIN_SEQ_LEN == 4608 and C.ntk_theta(10000, 10) == 100000.0


def _qkv(layout, batch=2, heads=3, d=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, heads, layout.seq, d, generator=g).to(dtype) for _ in range(3))


@pytest.mark.parametrize("t,h,w,window,df", MASK_CASES[:5])
@pytest.mark.parametrize("proportional", [False, True])
def test_blocked_and_dense_equal_the_official_processor(t, h, w, window, df, proportional):
    lay = C.Layout(t, h, w)
    q, k, v = _qkv(lay)
    sw = torch.rand(1, 1, 1, df, 1, df, 1, generator=torch.Generator().manual_seed(1)) if df > 1 else None
    ref = processor_attention(q, k, v, t, h, w, window, df, sw, proportional)
    scale = C.attention_scale(16, lay.seq, proportional, df > 1)
    for impl in ("blocked", "dense"):
        out = C.clear_attention(q, k, v, lay, window, df, sw, scale=scale, impl=impl)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, msg=impl)


@pytest.mark.parametrize(
    "layout,window,df,tile",
    [
        (C.Layout(4, 13, 7, tail=3), 5, 1, 8),  # grid not a multiple of the tile, a tail
        (C.Layout(4, 12, 20, tail=2), 3, 4, 4),
        (C.Layout(0, 9, 11), 1, 1, 8),  # window 1: each image query sees itself only (+ text: none)
        (C.Layout(6, 5, 5), 40, 1, 2),  # window far beyond the grid
    ],
)
def test_blocked_equals_dense_on_odd_layouts(layout, window, df, tile):
    q, k, v = _qkv(layout, seed=3)
    sw = torch.rand(df * df) if df > 1 else None
    dense = C.clear_attention(q, k, v, layout, window, df, sw, impl="dense")
    blocked = C.clear_attention(q, k, v, layout, window, df, sw, impl="blocked", tile=tile)
    torch.testing.assert_close(blocked, dense, rtol=1e-5, atol=1e-5)
    if window == 1 and layout.txt == 0:
        img = slice(layout.txt, layout.txt + layout.image)
        torch.testing.assert_close(blocked[:, :, img], v[:, :, img])


@pytest.mark.parametrize("heads_last", [False, True])
def test_blocked_equals_dense_across_bands_and_column_chunks(heads_last):
    """A one-byte budget splits the grid into bands of 4 rows and chunks of one 8-column tile: the
    inner chunks share one mask, the edge chunks pad and mask the columns outside the grid (42 is not
    a multiple of 8: the last tile is narrower); batch 2, each item its own strips; ``heads_last`` is
    the same numbers in ``[B, seq, heads, D]``."""
    lay = C.Layout(3, 10, 42, tail=1)
    q, k, v = _qkv(lay, seed=5)
    sw = torch.rand(4)
    dense = C.clear_attention(q, k, v, lay, 3, 2, sw, impl="dense")
    blocked = C.clear_attention(
        q, k, v, lay, 3, 2, sw, impl="blocked", tile=4, budget=1, heads_last=heads_last
    )
    if heads_last:
        assert blocked.shape == (2, lay.seq, q.shape[1], q.shape[3]) and blocked.is_contiguous()
        blocked = blocked.transpose(1, 2)
    torch.testing.assert_close(blocked, dense, rtol=1e-5, atol=1e-5)


def test_blocked_keeps_the_dtype_and_matches_in_bfloat16():
    lay = C.Layout(5, 8, 8)
    q, k, v = _qkv(lay, dtype=torch.bfloat16)
    out = C.clear_attention(q, k, v, lay, 4, 2, torch.full((4,), 0.25), impl="blocked")
    dense = C.clear_attention(
        q.float(), k.float(), v.float(), lay, 4, 2, torch.full((4,), 0.25), impl="dense"
    )
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), dense, rtol=2e-2, atol=2e-2)


def test_auto_picks_blocked_on_the_cpu():
    q = torch.zeros(1, 1, 4, 8)
    assert C.choose_impl(q) == "blocked"
    with pytest.raises(ValueError, match="impl must be one of"):
        C.choose_impl(q, "sparse")


def test_a_grid_not_divisible_by_the_down_factor_is_refused_with_the_nearest_grid():
    lay = C.Layout(4, 10, 13)
    q, k, v = _qkv(lay)
    with pytest.raises(
        C.ClearGridError, match=r"10x13 tokens.*down factor 4.*nearest grid that works is 12x12"
    ):
        C.clear_attention(q, k, v, lay, 8, 4, torch.rand(16))
    assert (
        C.nearest_divisible(13, 4) == 12
        and C.nearest_divisible(14, 4) == 16
        and C.nearest_divisible(1, 4) == 4
    )
    with pytest.raises(C.ClearGridError, match="sequence of"):
        C.clear_attention(q, k, v, C.Layout(4, 10, 12), 8, 1)


def _peak_bytes(fn) -> int:
    """Peak bytes allocated by the CPU allocator while ``fn`` runs (torch profiler memory timeline)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as p:
        fn()
    _, sizes = MemoryProfileTimeline(p._memory_profile())._coalesce_timeline("cpu")
    return max(sum(s) for s in sizes)


def _run(side: int, impl: str):
    lay = C.Layout(16, side, side)
    q, k, v = _qkv(lay, batch=1, heads=2)
    sw = torch.rand(16)
    return lambda: C.clear_attention(q, k, v, lay, 6, 4, sw, impl=impl)


def test_blocked_memory_grows_linearly_with_the_image_tokens():
    """4x the image tokens costs at most 4.5x the peak memory (the dense path's grows ~16x)."""
    small, large = _peak_bytes(_run(20, "blocked")), _peak_bytes(_run(40, "blocked"))
    dense = _peak_bytes(_run(40, "dense"))
    assert large <= 4.5 * small, (small, large)
    assert large < dense / 4, (large, dense)
