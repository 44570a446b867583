"""FSTD and baseline tile planners, Gaussian weights and the blend (no ComfyUI)."""

import pytest
import torch
from ultrares.kernels.tiling import METHODS, TilePlanner, blend_weights, run_tiles


def coverage(plan):
    c = torch.zeros(plan.image_hw, dtype=torch.int32)
    for t in plan.tiles:
        c[t.slices()] += 1
    return c


@pytest.mark.parametrize("size", [(128, 128), (96, 200), (64, 64), (130, 70)])
def test_fstd_grid_is_shifted_non_overlapping_and_leaves_only_leading_strips(size):
    H, W = size
    planner = TilePlanner("fstd", H, W, 64, 64, reset_interval=4, seed=3)
    shifted = 0
    for step in range(12):
        plan = planner.plan(step)
        oy, ox = plan.offset
        assert 0 <= oy < 32 and 0 <= ox < 32
        if step % 4 == 0:
            assert (oy, ox) == (0, 0) and plan.uncovered is None
        shifted += (oy, ox) != (0, 0)
        cov = coverage(plan)
        top, left = min(t.y for t in plan.tiles), min(t.x for t in plan.tiles)
        assert top <= oy and left <= ox  # clamping can only move the first tile back
        expected_uncovered = torch.zeros(H, W, dtype=torch.bool)
        expected_uncovered[:top] = True
        expected_uncovered[:, :left] = True
        assert torch.equal(cov == 0, expected_uncovered)
        assert (plan.uncovered is None) == (not expected_uncovered.any())
        if plan.uncovered is not None:
            assert torch.equal(plan.uncovered, expected_uncovered)
        n_y, n_x = -(-H // 64), -(-W // 64)
        assert len(plan.tiles) <= n_y * n_x  # never more tiles than the unshifted grid
        # tiles overlap only where the last tile was clamped back inside the image
        if H % 64 == 0 and W % 64 == 0 and (oy, ox) == (0, 0):
            assert cov.max() == 1
    assert shifted >= 6  # the grid really moves between resets


def test_plans_are_deterministic_per_seed_and_step_and_differ_across_seeds():
    a = TilePlanner("fstd", 256, 256, 64, 64, seed=7)
    b = TilePlanner("fstd", 256, 256, 64, 64, seed=7)
    c = TilePlanner("fstd", 256, 256, 64, 64, seed=8)
    steps = [5, 1, 2, 1, 3]  # order and repetition do not matter
    assert [a.plan(s).offset for s in steps] == [b.plan(s).offset for s in reversed(steps)][::-1]
    assert [a.plan(s).offset for s in range(1, 8)] != [c.plan(s).offset for s in range(1, 8)]


def test_full_coverage_variant_covers_everything():
    planner = TilePlanner("fstd_full", 200, 136, 64, 64, seed=1)
    for step in range(9):
        plan = planner.plan(step)
        assert plan.uncovered is None
        assert coverage(plan).min() >= 1


@pytest.mark.parametrize("px", [1024, 2048])
def test_fstd_area_overhead_target_and_multidiffusion_overlap_cost(px):
    lat, tile = px // 8, 512 // 8
    overlap = round(64 * 512 / 768 / 8)  # TiledDiffusion's default overlap scaled to 512 px tiles
    fstd = [TilePlanner("fstd", lat, lat, tile, tile, seed=0).plan(s).tile_area_ratio for s in range(8)]
    md = TilePlanner("multidiffusion", lat, lat, tile, tile, overlap=overlap).plan(0).tile_area_ratio
    assert max(fstd) <= 1.15
    assert md >= 1.5 * max(fstd)


def test_overlapping_methods_cover_and_overlap():
    for method in ("multidiffusion", "mixture_of_diffusers"):
        plan = TilePlanner(method, 160, 224, 64, 64, overlap=16).plan(0)
        cov = coverage(plan)
        assert cov.min() >= 1 and cov.max() >= 2


@pytest.mark.parametrize("method", METHODS)
def test_pointwise_model_through_tiles_equals_the_model_on_the_whole_latent(method):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 90, 120)
    planner = TilePlanner(method, 90, 120, 32, 48, overlap=8, seed=5)

    def predict(tx, tiles):
        assert tx.shape[0] == 2 * len(tiles)
        return [tx * 2 + 1, -tx]

    for step in range(6):
        plan = planner.plan(step)
        ref = [x * 2 + 1, -x]
        out = run_tiles(x, plan, predict, batch_size=3, reference=ref)
        torch.testing.assert_close(out[0], x * 2 + 1, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[1], -x, rtol=1e-5, atol=1e-5)


def test_fstd_strips_come_from_the_reference_and_are_required():
    x = torch.zeros(1, 1, 128, 128)
    planner = TilePlanner("fstd", 128, 128, 64, 64, seed=2)
    step = next(s for s in range(1, 10) if planner.plan(s).uncovered is not None)
    plan = planner.plan(step)
    out = run_tiles(x, plan, lambda tx, tiles: [tx + 1], reference=[torch.full_like(x, 7.0)])[0]
    assert torch.all(out[0, 0][plan.uncovered] == 7)
    assert torch.all(out[0, 0][~plan.uncovered] == 1)
    with pytest.raises(ValueError, match="uncovered"):
        run_tiles(x, plan, lambda tx, tiles: [tx + 1])


def test_tiles_see_position_dependent_input_and_spot_roll_is_undone():
    # a "model" that returns the tile's own top-left pixel everywhere: output depends on tiling
    x = torch.arange(64 * 64, dtype=torch.float32).reshape(1, 1, 64, 64)
    plan = TilePlanner("spotdiffusion", 64, 64, 32, 32, seed=1).plan(3)
    assert plan.roll != (0, 0)
    out = run_tiles(x, plan, lambda tx, tiles: [tx])[0]
    torch.testing.assert_close(out, x)  # identity survives roll + unroll exactly


def test_gaussian_weights_are_symmetric_and_peak_in_the_centre():
    w = blend_weights(64, 48, "gaussian")
    assert w.shape == (64, 48)
    torch.testing.assert_close(w, w.flip(0))
    torch.testing.assert_close(w, w.flip(1))
    assert w[32, 24] > w[0, 0] > 0


def test_bad_inputs_are_refused_clearly():
    with pytest.raises(ValueError, match="unknown tiling method"):
        TilePlanner("nope", 64, 64, 32, 32)
    with pytest.raises(ValueError, match="overlap"):
        TilePlanner("multidiffusion", 64, 64, 32, 32, overlap=32)
    planner = TilePlanner("fstd", 40, 40, 64, 64)
    assert planner.clamped and (planner.tile_h, planner.tile_w) == (40, 40)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        run_tiles(torch.zeros(1, 4, 2, 40, 40), planner.plan(0), lambda tx, t: [tx])


@pytest.mark.parametrize("target,native", [((2048, 2048), 512 * 512), ((4096, 2048), 1024 * 1024),
                                           ((1920, 1080), 512 * 512), ((300, 200), 512 * 512)])
def test_any_size_plan_keeps_aspect_budget_and_multiples(target, native):
    from ultrares.kernels.tiling import plan_any_size

    tw, th = target
    w, h, up = plan_any_size(tw, th, native)
    assert w % 64 == 0 and h % 64 == 0
    assert abs(w / h - tw / th) / (tw / th) < 0.2  # same aspect up to rounding to 64
    assert w * h <= 1.3 * min(native, tw * th)
    assert up == pytest.approx(max(tw / w, th / h))
    assert w * up >= tw - 1e-6 and h * up >= th - 1e-6
