"""FSTD and baseline tile planners, Gaussian weights and the blend (no ComfyUI)."""

import pytest
import torch
from ultrares.kernels.tiled_diffusion import METHODS, TilePlanner, blend_weights, run_tiles


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


@pytest.mark.parametrize(
    "target,native",
    [
        ((2048, 2048), 512 * 512),
        ((4096, 2048), 1024 * 1024),
        ((1920, 1080), 512 * 512),
        ((300, 200), 512 * 512),
    ],
)
def test_any_size_plan_keeps_aspect_budget_and_multiples(target, native):
    from ultrares.kernels.tiled_diffusion import plan_any_size

    tw, th = target
    w, h, up = plan_any_size(tw, th, native)
    assert w % 64 == 0 and h % 64 == 0
    assert abs(w / h - tw / th) / (tw / th) < 0.2  # same aspect up to rounding to 64
    assert w * h <= 1.3 * min(native, tw * th)
    assert up == pytest.approx(max(tw / w, th / h))
    assert w * up >= tw - 1e-6 and h * up >= th - 1e-6


# ---------------------------------------------------------------- the official FSTD loop, ported


def _official_gaussian(t: int) -> torch.Tensor:
    """Mixture-of-Diffusers weights as the official code builds them (variance 0.01 of the tile),
    centred at (t - 1) / 2 on both axes: written here from the formula, not imported."""
    import math

    x = torch.arange(t, dtype=torch.float64)
    g = torch.exp(-((x - (t - 1) / 2) ** 2) / (t * t * 2 * 0.01)) / math.sqrt(2 * math.pi * 0.01)
    return torch.outer(g, g)


def _official_fstd_step(eps_at, H, W, t, oy, ox, reference, skip_duplicates=False):
    """Any-Size-Diffusion's p_mean_variance_canvas_accelerate stitching (techniques.md section 2):
    ceil(H/t) x ceil(W/t) tiles at clamp(i*t + offset, 0, size - t), every index evaluated and
    Gaussian-weighted (a clamped duplicate counts twice), uncovered pixels from the reference."""
    import math

    acc = torch.zeros(1, 1, H, W, dtype=torch.float64)
    contrib = torch.zeros(H, W, dtype=torch.float64)
    g = _official_gaussian(t)
    seen = set()
    for i in range(math.ceil(H / t)):
        for j in range(math.ceil(W / t)):
            y = min(max(i * t + oy, 0), H - t)
            x = min(max(j * t + ox, 0), W - t)
            if skip_duplicates and (y, x) in seen:
                continue
            seen.add((y, x))
            acc[..., y : y + t, x : x + t] += g * eps_at(y, x)
            contrib[y : y + t, x : x + t] += g
    return torch.where(contrib > 0, acc / contrib.clamp_min(1e-300), reference)


def _ours(eps_at, plan, reference):
    H, W = plan.image_hw
    x = torch.zeros(1, 1, H, W)

    def predict(tiles_x, tiles):
        return [torch.cat([eps_at(tile.y, tile.x).float() for tile in tiles])]

    return run_tiles(x, plan, predict, batch_size=3, reference=[reference.float()])[0].double()


def test_fstd_matches_the_official_stitching_loop_and_differs_only_at_duplicate_clamped_tiles():
    """Our planner evaluates each distinct clamped tile once; the official loop evaluates a tile that
    two grid indices clamp to twice and weights it double. Shown on a 150-wide latent with 64-tiles and
    offset 25: columns 25, 89->86 and 150-64=86 give the duplicate 86."""
    H, W, t = 64, 150, 64
    g = torch.Generator().manual_seed(0)
    reference = torch.randn(1, 1, H, W, generator=g, dtype=torch.float64)
    field = torch.randn(1, 1, H, W, generator=g, dtype=torch.float64)
    tile_bias = {}

    def tile_dependent(y, x):  # each tile predicts the global field plus its own offset
        bias = tile_bias.setdefault((y, x), float(torch.randn(1, generator=g)))
        return field[..., y : y + t, x : x + t] + bias

    planner = TilePlanner("fstd", H, W, t, t, reset_interval=1000, seed=0)
    found_duplicate = False
    for step in range(1, 40):
        plan = planner.plan(step)
        oy, ox = plan.offset
        official_xs = [min(max(j * t + ox, 0), W - t) for j in range(3)]
        assert sorted({tile.x for tile in plan.tiles}) == sorted(set(official_xs))  # same distinct tiles
        # a prediction that does not depend on the tile: identical to the official loop everywhere
        same = _ours(lambda y, x: field[..., y : y + t, x : x + t], plan, reference)
        torch.testing.assert_close(
            same,
            _official_fstd_step(lambda y, x: field[..., y : y + t, x : x + t], H, W, t, oy, ox, reference),
            rtol=1e-6,
            atol=1e-6,
        )
        ours = _ours(tile_dependent, plan, reference)
        official = _official_fstd_step(tile_dependent, H, W, t, oy, ox, reference)
        duplicated = [x for x in set(official_xs) if official_xs.count(x) > 1]
        if not duplicated:
            torch.testing.assert_close(ours, official, rtol=1e-6, atol=1e-6)
            continue
        found_duplicate = True
        # the duplicate's columns that another tile also covers are the only ones that differ
        (d,) = duplicated
        others = [x for x in set(official_xs) if x != d]
        shared = torch.zeros(W, dtype=torch.bool)
        for x0 in others:
            shared[max(x0, d) : min(x0, d) + t] = True
        differ = (ours - official).abs().amax(dim=(0, 1, 2)) > 1e-6
        assert differ.any() and not (differ & ~shared).any()
        # and removing the duplicate from the official loop gives exactly ours
        deduped = _official_fstd_step(tile_dependent, H, W, t, oy, ox, reference, skip_duplicates=True)
        torch.testing.assert_close(ours, deduped, rtol=1e-6, atol=1e-6)
    assert found_duplicate, "no step produced a duplicate clamped tile; widen the step range"


def test_tiled_run_keeps_the_first_evaluation_of_a_step_per_group_and_falls_back_without_one():
    """TiledRun: the reference is the raw prediction of the first evaluation of the latest earlier
    step for that group (SAG-style extra calls never replace it); an absent group needs none; a
    group seen for the first time gets the full-coverage plan."""
    from ultrares.kernels.tiled_diffusion import TiledRun, TileSettings

    run = TiledRun(
        TileSettings(
            method="fstd",
            tile_width=64,
            tile_height=64,
            overlap=0,
            tile_batch_size=64,
            reset_interval=1000,
            seed=1,
        ),
        16,
        24,
        ratio=8,
    )  # 8x8 latent tiles
    sigma = torch.tensor([2.0])
    calls = []

    def predict_const(value):
        def predict(tiles_x, tiles, active):
            calls.append((len(tiles), list(active)))
            return [torch.full_like(tiles_x, value) for _ in active]

        return predict

    x = torch.zeros(1, 1, 16, 24)
    # step 1 (shifted): no reference yet -> full coverage; uncond absent (cfg 1)
    out = run.denoise(x, sigma, 1, ["cond", None], predict_const(1.0))
    assert out[1] is None and torch.equal(out[0], torch.ones_like(x))
    full_tiles = calls[-1][0]
    # an extra evaluation at the same step must not replace the step's reference
    run.denoise(x, sigma, 1, ["cond"], predict_const(5.0))
    # step 2: the cond group has a reference (raw = (x - 1) / 2 = -0.5): strips get x - sigma * raw = 1
    out = run.denoise(x, sigma, 2, ["cond", None], predict_const(3.0))
    plan = run.planner.plan(2)
    assert plan.uncovered is not None, "pick a seed whose step 2 is shifted"
    assert calls[-1][0] == len(plan.tiles) < full_tiles
    if plan.uncovered is not None:
        strip = plan.uncovered
        torch.testing.assert_close(out[0][..., strip], torch.ones_like(out[0][..., strip]))
        torch.testing.assert_close(out[0][..., ~strip], torch.full_like(out[0][..., ~strip], 3.0))
    # a group never seen before (e.g. rebuilt every step) falls back to full coverage
    run.denoise(x, sigma, 3, ["cond", "new"], predict_const(0.0))
    assert calls[-1][0] == len(run.full.plan(3).tiles)


@pytest.mark.parametrize(
    "target", [(1920, 1080), (2560, 1080), (1080, 1920), (2048, 2048), (300, 200), (4096, 1752)]
)
@pytest.mark.parametrize("native", [512 * 512, 1024 * 1024])
def test_any_size_ends_at_the_exact_target_without_stretching(target, native):
    """16:9, 21:9, 9:16, 1:1 and an awkward 3:2: the first stage keeps its own aspect through the
    upscale (one factor for both sides, up to 8-px rounding), and the centred crop is exactly the
    target and lies inside the upscaled image."""
    from ultrares.kernels.tiled_diffusion import cover_and_crop, plan_any_size

    tw, th = target
    w, h, up = plan_any_size(tw, th, native)
    sw, sh, x, y = cover_and_crop(w, h, tw, th)
    assert sw >= tw and sh >= th and sw % 8 == 0 and sh % 8 == 0 and x % 8 == 0 and y % 8 == 0
    assert x + tw <= sw and y + th <= sh
    assert abs(sw / w - sh / h) <= 8 / min(w, h) + 1e-9  # one scale factor: no stretch
    assert min(sw - tw, sh - th) < 8  # the smallest cover: one side fits to within rounding


def test_step_of_is_the_nearest_schedule_entry_or_a_stable_key_without_one():
    from ultrares.kernels.tiled_diffusion import step_of

    sigmas = torch.tensor([14.6, 7.0, 3.1, 1.2, 0.0])
    assert [step_of(torch.tensor([s]), sigmas) for s in (14.6, 7.0001, 3.1, 1.19, 0.0)] == [0, 1, 2, 3, 4]
    assert step_of(torch.tensor([3.1, 3.1]), sigmas) == 2  # a batch: its first sigma
    assert step_of(torch.tensor([2.5]), None) == step_of(2.5, torch.tensor([])) == 25000
    # the plan is keyed by the step, so a 64-bit seed (ComfyUI's seed range) plans as well as a small one
    from ultrares.kernels.tiled_diffusion import TilePlanner

    big = TilePlanner("fstd", 64, 64, 16, 16, seed=2**64 - 1)
    assert big.offset(1) == big.offset(1) and all(0 <= o < 8 for o in big.offset(1))
