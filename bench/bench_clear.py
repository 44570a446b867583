"""CLEAR vs ComfyUI's full attention on one FLUX-width attention layer (CPU).

The attention operator of one FLUX.1 block: hidden 3072 = 24 heads of 128, batch 1, 512 text tokens
plus 4k, 16k and 65k image tokens (64^2, 128^2, 256^2: 1024, 2048 and 4096 px images), float32,
q/k/v given (after the projections and RoPE, which cost the same on both sides), output in
ComfyUI's ``[B, seq, heads * D]`` layout:

- full: what ComfyUI's FLUX attention runs (``optimized_attention`` under
  ``--use-pytorch-cross-attention``: torch SDPA, then the transpose/reshape);
- CLEAR: window 16 + down factor 4 (``clear_local_16_down_4``), proportional attention, the blocked
  CPU path of ``kernels/clear.py`` that ``UltraResCLEARApply`` runs on the CPU, same output layout.

Full attention's cost is exactly linear in the number of query rows (every row sees every key), so
where a full run would exceed the budget it is measured on the first R query rows and its time
(and the output part of its memory) is scaled by ``seq / R``; such rows say "scaled from R rows".
Times are medians; peak memory is the process RSS above the level before the call (5 ms
samples, freed blocks returned to the OS). Target: CLEAR >= 10x faster at 65k image tokens, with
less memory.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import PeakRSS  # noqa: E402


def _return_freed_memory_to_os() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


_return_freed_memory_to_os()

HEADS, HEAD_DIM, TEXT = 24, 128, 512
WINDOW, DOWN = 16, 4
FULL_BUDGET_S = 60.0  # a full-attention call predicted longer than this runs on a subset of rows


def _timed(fn, repeats: int):
    times, peak = [], 0.0
    for _ in range(repeats):
        gc.collect()
        with PeakRSS() as mem, torch.inference_mode():
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        peak = max(peak, mem.mib)
        del out
    return statistics.median(times), peak


def _full(q, k, v):
    b, h, s, d = q.shape
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, h * d)


def _one_size(C, side: int, prev, g, sw):
    """(row, (seq, full seconds)) for one grid side."""
    lay = C.Layout(TEXT, side, side)
    seq = lay.seq
    q, k, v = (torch.randn(1, HEADS, seq, HEAD_DIM, generator=g) for _ in range(3))
    scale = C.attention_scale(HEAD_DIM, seq, True, True)

    def clear():
        out = C.clear_attention(q, k, v, lay, WINDOW, DOWN, sw, scale=scale, impl="blocked")
        return out.transpose(1, 2).reshape(1, seq, HEADS * HEAD_DIM)

    repeats = 1 if side >= 256 else 2
    t_clear, m_clear = _timed(clear, repeats)
    predicted = prev[1] * (seq / prev[0]) ** 2 if prev is not None else 0.0
    if predicted > FULL_BUDGET_S:
        n_rows = max(256, int(seq * FULL_BUDGET_S / predicted / 2))
        t_part, m_part = _timed(lambda: _full(q[:, :, :n_rows], k, v), 1)
        t_full, m_full = t_part * seq / n_rows, m_part * seq / n_rows
        how = f"scaled from {n_rows} rows"
    else:
        t_full, m_full = _timed(lambda: _full(q, k, v), repeats)
        how = "measured"
    row = [
        side * side,
        seq,
        round(t_full, 2),
        round(t_clear, 2),
        round(t_full / t_clear, 1),
        round(m_full, 0),
        round(m_clear, 0),
        round(m_clear / max(m_full, 1e-9), 2),
        how,
    ]
    return row, (seq, t_full)


def run(quick: bool = False) -> dict:
    from ultrares.kernels import clear as C

    sides = [32, 64] if quick else [64, 128, 256]
    rows, notes = [], []
    g = torch.Generator().manual_seed(0)
    sw = torch.full((DOWN * DOWN,), 1.0 / DOWN**2)
    prev = None  # (seq, full seconds) of the previous size
    for side in sides:
        row, prev = _one_size(C, side, prev, g, sw)
        rows.append(row)
        gc.collect()
    keys_full = TEXT + sides[-1] ** 2
    keys_clear = TEXT + (sides[-1] // DOWN) ** 2 + 3.14159 * WINDOW**2
    notes.append(
        f"Ideal key ratio per image query at {sides[-1] ** 2} tokens: {keys_full} / ~{keys_clear:.0f} = "
        f"{keys_full / keys_clear:.1f}x (text {TEXT} + downsampled {(sides[-1] // DOWN) ** 2} + pi*{WINDOW}^2 window)."
    )
    notes.append(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; the machine may be shared: "
        "compare the ratios, not the seconds."
    )
    last = rows[-1]
    return {
        "title": f"CLEAR (window {WINDOW}, down {DOWN}) vs full attention, one FLUX layer (24x128 heads, +{TEXT} text)",
        "columns": [
            "image tokens",
            "seq",
            "full s",
            "CLEAR s",
            "speed-up",
            "full MiB",
            "CLEAR MiB",
            "memory ratio",
            "full measured",
        ],
        "rows": rows,
        "notes": notes,
        "targets": {
            "speedup_at_largest": {"value": last[4], "target": ">= 10", "met": bool(last[4] >= 10)},
            "memory_ratio_at_largest": {"value": last[7], "target": "< 1", "met": bool(last[7] < 1)},
        },
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
