"""Seam score and tile boundaries (kernels/quality.py)."""

from __future__ import annotations

import math

import pytest
import torch
from ultrares.kernels import quality as Q
from ultrares.kernels import tiled_diffusion as T

pytestmark = pytest.mark.usefixtures("one_thread")


def _smooth(h=64, w=64, seed=0):
    """A smooth RGB image in [0.2, 0.8]: bilinear up-sampling of 4x4 random values, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 4, generator=g) * 0.6 + 0.2
    img = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
    return (img + 0.01 * torch.randn(img.shape, generator=g)).clamp(0, 1)


def test_step_edge_on_a_boundary_scores_above_one():
    img = _smooth()
    seamed = img.clone()
    seamed[..., :, 32:] = (seamed[..., :, 32:] + 0.15).clamp(0, 1)  # a step edge between columns 31 and 32
    base = Q.seam_score(img, [32], [])
    score = Q.seam_score(seamed, [32], [])
    assert score > 3.0 and score > 2 * base
    # the same edge scored on a line it does not lie on is not a seam there
    assert Q.seam_score(seamed, [16], []) < 1.5
    # rows: a horizontal edge on a row boundary
    seamed_y = img.clone()
    seamed_y[..., 40:, :] *= 0.7
    assert Q.seam_score(seamed_y, [], [40]) > 3.0


def test_smooth_image_scores_about_one():
    img = _smooth(seed=3)
    for xs, ys in (([16, 32, 48], [16, 32, 48]), ([20], [44]), ([8, 24], [])):
        assert Q.seam_score(img, xs, ys) == pytest.approx(1.0, abs=0.25)
    # pure noise: every line is like every other
    noise = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    assert Q.seam_score(noise, [32, 64], [32, 64]) == pytest.approx(1.0, abs=0.05)
    # a flat image has no gradient anywhere: no seam
    assert Q.seam_score(torch.full((1, 3, 32, 32), 0.5), [16], [16]) == 1.0


def test_invariant_to_brightness_scale_and_matches_a_direct_sobel():
    img = _smooth(seed=5)
    img[..., :, 24:] *= 0.8
    s = Q.seam_score(img, [24], [40], band=2)
    assert Q.seam_score(img * 0.25, [24], [40], band=2) == pytest.approx(s, rel=1e-5)
    assert Q.seam_score(img.double(), [24], [40], band=2) == pytest.approx(s, rel=1e-5)
    # direct evaluation: normalised Sobel (kernel / 8), replicate padding, magnitude averaged over channels
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 8
    pad = torch.nn.functional.pad(img, (1, 1, 1, 1), mode="replicate")
    flat = pad.reshape(-1, 1, *pad.shape[-2:])
    gx = torch.nn.functional.conv2d(flat, kx[None, None]).reshape(img.shape)
    gy = torch.nn.functional.conv2d(flat, kx.T[None, None]).reshape(img.shape)
    mag = (gx**2 + gy**2).sqrt().mean(1)[0]
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[:, 22:26] = True
    mask[38:42, :] = True
    inner = torch.zeros(64, 64, dtype=torch.bool)
    inner[1:-1, 1:-1] = True
    assert s == pytest.approx(float(mag[mask & inner].mean() / mag[~mask & inner].mean()), rel=1e-5)


def test_boundaries_outside_the_image_are_refused_and_the_border_ignored():
    img = _smooth()
    with pytest.raises(ValueError, match="outside the image"):
        Q.seam_score(img, [70], [])
    with pytest.raises(ValueError, match="outside the image"):
        Q.seam_score(img, [32], [-4])
    with pytest.raises(ValueError, match="no tile boundary"):
        Q.seam_score(img, [0, 64], [0])  # the image border is not a seam
    assert Q.seam_score(img, [0, 32, 64], [64]) == Q.seam_score(img, [32], [])
    with pytest.raises(ValueError, match="whole pixel"):
        Q.seam_score(img, [31.5], [])
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        Q.seam_score(img[0], [32], [])
    with pytest.raises(ValueError, match="band"):
        Q.seam_score(img, [32], [], band=0)


def test_boundary_mask_bands():
    m = Q.boundary_mask(8, 10, [4], [], band=1)
    assert m[:, 3:5].all() and m.sum() == 16
    m = Q.boundary_mask(8, 10, [4], [2], band=2)
    assert m[:, 2:6].all() and m[0:4, :].all() and int(m.sum()) == 8 * 4 + 4 * 10 - 4 * 4


def test_tile_boundaries_of_the_plans():
    # MultiDiffusion: static overlapping grid, every tile edge inside the image
    md = T.TilePlanner("multidiffusion", 64, 64, 32, 32, overlap=8)
    xs, ys = Q.tile_boundaries(md, range(3))
    origins = sorted({t.x for t in md.plan(0).tiles})
    assert xs == sorted({o for o in origins if o > 0} | {o + 32 for o in origins if o + 32 < 64}) and ys == xs
    # FSTD: reset step = the plain 32 px grid; a shifted step adds its offset grid
    run = T.TiledRun(
        T.TileSettings(method="fstd", tile_width=256, tile_height=256, overlap=0, seed=3), 128, 128, ratio=8
    )
    assert Q.tile_boundaries(run, [0]) == ([32, 64, 96], [32, 64, 96])  # latent pixels (ratio 1)
    assert Q.tile_boundaries(run, [0], ratio=8) == ([256, 512, 768], [256, 512, 768])  # pixels
    oy, ox = run.planner.offset(1)
    assert (oy, ox) != (0, 0)
    bx, by = Q.tile_boundaries(run, [0, 1], ratio=8)
    expect_x = {32, 64, 96, *(x for o in T._grid_origins(128, 32, ox) for x in (o, o + 32))}
    assert bx == sorted(8 * e for e in expect_x if 0 < e < 128)
    assert 8 * oy in by or oy == 0
    # SpotDiffusion: the rolled grid mapped back, wrap-around edge included
    spot = T.TilePlanner("spotdiffusion", 64, 64, 32, 32, seed=1)
    plan = spot.plan(2)
    dy, dx = plan.roll
    xs, ys = Q.plan_boundaries(plan)
    assert xs == sorted({(e - dx) % 64 for e in (0, 32)} - {0}) and ys == sorted(
        {(e - dy) % 64 for e in (0, 32)} - {0}
    )
    # a rolled seam is found where the plan's grid put it
    img = _smooth()
    line = xs[0]
    img[..., :, line:] = (img[..., :, line:] + 0.2).clamp(0, 1)
    assert Q.seam_score(img, xs, []) > 2.0
    assert math.isfinite(Q.seam_score(img, *Q.tile_boundaries(spot, range(4))))
