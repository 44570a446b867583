"""Seam visibility of tiled sampling: gradient energy on tile boundaries vs the image interior.

A tiled sampler that blends badly leaves straight edges where its tiles meet. :func:`seam_score`
measures them as the ratio

    mean |grad I| on the boundary lines (within ``band`` px)  /  mean |grad I| everywhere else

with Sobel gradients (``kornia.filters.spatial_gradient``). 1.0 = the boundary lines look like the
rest of the image (seams invisible); > 1 = visible edges along the grid. Content matters too (an
object edge that happens to lie on a boundary raises the score), so compare methods on the same
lines, or against an untiled image scored on the same lines.

:func:`tile_boundaries` gives the lines of a tiling plan (``kernels.tiled_diffusion``): the union of the
tile edges of the chosen sampler steps, in pixels. For a shifting grid (FSTD, SpotDiffusion) the
caller picks which steps count, typically the last few, whose seams survive into the output.

Plain PyTorch + kornia; nothing here imports ComfyUI.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import kornia
import torch

from .tiled_diffusion import StepPlan, TiledRun, TilePlanner

__all__ = ["boundary_mask", "plan_boundaries", "seam_score", "tile_boundaries"]


def _check_lines(lines: Iterable[int], size: int, what: str) -> list[int]:
    out = []
    for v in lines:
        if int(v) != v:
            raise ValueError(f"{what} must be whole pixel positions, got {v!r}")
        v = int(v)
        if not 0 <= v <= size:
            raise ValueError(
                f"{what} value {v} lies outside the image (0..{size}); pass only lines inside it"
            )
        if 0 < v < size:  # 0 and size are the image's own border, not a seam between tiles
            out.append(v)
    return sorted(set(out))


def boundary_mask(
    height: int, width: int, boundaries_x: Iterable[int], boundaries_y: Iterable[int], band: int = 1
) -> torch.Tensor:
    """bool [height, width]: True on the pixels within ``band`` px of a boundary line.

    A boundary at column ``c`` is the edge between columns ``c - 1`` and ``c``; it marks columns
    ``c - band .. c + band - 1`` (all rows); rows likewise for ``boundaries_y``. Lines at 0 or at the
    image size (the image border) are ignored; lines outside ``[0, size]`` are refused (ValueError).
    """
    if band < 1:
        raise ValueError(f"band must be >= 1 pixel, got {band}")
    mask = torch.zeros(height, width, dtype=torch.bool)
    for c in _check_lines(boundaries_x, width, "boundaries_x"):
        mask[:, max(0, c - band) : min(width, c + band)] = True
    for r in _check_lines(boundaries_y, height, "boundaries_y"):
        mask[max(0, r - band) : min(height, r + band), :] = True
    return mask


def seam_score(
    image: torch.Tensor, boundaries_x: Sequence[int], boundaries_y: Sequence[int], band: int = 1
) -> float:
    """Seam visibility: mean Sobel gradient magnitude on the boundary lines / the same in the interior.

    image: float [B, C, H, W] (C = 3 for RGB) with values in [0, 1] (any float dtype or device; the
        ratio does not depend on the range: scaling the image by a constant leaves it unchanged).
    boundaries_x: pixel columns of vertical tile edges (ints in [0, W]); boundaries_y: pixel rows of
        horizontal tile edges (ints in [0, H]). 0 and W (H) are the image border and are ignored;
        anything outside the image raises ValueError. See :func:`boundary_mask` for ``band``.
    Gradient magnitude: ``sqrt(gx^2 + gy^2)`` of the normalised Sobel filter per channel, averaged
    over channels. The outermost 1 px ring is left out of both sets (the filter pads there).
    Averages run over the whole batch (every item uses the same lines).
    Returns a float: 1.0 = no visible seams, > 1 = edges along the grid. A flat image scores 1.0.
    Raises ValueError when no boundary line lies inside the image or nothing is left as interior.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be [B, C, H, W], got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"image must be a float tensor in [0, 1], got {image.dtype}")
    _, _, h, w = image.shape
    if min(h, w) < 3:
        raise ValueError(f"image must be at least 3x3 pixels, got {h}x{w}")
    lines = boundary_mask(h, w, boundaries_x, boundaries_y, band)
    ring = torch.zeros(h, w, dtype=torch.bool)
    ring[1:-1, 1:-1] = True
    on, off = lines & ring, ~lines & ring
    if not bool(on.any()):
        raise ValueError("no tile boundary lies inside the image: nothing to score")
    if not bool(off.any()):
        raise ValueError("the boundary bands cover the whole image: no interior left to compare with")
    grad = kornia.filters.spatial_gradient(
        image.float(), mode="sobel", order=1, normalized=True
    )  # [B, C, 2, H, W]
    mag = grad.pow(2).sum(dim=2).sqrt().mean(dim=1)  # [B, H, W]
    on, off = on.to(mag.device), off.to(mag.device)
    b = float(mag[:, on].double().mean())
    i = float(mag[:, off].double().mean())
    if i <= 1e-12:
        return 1.0 if b <= 1e-12 else float("inf")
    return b / i


def plan_boundaries(plan: StepPlan, ratio: int = 1) -> tuple[list[int], list[int]]:
    """Tile edges of one step's plan in image pixels: (columns, rows), sorted, border excluded.

    plan: a :class:`~ultrares.kernels.tiled_diffusion.StepPlan` (latent pixels); ratio: pixels per latent
    pixel (1 for pixel-space models, 8 for SD-style VAEs). A rolled plan (SpotDiffusion) has its
    edges mapped back to image coordinates, including the wrap-around edge of the roll.
    """
    h, w = plan.image_hw
    dy, dx = plan.roll
    xs, ys = set(), set()
    for t in plan.tiles:
        xs.update((t.x, t.x + t.w))
        ys.update((t.y, t.y + t.h))
    # rolled coordinate e holds the image's (e - d) mod size; the roll's seam is rolled 0 (= size)
    xs = {(e - dx) % w for e in xs} if dx else xs
    ys = {(e - dy) % h for e in ys} if dy else ys
    return (sorted(ratio * e for e in xs if 0 < e < w), sorted(ratio * e for e in ys if 0 < e < h))


def tile_boundaries(
    run: TiledRun | TilePlanner, steps: Iterable[int], ratio: int = 1
) -> tuple[list[int], list[int]]:
    """Tile edges, in image pixels, of the union of the plans of ``steps``: (columns, rows).

    run: a :class:`~ultrares.kernels.tiled_diffusion.TiledRun` (its planner is used: FSTD's one-off
    full-coverage fallback only adds edges on the image border) or a ``TilePlanner``.
    steps: the sampler step keys (see ``kernels.tiled_diffusion.step_of``), e.g. ``range(n - 3, n)`` for the
    last three of ``n`` steps. ratio: pixels per latent pixel (1 for pixel-space models).
    Returns two sorted lists of ints in (0, W) and (0, H), ready for :func:`seam_score`.
    """
    planner = run.planner if isinstance(run, TiledRun) else run
    xs, ys = set(), set()
    for step in steps:
        bx, by = plan_boundaries(planner.plan(int(step)), ratio)
        xs.update(bx)
        ys.update(by)
    return sorted(xs), sorted(ys)
