"""tests/cuda: the kernels and the LinFusion node path on CUDA in fp16/bf16 (marker ``cuda``, skipped
without a GPU) and the same checks on the CPU in bf16 (unmarked, so they run in CI)."""

from __future__ import annotations

import pytest
import torch


def pytest_configure(config):
    # also belongs in pyproject's [tool.pytest.ini_options].markers (--strict-markers)
    config.addinivalue_line("markers", "cuda: needs an NVIDIA GPU (skipped without one)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
