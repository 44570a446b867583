"""Shared cases and tolerances for tests/cuda (imported by path: this folder is not a package)."""

from __future__ import annotations

import pytest
import torch

# (device, dtype) cases: CUDA ones carry the ``cuda`` marker; CPU bf16 runs everywhere.
CASES = [
    pytest.param("cuda", torch.float16, marks=pytest.mark.cuda, id="cuda-fp16"),
    pytest.param("cuda", torch.bfloat16, marks=pytest.mark.cuda, id="cuda-bf16"),
    pytest.param("cpu", torch.bfloat16, id="cpu-bf16"),
]

# Relative L2 error ||got - ref|| / ||ref|| allowed against the fp32 CPU result. Unit roundoff is
# 2^-11 (fp16) and 2^-8 (bf16); inputs, projections and outputs are rounded a few times each.
KERNEL_TOL = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2}  # measured on the CPU: 3e-4 and 2.3e-3
UNET_TOL = {
    torch.float16: 2e-2,
    torch.bfloat16: 8e-2,
}  # measured on the CPU in bf16: 2.2e-2 (SD1.5), 2.0e-2 (SDXL)


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    return float((got - ref).norm() / ref.norm().clamp_min(1e-30))
