"""Kernels in half precision on the device against float32 on the CPU (stated relative-L2
tolerances in cuda_cases.py): LinFusion's core (compiled on CUDA) and layer, neighborhood attention
(FlexAttention on CUDA, the blocked reference everywhere)."""

from __future__ import annotations

import warnings

import pytest
import torch
from cuda_cases import CASES, KERNEL_TOL, rel_err
from ultrares.kernels import linfusion as L
from ultrares.kernels import neighborhood as N
from ultrares.kernels import neighborhood_flex as NF


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("device,dtype", CASES)
def test_linfusion_core(device, dtype):
    q, k, v = _randn(2, 1024, 320, seed=1), _randn(2, 1024, 320, seed=2), _randn(2, 1024, 320, seed=3)
    ref = L.linear_attention(q, k, v, 8, impl="reference")
    got = L.linear_attention(*(t.to(device, dtype) for t in (q, k, v)), 8)  # auto: compiled on CUDA
    assert got.dtype == dtype and got.device.type == device
    assert not L._compile_failed
    assert rel_err(got, ref) < KERNEL_TOL[dtype], rel_err(got, ref)
    chunked = L.linear_attention(*(t.to(device, dtype) for t in (q, k, v)), 8, chunk_size=300)
    assert rel_err(chunked, ref) < KERNEL_TOL[dtype]


@pytest.mark.parametrize("device,dtype", CASES)
def test_linfusion_layer(device, dtype):
    torch.manual_seed(0)
    layer = L.LinFusionAttention(320, 8, 20)
    x = _randn(1, 2048, 320, seed=4)
    with torch.no_grad():
        ref = layer(x)
        got = layer.to(device, dtype)(x.to(device, dtype))
    assert got.dtype == dtype
    assert rel_err(got, ref) < 2 * KERNEL_TOL[dtype], rel_err(got, ref)


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("h,w,ks,dil", [(32, 24, 7, 1), (24, 24, 5, 2)])
def test_neighborhood_attention(device, dtype, h, w, ks, dil):
    q, k, v = (_randn(1, 2, h, w, 32, seed=s) for s in (5, 6, 7))
    ref = N.neighborhood_attention_2d(q, k, v, ks, dil, method="gather")
    dev = [t.to(device, dtype) for t in (q, k, v)]
    blocked = N.neighborhood_attention_2d(*dev, ks, dil)
    assert rel_err(blocked, ref) < KERNEL_TOL[dtype], rel_err(blocked, ref)
    if NF.available() and (device == "cuda" or dtype == torch.bfloat16):
        flex = NF.neighborhood_attention_flex(*dev, ks, dil)  # compiled on CUDA, eager on the CPU
        assert flex.dtype == dtype
        assert rel_err(flex, ref) < KERNEL_TOL[dtype], rel_err(flex, ref)
