"""CLEAR attention on CUDA: FlexAttention (compiled, cached block mask) and the blocked path in
fp16/bf16 against the dense fp32 CPU result, and the three implementations against each other
(marker ``cuda``); the CPU bf16 case runs everywhere."""

from __future__ import annotations

import warnings

import pytest
import torch
from cuda_cases import CASES, KERNEL_TOL, rel_err
from ultrares.kernels import clear as C

LAYOUTS = [
    (C.Layout(77, 32, 48), 8, 4),  # window masks most of the grid, downsampled tokens
    (C.Layout(512, 16, 16, tail=64), 16, 1),  # official text length, a Kontext-like tail
]


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _qkv(layout, seed=0, heads=4, d=64):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, heads, layout.seq, d, generator=g) for _ in range(3))


@pytest.mark.parametrize("layout,window,df", LAYOUTS)
@pytest.mark.parametrize("device,dtype", CASES)
def test_clear_in_half_precision_matches_fp32(device, dtype, layout, window, df):
    q, k, v = _qkv(layout)
    sw = torch.rand(df * df, generator=torch.Generator().manual_seed(1)) if df > 1 else None
    scale = C.attention_scale(64, layout.seq, True, df > 1)
    ref = C.clear_attention(q, k, v, layout, window, df, sw, scale=scale, impl="dense")
    args = [t.to(device, dtype) for t in (q, k, v)]
    swd = sw.to(device) if sw is not None else None
    impls = ["blocked"] + (["flex", "auto"] if device == "cuda" else [])
    for impl in impls:
        got = C.clear_attention(*args, layout, window, df, swd, scale=scale, impl=impl)
        assert got.dtype == dtype and got.device.type == device
        assert rel_err(got, ref) < KERNEL_TOL[dtype], (impl, rel_err(got, ref))


@pytest.mark.cuda
@pytest.mark.parametrize("layout,window,df", LAYOUTS)
def test_three_implementations_agree_on_cuda_in_fp32(layout, window, df):
    q, k, v = (t.cuda() for t in _qkv(layout, seed=2))
    sw = torch.rand(df * df, device="cuda") if df > 1 else None
    dense = C.clear_attention(q, k, v, layout, window, df, sw, impl="dense")
    for impl in ("flex", "blocked"):
        got = C.clear_attention(q, k, v, layout, window, df, sw, impl=impl)
        assert rel_err(got, dense) < 1e-4, (impl, rel_err(got, dense))
    assert C.choose_impl(q) == "flex"
    assert C.clear_block_mask(layout, window, df, q.device) is C.clear_block_mask(
        layout, window, df, q.device
    )
