"""DiGIT kernel: the reference feature semantics, K-means, assignment, codebook files, atlas."""

import numpy as np
import pytest
import torch
from dinov2_reference import (
    brute_force_tokens,
    convention_resample,
    keys_bicubic_matrix,
    random_official_sd,
    reference_forward,
)
from ultrares.kernels import digit, dinov2
from ultrares.kernels.dinov2 import Dinov2Config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.mark.parametrize("registers", [0, 4])
def test_features_match_direct_evaluation_of_the_reference_semantics(registers):
    """(Position grid = the token grid here; the next test adds the 37 -> 16 interpolation.)"""
    """256 px -> ImageNet normalisation -> bicubic to 224 -> block depth-3 -> final norm -> patches."""
    depth = 6
    cfg = Dinov2Config(
        embed_dim=64, depth=depth, num_heads=1, mlp_hidden=128, pos_grid=16, num_register_tokens=registers
    )
    sd = random_official_sd(cfg, seed=5)
    model = dinov2.from_state_dict(dict(sd))
    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    got = digit.extract_features(model, images, batch_size=1)
    assert got.shape == (2, 256, 64) and got.dtype == torch.float32

    x = ((images - MEAN) / STD).double()
    src = (torch.arange(224) + 0.5) * 256 / 224 - 0.5
    resize = keys_bicubic_matrix(src, 256)
    x = torch.einsum("rh,bchw,qw->bcrq", resize, x, resize).float()
    want = reference_forward(sd, cfg, x, upto=depth - 3)[:, 1 + registers :]
    torch.testing.assert_close(got, want, atol=5e-4, rtol=5e-4)
    # the layer choice matters: the last block (or the one after) would give other features
    later = reference_forward(sd, cfg, x, upto=depth - 2)[:, 1 + registers :]
    assert (later - got).abs().max() > 1e-2


def test_prepare_images_center_crop_stretch_and_tiny_inputs():
    wide = torch.zeros(1, 3, 100, 300)
    wide[..., 125:175] = 1.0  # a white middle sixth
    crop = digit.prepare_images(wide, 256, "center_crop")
    assert crop.shape == (1, 3, 256, 256)
    assert crop[..., 128, 128].min() > 0.99 and crop[..., 128, 0].max() < 0.5
    stretch = digit.prepare_images(wide, 256, "stretch")
    assert stretch[..., 128, 0].max() < 0.01 and stretch[..., 128, 128].min() > 0.99
    tiny = digit.prepare_images(torch.full((2, 3, 1, 1), 0.25), 64)
    torch.testing.assert_close(tiny, torch.full((2, 3, 64, 64), 0.25))
    assert digit.prepare_images(torch.rand(1, 3, 3, 7), 32).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="fit="):
        digit.prepare_images(wide, 256, "zoom")
    with pytest.raises(ValueError, match="multiple of 16"):
        digit.encoder_input(torch.rand(1, 3, 40, 40))


def test_assignment_chunked_equals_unchunked_and_brute_force():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1000, 24, generator=g)
    c = torch.randn(37, 24, generator=g)
    ids, dist = digit.assign(x, c)
    ids7, dist7 = digit.assign(x, c, chunk_size=7)
    assert torch.equal(ids, ids7)
    torch.testing.assert_close(dist, dist7)
    brute = ((x[:, None, :].double() - c[None].double()) ** 2).sum(-1)
    torch.testing.assert_close(dist.double(), brute.min(1).values, atol=1e-4, rtol=1e-5)
    assert (brute.gather(1, ids[:, None]).squeeze(1) - brute.min(1).values).max() < 1e-4
    with pytest.raises(ValueError, match="codebook dimension 24 != encoder feature dimension 16"):
        digit.tokens_from_features(torch.randn(1, 4, 16), c)


def blobs(k=8, d=16, per=200, spread=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 5
    x = (centres[:, None] + spread * torch.randn(k, per, d, generator=g)).reshape(-1, d)
    return x[torch.randperm(x.shape[0], generator=g)], centres


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_kmeans_recovers_well_separated_clusters(init):
    x, centres = blobs()
    res = digit.kmeans(x, 8, n_iter=15, seed=3, init=init, chunk_size=100)
    d = torch.cdist(centres, res.centroids)
    if init == "k-means++":  # k-means++ seeding finds every blob at once
        assert torch.equal(d.argmin(1).sort().values, torch.arange(8))
        assert d.min(1).values.max() < 0.02
    assert all(b <= a * (1 + 1e-6) for a, b in zip(res.inertia, res.inertia[1:]))
    again = digit.kmeans(x, 8, n_iter=15, seed=3, init=init, chunk_size=100)
    assert torch.equal(res.centroids, again.centroids)
    unchunked = digit.kmeans(x, 8, n_iter=15, seed=3, init=init)
    torch.testing.assert_close(unchunked.centroids, res.centroids, atol=1e-5, rtol=1e-5)


def test_kmeans_reseeds_empty_clusters():
    pts = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = pts.repeat_interleave(25, dim=0)
    found = 0
    for seed in range(6):
        res = digit.kmeans(x, 4, n_iter=6, seed=seed, init="random")
        found += res.reseeded
        assert res.inertia[-1] < 1e-6, f"seed {seed}: all four points must end up as centroids"
    assert found > 0  # random init picked duplicates at least once, and reseeding fixed it
    with pytest.raises(ValueError, match="K=200 for N=100"):
        digit.kmeans(x, 200)


def test_codebook_round_trip_in_released_format(tmp_path):
    c = torch.randn(64, 48, dtype=torch.float64)
    path = str(tmp_path / "km.npy")
    digit.save_codebook(path, c)
    raw = np.load(path)
    assert raw.dtype == np.float32 and raw.shape == (64, 48)
    back = digit.load_codebook(path)
    assert back.dtype == torch.float32 and torch.equal(back, c.float())
    with pytest.raises(FileExistsError, match="already exists"):
        digit.save_codebook(path, c)
    np.save(tmp_path / "int.npy", np.zeros((4, 4), dtype=np.int64))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    np.save(tmp_path / "3d.npy", np.zeros((2, 3, 4), dtype=np.float32))
    for bad in ("int.npy", "obj.npy", "3d.npy"):
        with pytest.raises(ValueError, match="codebook|npy"):
            digit.load_codebook(str(tmp_path / bad))


def test_centroid_colors_follow_the_principal_axis():
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(-1, 1, 50)
    c = torch.randn(50, 10, generator=g) * 0.01
    c[:, 3] += 5 * t  # the dominant direction
    col = digit.centroid_colors(c)
    assert col.shape == (50, 3) and col.min() >= 0 and col.max() <= 1
    r = torch.corrcoef(torch.stack([col[:, 0], t]))[0, 1]
    assert r > 0.99  # first channel = first principal axis, signed so the big loading is positive
    assert torch.equal(col, digit.centroid_colors(c.clone()))
    img = digit.paint_tokens(torch.tensor([[[0, 49], [49, 0]]]), col, 4)
    assert img.shape == (1, 3, 8, 8)
    torch.testing.assert_close(img[0, :, 0, 0], col[0])
    torch.testing.assert_close(img[0, :, 0, 7], col[49])


def test_atlas_nearest_patch_mean_colour_and_decode(tmp_path):
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(300, 8, generator=g)
    patches = torch.rand(300, 3, 4, 4, generator=g)
    cents = torch.randn(10, 8, generator=g)
    atlas = digit.build_atlas(feats, patches, cents, chunk_size=32)
    nearest = torch.cdist(cents, feats).argmin(1)
    torch.testing.assert_close(atlas.patches, patches[nearest])
    ids = torch.cdist(feats, cents).argmin(1)
    for k in range(10):
        if (ids == k).any():
            torch.testing.assert_close(atlas.mean_rgb[k], patches[ids == k].mean(dim=(0, 2, 3)))
    assert int(atlas.counts.sum()) == 300
    path = str(tmp_path / "a.atlas.safetensors")
    digit.save_atlas(path, atlas, digit.codebook_record("digit", 8))
    back, meta = digit.load_atlas(path)
    assert meta["dinov2_interpolation"] == "digit"
    assert (back.patches - atlas.patches).abs().max() <= 0.5 / 255 + 1e-6
    tokens = torch.tensor([[[3, 1], [0, 9]]])
    img = digit.decode_tokens(tokens, back, "nearest_patch")
    assert img.shape == (1, 3, 8, 8)
    torch.testing.assert_close(img[0, :, 4:, 4:], back.patches[9])
    flat = digit.decode_tokens(tokens, back, "mean_color")
    torch.testing.assert_close(flat[0, :, 0, 5], back.mean_rgb[1])
    with pytest.raises(ValueError, match="atlas has 10 entries"):
        digit.decode_tokens(torch.tensor([[[12]]]), back)
    assert digit.atlas_path("/x/km_8k.npy") == "/x/km_8k.atlas.safetensors"


def test_image_patches_follow_token_order():
    img = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    p = digit.image_patches(img, 2)
    assert p.shape == (8, 3, 16, 16)
    torch.testing.assert_close(p[5], img[1, :, :16, 16:])  # image 1, row 0, column 1


@pytest.mark.parametrize("convention", ["digit", "hub"])
def test_features_and_tokens_of_each_convention_match_an_independent_evaluation(convention):
    """DiGIT's encoder geometry: official layout with 4 registers and a 37 x 37 position grid
    (518 px), resampled to 16 x 16 for the 224 px input. "digit" = DiGIT's own DINOv2 copy
    (scale factor (16 + 0.1) / 37, no antialias), "hub" = Meta's _reg4 hub models (antialiased
    resize to 16). Each is compared with a float64 evaluation written from its formula
    (dinov2_reference.convention_resample): 1e-5 relative and every token equal."""
    depth = 5
    cfg = Dinov2Config(
        embed_dim=64, depth=depth, num_heads=1, mlp_hidden=128, pos_grid=37, num_register_tokens=4
    )
    sd = random_official_sd(cfg, seed=7)
    model = dinov2.from_state_dict(dict(sd), interpolation=convention)
    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    got = digit.extract_features(model, images)
    # the input resize is torch's bicubic as DiGIT calls it; torch rounds its 256/224 scale to float,
    # so it sits 1e-5 from the exact formula: checked here, then both sides start from the same input
    x = ((images - MEAN) / STD).double()
    resize = keys_bicubic_matrix((torch.arange(224) + 0.5) * 256 / 224 - 0.5, 256)
    x_exact = torch.einsum("rh,bchw,qw->bcrq", resize, x, resize)
    x = digit.encoder_input(images).double()
    assert float((x - x_exact).norm() / x_exact.norm()) < 1e-4
    pos = convention_resample(convention, 16, 37, registers=4)
    sd64 = {k: v.double() for k, v in sd.items()}
    want = reference_forward(sd64, cfg, x, upto=depth - 3, resample=(pos, pos))[:, 5:]
    # the computation itself (our module run in float64): 1e-5 relative
    got64 = digit.extract_features(
        dinov2.from_state_dict(dict(sd), interpolation=convention).double(), images
    )
    rel = float((got64.double() - want).norm() / want.norm())
    assert rel < 1e-5, rel
    # as it runs (float32): float32 rounding only
    assert float((got.double() - want).norm() / want.norm()) < 1e-4
    # tokens: a codebook of perturbed reference features; every id equal to brute force on the reference
    g = torch.Generator().manual_seed(4)
    flat = want.reshape(-1, 64).float()
    cents = flat[torch.randperm(flat.shape[0], generator=g)[:48]] + 0.3 * torch.randn(48, 64, generator=g)
    ids = digit.tokens_from_features(got, cents).reshape(2, -1)
    assert torch.equal(ids, brute_force_tokens(want, cents))
    # the other convention is a different computation: features and tokens change
    other = {"digit": "hub", "hub": "digit"}[convention]
    got_other = digit.extract_features(dinov2.from_state_dict(dict(sd), interpolation=other), images)
    assert float((got_other - got).norm() / got.norm()) > 1e-3
    assert (digit.tokens_from_features(got_other, cents).reshape(2, -1) != ids).any()


def test_codebook_record_and_convention_check(tmp_path):
    """The atlas records the features' convention; a codebook without one is DiGIT's ("digit");
    an encoder with another convention is refused with both named."""
    cfg = Dinov2Config(embed_dim=64, depth=3, num_heads=1, mlp_hidden=128, pos_grid=5, num_register_tokens=4)
    sd = random_official_sd(cfg)
    digit_enc = dinov2.from_state_dict(dict(sd))
    hub_enc = dinov2.from_state_dict(dict(sd), interpolation="hub")
    atlas = digit.Atlas(torch.rand(4, 3, 2, 2), torch.rand(4, 3), torch.ones(4, dtype=torch.long))
    path = str(tmp_path / "cb.atlas.safetensors")
    digit.save_atlas(path, atlas, digit.encoder_record(hub_enc, "enc.pth"))
    _, meta = digit.load_atlas(path)
    assert (
        meta["dinov2_interpolation"] == "hub-reg"
        and meta["feature_dim"] == "64"
        and meta["encoder"] == "enc.pth"
    )
    assert digit.record_interpolation(meta) == "hub-reg"
    assert digit.record_interpolation({}) == digit.record_interpolation(None) == "digit"
    digit.check_codebook_matches(hub_enc, "hub-reg", "cb.npy", "enc.pth")
    digit.check_codebook_matches(digit_enc, "digit", "km_8k.npy", "enc.pth")
    with pytest.raises(
        ValueError, match=r"codebook 'km_8k\.npy' was fitted .*'digit'.*encoder 'enc\.pth'.*'hub'"
    ):
        digit.check_codebook_matches(hub_enc, "digit", "km_8k.npy", "enc.pth")
    with pytest.raises(ValueError, match="record the codebook"):
        digit.save_atlas(str(tmp_path / "x.atlas.safetensors"), atlas, {})
    # without registers "hub" is the same computation as "digit" (Meta's original releases)
    plain = Dinov2Config(embed_dim=64, depth=3, num_heads=1, mlp_hidden=128, pos_grid=5)
    hub_plain = dinov2.from_state_dict(random_official_sd(plain), interpolation="hub")
    digit.check_codebook_matches(hub_plain, "digit", "km_8k.npy", "enc.pth")


def _npy_with_header(path, shape, dtype="<f4", body=b"", fortran=False):
    """A .npy whose header claims ``shape`` whatever the body holds (written by hand)."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": fortran, "shape": shape})
    path.write_bytes(buf.getvalue() + body)


def test_hostile_codebook_files_are_refused_before_allocating(tmp_path):
    import pickle
    import tracemalloc

    marker = tmp_path / "pwned"

    class _Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    _npy_with_header(tmp_path / "huge.npy", (1 << 40, 768), body=b"\0" * 64)  # claims 3 PB
    _npy_with_header(tmp_path / "big_k.npy", (1 << 21, 4), body=b"\0" * (32 << 21))  # K over the bound
    good = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    np.save(tmp_path / "good.npy", good)
    raw = (tmp_path / "good.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[:-40])
    (tmp_path / "random.npy").write_bytes(np.random.default_rng(1).bytes(2000))
    (tmp_path / "pickle.npy").write_bytes(raw[:6] + pickle.dumps(_Payload()))  # magic, then a pickle
    np.save(tmp_path / "objects.npy", np.array([_Payload()], dtype=object), allow_pickle=True)
    marker.unlink(missing_ok=True)
    nan = good.copy()
    nan[3, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    expect = {
        "huge.npy": "a codebook has 1..1048576 centroids",
        "big_k.npy": "a codebook has 1..1048576 centroids",
        "cut.npy": "truncated or damaged",
        "random.npy": "not a .npy file",
        "pickle.npy": "not a .npy file",
        "objects.npy": "pickled objects are never loaded",
        "nan.npy": "NaN or infinite",
    }
    tracemalloc.start()
    try:
        for fname, what in expect.items():
            with pytest.raises(ValueError) as err:
                digit.load_codebook(str(tmp_path / fname), name=f"codebook_name '{fname}'")
            msg = str(err.value)
            assert what in msg and f"codebook_name '{fname}'" in msg and str(tmp_path) not in msg, msg
            assert "float32 [K, D] .npy" in msg  # what to do
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak  # the forged shapes allocated nothing of their size
    assert not marker.exists()
    # a Fortran-ordered float64 codebook is fine
    np.save(tmp_path / "f64.npy", np.asfortranarray(good.astype(np.float64)))
    assert torch.equal(digit.load_codebook(str(tmp_path / "f64.npy")), torch.from_numpy(good))


def test_damaged_atlas_is_refused_with_a_named_message(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "rand.atlas.safetensors").write_bytes(np.random.default_rng(2).bytes(3000))
    save_file(
        {
            "patches": torch.zeros(4, 3, 2, 2),
            "mean_rgb": torch.zeros(4, 3),
            "counts": torch.zeros(4, dtype=torch.long),
        },
        str(tmp_path / "float.atlas.safetensors"),
    )
    for fname, what in (("rand.atlas.safetensors", "header claims"), ("float.atlas.safetensors", "uint8")):
        with pytest.raises(ValueError) as err:
            digit.load_atlas(str(tmp_path / fname))
        msg = str(err.value)
        assert what in msg and msg.startswith(fname) and str(tmp_path) not in msg, msg


# ---------------------------------------------------------------- node logic moved into the kernel


def test_to_rgb_composites_alpha_and_expands_grey():
    grey_alpha = torch.tensor([[[[0.2, 0.5]]]])  # one pixel: grey 0.2 at alpha 0.5, over white
    torch.testing.assert_close(digit.to_rgb(grey_alpha), torch.full((1, 3, 1, 1), 0.6))
    rgba = torch.tensor([[[[1.0, 0.0, 0.5, 0.0]]]])  # fully transparent: the background
    torch.testing.assert_close(digit.to_rgb(rgba, background=0.25), torch.full((1, 3, 1, 1), 0.25))
    rgb = torch.rand(2, 3, 5, 3)
    torch.testing.assert_close(digit.to_rgb(rgb), rgb.permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match=r"1-4 channels, got shape \(1, 2, 2, 5\)"):
        digit.to_rgb(torch.zeros(1, 2, 2, 5))


def test_image_size_and_file_name_rules():
    assert digit.image_size_problem(256) is None
    assert "image_size=40 must be a multiple of 16" in digit.image_size_problem(40)
    assert digit.codebook_file_name("mine") == "mine.npy" == digit.codebook_file_name("mine.npy")
    for bad in ("../x", "a/b", "", ".hidden", "a..b", "x" * 200):
        assert digit.codebook_file_name(bad) is None, bad
    assert digit.check_enough_patches(4, 1, 32) == 2
    with pytest.raises(ValueError, match=r"k=5 needs at least 5 patches but 1 image\(s\) x 4 patches = 4"):
        digit.check_enough_patches(5, 1, 32)


def test_read_file_turns_any_failure_into_a_named_message():
    assert digit.read_file("a.npy", "codebook_name", lambda label: label) == "codebook_name 'a.npy'"

    def fails(exc):
        def load(label):
            raise exc

        return load

    with pytest.raises(ValueError, match="^own words$"):
        digit.read_file("a.npy", "codebook_name", fails(ValueError("own words")))
    with pytest.raises(ValueError, match=r"^codebook_name 'a.npy': the file could not be read \(permissions"):
        digit.read_file("a.npy", "codebook_name", fails(PermissionError("/abs/path/a.npy")))
    with pytest.raises(ValueError, match=r"^codebook_name 'a.npy': .*\(damaged") as err:
        digit.read_file("a.npy", "codebook_name", fails(KeyError("/abs/path")))
    assert "/abs" not in str(err.value)


def test_open_codebook_with_and_without_atlas_and_decode_image(tmp_path):
    g = torch.Generator().manual_seed(3)
    feats, images = torch.randn(2, 4, 8, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    centroids, atlas = digit.fit_codebook(feats, images, k=3, n_iter=5, seed=0)
    assert centroids.shape == (3, 8) and atlas.patches.shape == (3, 3, 16, 16)
    path = str(tmp_path / "cb.npy")
    digit.save_fitted(path, centroids, atlas, digit.codebook_record("hub-reg", 8, "enc"), overwrite=False)
    cb = digit.open_codebook(path, "cb.npy")
    assert cb.k == 3 and cb.dim == 8 and cb.interpolation == "hub-reg" and cb.atlas is not None
    torch.testing.assert_close(cb.centroids, centroids)
    tokens = digit.DigitTokens(torch.tensor([[[0, 1], [2, 0]]]), "cb.npy", 3, 64)
    img = digit.decode_image(tokens, cb, "nearest_patch")  # 2 x 16 px patches, brought to 64 px
    assert img.shape == (1, 3, 64, 64)
    torch.testing.assert_close(img[0, :, :32:2, :32:2], cb.atlas.patches[0])
    pca = digit.decode_image(tokens, cb, "centroid_pca")
    torch.testing.assert_close(pca[0, :, 40, 10], cb.palette[2])
    with pytest.raises(ValueError, match=r"tokens come from codebook 'cb.npy' \(K=4\)"):
        digit.decode_image(digit.DigitTokens(tokens.ids, "cb.npy", 4, 64), cb, "centroid_pca")
    digit.save_codebook(str(tmp_path / "bare.npy"), centroids)
    bare = digit.open_codebook(str(tmp_path / "bare.npy"), "bare.npy")
    assert bare.atlas is None and bare.interpolation == digit.DEFAULT_INTERPOLATION
    with pytest.raises(ValueError, match="needs an atlas but codebook 'bare.npy' has none"):
        digit.decode_image(tokens, bare, "mean_color")
    digit.save_codebook(str(tmp_path / "stale.npy"), torch.randn(5, 8, generator=g))
    digit.save_atlas(str(tmp_path / "stale.atlas.safetensors"), atlas, digit.codebook_record("digit", 8))
    with pytest.raises(ValueError, match="has 3 entries but codebook 'stale.npy' has 5 centroids"):
        digit.open_codebook(str(tmp_path / "stale.npy"), "stale.npy")
    with pytest.raises(FileExistsError):
        digit.save_fitted(path, centroids, atlas, digit.codebook_record("digit", 8), overwrite=False)


def test_encoder_fits_checks_width_then_convention():
    model = dinov2.Dinov2(Dinov2Config(embed_dim=32, depth=3, num_heads=2, mlp_hidden=64))
    cb = digit.DigitCodebook("cb.npy", torch.zeros(4, 16), None, torch.zeros(4, 3))
    with pytest.raises(
        ValueError, match=r"dimension 16 but encoder 'enc' produces 32-d.*default.npy for the embedded"
    ):
        digit.check_encoder_fits(model, "enc", cb, "default.npy")
    cb = digit.DigitCodebook("cb.npy", torch.zeros(4, 32), None, torch.zeros(4, 3), interpolation="hub-reg")
    with pytest.raises(ValueError, match="its tokens would not match the codebook"):
        digit.check_encoder_fits(model, "enc", cb, "default.npy")
    digit.check_encoder_fits(
        model, "enc", digit.DigitCodebook("cb.npy", torch.zeros(4, 32), None, torch.zeros(4, 3)), "x"
    )
