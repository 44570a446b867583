"""The comfy-free arithmetic around a tiled run (no ComfyUI): crop boxes for conditioning, area conds
placed in a tile, the tile-size rules, the memory lower bound and its fix, a stated native size."""

import itertools

import pytest
import torch
from ultrares.kernels.tiled_diffusion import (
    METHOD_LABELS,
    METHODS,
    MIN_TILE_PX,
    OVERLAPPING,
    TILED_STATE_TENSORS,
    Tile,
    TileSettings,
    area_in_tile,
    memory_fix,
    pixel_count,
    tile_size_problem,
    tiled_state_bytes,
)


@pytest.mark.parametrize("scale", [1, 2, 8, 16])
def test_scaled_tile_slices_cut_the_same_box_from_a_finer_grid(scale):
    """A hint at ``scale`` pixels per latent pixel, cut with the scaled box, is exactly the nearest-
    upscaled crop of the tile: every fine pixel comes from a latent pixel inside the tile."""
    H, W = 12, 20
    index = torch.arange(H * W, dtype=torch.float32).reshape(1, 1, H, W)
    fine = torch.nn.functional.interpolate(index, scale_factor=scale, mode="nearest")
    for tile in (Tile(0, 0, 12, 20), Tile(3, 5, 6, 8), Tile(6, 12, 6, 8)):
        crop = fine[(..., *tile.slices(scale, scale))]
        expected = torch.nn.functional.interpolate(index[(..., *tile.slices())], scale_factor=scale)
        torch.testing.assert_close(crop, expected, rtol=0, atol=0)
    assert Tile(3, 5, 6, 8).slices() == (slice(3, 9), slice(5, 13))


def test_fractional_scale_rounds_each_edge_to_the_nearest_cell():
    # rows 1.5..4.5 and columns 7.5..12.5: Python's rounding, halves to even
    assert Tile(1, 3, 2, 2).slices(1.5, 2.5) == (slice(2, 4), slice(8, 12))
    assert Tile(2, 1, 3, 3).slices(0.5, 1.25) == (slice(1, 2), slice(1, 5))


def test_area_in_tile_is_the_overlap_relative_to_the_tile_by_brute_force():
    """Every area and tile on a 10x12 latent: the result is the bounding box of the pixels both cover,
    in the tile's coordinates, or None where they share none; a frame range before (h, w, y, x) is ignored."""
    H, W = 10, 12
    tiles = [Tile(0, 0, 5, 6), Tile(3, 4, 5, 6), Tile(5, 6, 5, 6)]
    areas = [
        (h, w, y, x) for h, w, y, x in itertools.product((1, 3, 7), (2, 5), range(0, H, 3), range(0, W, 4))
    ]
    for tile, (h, w, y, x) in itertools.product(tiles, areas):
        both = torch.zeros(H, W, dtype=torch.bool)
        both[y : y + h, x : x + w] = True
        inside = both[tile.slices()]
        got = area_in_tile((5, 0, h, w, y, x), tile)
        if not inside.any():
            assert got is None, (tile, (h, w, y, x))
            continue
        rows, cols = inside.any(1).nonzero().flatten(), inside.any(0).nonzero().flatten()
        expected = (len(rows), len(cols), int(rows[0]), int(cols[0]))
        assert got == expected, (tile, (h, w, y, x))
        ah, aw, ay, ax = got
        assert inside[ay : ay + ah, ax : ax + aw].all()  # a box: the overlap of two boxes


def test_tile_size_rules_name_the_setting_and_the_fix():
    assert tile_size_problem(512, 512, 64, "fstd") is None
    assert tile_size_problem(500, 512, 0, "fstd") == "tile_width=500 is not a multiple of 8: use 496 or 504."
    assert tile_size_problem(512, 516, 0, None) == "tile_height=516 is not a multiple of 8: use 512 or 520."
    for method in METHODS:
        problem = tile_size_problem(128, 192, 128, method)
        if method in OVERLAPPING:
            assert problem == "overlap=128 must be smaller than the tile (128 px): lower it, e.g. to 16."
        else:
            assert problem is None  # FSTD and SpotDiffusion do not overlap: the overlap is unused
    assert tile_size_problem(128, 192, 120, "multidiffusion") is None
    # values not known yet (linked inputs) are skipped
    assert tile_size_problem(None, None, 4096, "multidiffusion") is None
    assert tile_size_problem(128, None, 128, "mixture_of_diffusers") is None
    assert MIN_TILE_PX % 8 == 0


def test_settings_from_a_label_are_the_labelled_method():
    for label, method in METHOD_LABELS.items():
        settings = TileSettings.from_label(label, tile_width=256, seed=3)
        assert settings == TileSettings(method=method, tile_width=256, seed=3)
    with pytest.raises(KeyError):
        TileSettings.from_label("fstd")  # a kernel key is not a label


def test_state_bytes_count_the_latent_sized_float32_tensors():
    assert tiled_state_bytes(2, 4, 128, 96) == TILED_STATE_TENSORS * 2 * 4 * 128 * 96 * 4
    assert TILED_STATE_TENSORS == 16


@pytest.mark.parametrize("available", [0, 50, 99, 100, 101, 130, 159, 160, 1000])
@pytest.mark.parametrize("per_tile", [0, 10, 30])
@pytest.mark.parametrize("batch", [1, 4])
def test_memory_fix_names_the_largest_tile_batch_that_fits_by_brute_force(available, per_tile, batch):
    state = 100
    fits = [k for k in range(1, 1000) if state + k * per_tile <= available]
    fix = memory_fix(available, state, per_tile, batch)
    if state + batch * per_tile <= available:
        assert fix is None
    elif fits:
        assert fix == f"set tile_batch_size to {min(max(fits), batch - 1)} or less"
    elif state < available:
        assert fix == "use smaller tiles"
    else:
        assert fix == "generate a smaller image (the latent-sized buffers alone exceed the memory)"


def test_a_stated_native_size_in_every_form():
    assert pixel_count(512) == 512 * 512
    assert pixel_count(512.0) == 512 * 512
    assert pixel_count((64, 128)) == pixel_count([64, 128]) == 64 * 128
    for unusable in (None, 0, -64, "big", (64,), (0, 64), (64, -1), (1, 2, 3), True, False, object()):
        assert pixel_count(unusable) is None, unusable
