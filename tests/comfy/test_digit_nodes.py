"""DiGIT nodes in-process on a real ComfyUI: loaders (embedded encoder, an official-layout .pth,
the shipped codebook), tokenize against the kernel, grey/alpha/tiny images, codebook fitting with
its no-silent-overwrite rule, decoding, and the bad-input messages."""

from __future__ import annotations

import os
import re

import folder_paths
import numpy as np
import pytest
import torch
from ultrares.kernels import digit as D
from ultrares.kernels import dinov2

ENCODER = "ultrares-dinov2-s14-imgfocus.safetensors"
CODEBOOK = "ultrares-emoji-k256.npy"


@pytest.fixture
def digit_dir(comfy, tmp_path, monkeypatch):
    """A temporary models/digit folder searched first (and written to by the fit node)."""
    paths, exts = folder_paths.folder_names_and_paths["digit"]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "digit", ([str(tmp_path)] + list(paths), exts))
    folder_paths.filename_list_cache.pop("digit", None)
    yield tmp_path
    folder_paths.filename_list_cache.pop("digit", None)


@pytest.fixture(scope="module")
def embedded(comfy):
    files = folder_paths.get_filename_list("digit")
    if ENCODER not in files:
        pytest.skip("embedded encoder not converted (scripts/assets/digit_encoder.sh, run by make setup)")
    assert CODEBOOK in files, "the shipped codebook models/digit/ultrares-emoji-k256.npy must be found"
    (enc,) = comfy.run_node("UltraResDiGITEncoderLoader", encoder_name=ENCODER)
    (cb,) = comfy.run_node("UltraResDiGITCodebookLoader", codebook_name=CODEBOOK)
    return enc, cb


def scene(seed=0, h=96, w=128):
    """A smooth picture with a few shapes: [1, h, w, 3] in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([xx, yy, 0.5 + 0.5 * torch.sin(6 * xx * yy)], -1)
    for _ in range(3):
        cy, cx, r = torch.rand(3, generator=g)
        img[((yy - cy) ** 2 + (xx - cx) ** 2) < (0.1 + 0.2 * r) ** 2] = torch.rand(3, generator=g)
    return img[None]


def test_defaults_are_found_and_shapes(comfy, embedded):
    enc, cb = embedded
    assert enc.dim == 384 and enc.model.cfg.depth == 12
    assert cb.centroids.shape == (256, 384) and cb.atlas is not None
    info = comfy.object_info("UltraResDiGITEncoderLoader")
    assert info["input"]["required"]["encoder_name"][1]["default"] == ENCODER
    info = comfy.object_info("UltraResDiGITCodebookLoader")
    assert info["input"]["required"]["codebook_name"][1]["default"] == CODEBOOK


def test_tokenize_equals_kernel_and_token_map_uses_palette(comfy, embedded):
    enc, cb = embedded
    img = torch.cat([scene(0), scene(1)])
    tokens, token_map, seen = comfy.run_node(
        "UltraResDiGITTokenize", encoder=enc, codebook=cb, image=img, image_size=256, fit="center_crop"
    )
    assert tokens.ids.shape == (2, 16, 16) and tokens.k == 256 and tokens.codebook == CODEBOOK
    assert token_map.shape == (2, 256, 256, 3) and seen.shape == (2, 256, 256, 3)
    prepared = D.prepare_images(img.permute(0, 3, 1, 2), 256, "center_crop")
    torch.testing.assert_close(seen.permute(0, 3, 1, 2), prepared)
    feats = D.extract_features(enc.model, prepared)
    ids, _ = D.assign(feats.reshape(-1, 384), cb.centroids)
    assert torch.equal(tokens.ids.flatten(), ids)
    torch.testing.assert_close(token_map[1, 16 * 3 + 5, 16 * 7 + 2], cb.palette[tokens.ids[1, 3, 7]])
    assert len(torch.unique(tokens.ids)) > 4  # a real picture uses several tokens
    # a larger image_size gives a larger grid (interpolated position embedding)
    t512, m512, _ = comfy.run_node(
        "UltraResDiGITTokenize", encoder=enc, codebook=cb, image=img[:1], image_size=512, fit="stretch"
    )
    assert t512.ids.shape == (1, 32, 32) and m512.shape == (1, 512, 512, 3)


def test_grey_alpha_and_tiny_images_are_converted(comfy, embedded):
    enc, cb = embedded
    rgb = scene(2)
    grey = rgb.mean(-1, keepdim=True)
    tok_grey = comfy.run_node(
        "UltraResDiGITTokenize", encoder=enc, codebook=cb, image=grey, image_size=256, fit="stretch"
    )[0]
    tok_grey3 = comfy.run_node(
        "UltraResDiGITTokenize",
        encoder=enc,
        codebook=cb,
        image=grey.expand(-1, -1, -1, 3),
        image_size=256,
        fit="stretch",
    )[0]
    assert torch.equal(tok_grey.ids, tok_grey3.ids)
    opaque = torch.cat([rgb, torch.ones_like(rgb[..., :1])], -1)
    tok_rgb = comfy.run_node(
        "UltraResDiGITTokenize", encoder=enc, codebook=cb, image=rgb, image_size=256, fit="stretch"
    )[0]
    tok_opaque = comfy.run_node(
        "UltraResDiGITTokenize", encoder=enc, codebook=cb, image=opaque, image_size=256, fit="stretch"
    )[0]
    assert torch.equal(tok_rgb.ids, tok_opaque.ids)
    clear = torch.cat([rgb, torch.zeros_like(rgb[..., :1])], -1)
    _, _, seen = comfy.run_node(
        "UltraResDiGITTokenize", encoder=enc, codebook=cb, image=clear, image_size=256, fit="stretch"
    )
    assert seen.min() > 0.999  # fully transparent = the white background, not the hidden colours
    tiny = torch.rand(1, 3, 5, 3)
    tok_tiny, map_tiny, _ = comfy.run_node(
        "UltraResDiGITTokenize", encoder=enc, codebook=cb, image=tiny, image_size=256, fit="center_crop"
    )
    assert tok_tiny.ids.shape == (1, 16, 16) and map_tiny.shape == (1, 256, 256, 3)
    with pytest.raises(ValueError, match="1-4 channels"):
        comfy.run_node(
            "UltraResDiGITTokenize",
            encoder=enc,
            codebook=cb,
            image=torch.rand(1, 8, 8, 5),
            image_size=256,
            fit="stretch",
        )
    assert "multiple of 16" in comfy.validate("UltraResDiGITTokenize", image_size=250, fit="stretch")


def test_dimension_mismatch_names_both(comfy, embedded, digit_dir):
    enc, _ = embedded
    np.save(
        digit_dir / "km_8k_like.npy", np.random.default_rng(0).standard_normal((32, 768)).astype(np.float32)
    )
    (cb768,) = comfy.run_node("UltraResDiGITCodebookLoader", codebook_name="km_8k_like.npy")
    with pytest.raises(ValueError, match=r"km_8k_like\.npy' has dimension 768 but encoder .*produces 384-d"):
        comfy.run_node(
            "UltraResDiGITTokenize", encoder=enc, codebook=cb768, image=scene(), image_size=256, fit="stretch"
        )
    (dec,) = comfy.run_node("UltraResDiGITDecode", tokens=D_tokens(32), codebook=cb768, mode="centroid_pca")
    assert dec.shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="needs an atlas"):
        comfy.run_node("UltraResDiGITDecode", tokens=D_tokens(32), codebook=cb768, mode="nearest_patch")


def D_tokens(k):
    """A DigitTokens object as the Tokenize node builds it (2 x 2 grid on a 32 px image)."""
    return D.DigitTokens(torch.tensor([[[0, 1], [2, k - 1]]]), "x.npy", k, 32)


def test_official_layout_pth_loads_and_bad_files_are_named(comfy, digit_dir):
    cfg = dinov2.Dinov2Config(embed_dim=128, depth=4, num_heads=2, mlp_hidden=256, num_register_tokens=4)
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(v.shape, generator=g) * 0.2 for k, v in dinov2.Dinov2(cfg).state_dict().items()}
    torch.save(sd, digit_dir / "dinov2_tiny_reg4_pretrain.pth")
    (enc,) = comfy.run_node("UltraResDiGITEncoderLoader", encoder_name="dinov2_tiny_reg4_pretrain.pth")
    # default: DiGIT's own interpolation (0.1 offset, no antialias), even for a register model
    assert enc.dim == 128 and enc.model.cfg.num_register_tokens == 4 and enc.interpolation == "digit"
    assert (enc.model.cfg.interpolate_offset, enc.model.cfg.interpolate_antialias) == (0.1, False)
    (hub,) = comfy.run_node(
        "UltraResDiGITEncoderLoader", encoder_name="dinov2_tiny_reg4_pretrain.pth", interpolation="hub"
    )
    assert (hub.model.cfg.interpolate_offset, hub.model.cfg.interpolate_antialias) == (0.0, True)
    np.save(digit_dir / "tiny128.npy", np.random.default_rng(1).standard_normal((8, 128)).astype(np.float32))
    (cb,) = comfy.run_node("UltraResDiGITCodebookLoader", codebook_name="tiny128.npy")
    assert cb.interpolation == "digit"  # no atlas, no record: taken as DiGIT's (like km_8k.npy)
    with pytest.raises(
        ValueError,
        match=r"codebook 'tiny128\.npy' was fitted .*'digit'.*encoder 'dinov2_tiny_reg4_pretrain\.pth'.*'hub'",
    ):
        comfy.run_node(
            "UltraResDiGITTokenize", encoder=hub, codebook=cb, image=scene(), image_size=256, fit="stretch"
        )
    tokens, _, _ = comfy.run_node(
        "UltraResDiGITTokenize", encoder=enc, codebook=cb, image=scene(), image_size=256, fit="stretch"
    )
    want = D.tokens_from_features(
        D.extract_features(enc.model, D.prepare_images(scene().permute(0, 3, 1, 2), 256, "stretch")),
        cb.centroids,
    )
    assert torch.equal(tokens.ids, want)
    torch.save({"foo.weight": torch.zeros(3)}, digit_dir / "not_dinov2.pth")
    with pytest.raises(ValueError, match="not_dinov2.pth.*not a DINOv2 checkpoint"):
        comfy.run_node("UltraResDiGITEncoderLoader", encoder_name="not_dinov2.pth")
    np.save(digit_dir / "bad.npy", np.zeros((2, 3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"codebook_name 'bad.npy'.*not \[K, D\]"):
        comfy.run_node("UltraResDiGITCodebookLoader", codebook_name="bad.npy")


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_file_gone_since_the_list_was_read_is_refused_by_name(comfy, embedded, monkeypatch):
    """A file listed at queue time but not found at run time (removed in between) is refused naming the
    input, the file and the folder, as the LinFusion and CLEAR loaders do (nodes/_paths.model_file)."""
    monkeypatch.setattr(folder_paths, "get_full_path", lambda folder, name: None)
    for node, name, file in (
        ("UltraResDiGITCodebookLoader", "codebook_name", CODEBOOK),
        ("UltraResDiGITEncoderLoader", "encoder_name", ENCODER),
    ):
        want = rf"^{name} '{re.escape(file)}' is not in models/digit; put the file there and refresh\.$"
        with pytest.raises(ValueError, match=want):
            comfy.run_node(node, **{name: file})


def test_hostile_files_give_named_messages_and_run_nothing(comfy, digit_dir):
    marker = digit_dir / "pwned"
    torch.save({"cls_token": torch.zeros(1, 1, 64), "x": _Payload(marker)}, digit_dir / "evil.pth")
    (digit_dir / "random.safetensors").write_bytes(np.random.default_rng(0).bytes(5000))
    (digit_dir / "zeros.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), np.float32))
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {**header, "shape": (1 << 40, 768)})
    (digit_dir / "huge.npy").write_bytes(buf.getvalue() + b"\0" * 32)
    np.save(digit_dir / "cb_ok.npy", np.zeros((4, 8), np.float32))
    (digit_dir / "cb_ok.atlas.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{")
    cases = [
        (
            "UltraResDiGITEncoderLoader",
            {"encoder_name": "evil.pth"},
            "encoder_name 'evil.pth': not a plain PyTorch",
        ),
        (
            "UltraResDiGITEncoderLoader",
            {"encoder_name": "random.safetensors"},
            "encoder_name 'random.safetensors': its safetensors header claims",
        ),
        (
            "UltraResDiGITEncoderLoader",
            {"encoder_name": "zeros.safetensors"},
            "zeros.safetensors': its safetensors header claims",
        ),
        (
            "UltraResDiGITCodebookLoader",
            {"codebook_name": "huge.npy"},
            "codebook_name 'huge.npy': has shape (1099511627776, 768)",
        ),
        (
            "UltraResDiGITCodebookLoader",
            {"codebook_name": "cb_ok.npy"},
            "'cb_ok.atlas.safetensors': its safetensors header claims",
        ),
    ]
    for node, inputs, what in cases:
        with pytest.raises(ValueError) as err:
            comfy.run_node(node, **inputs)
        msg = str(err.value)
        assert what in msg, msg
        assert str(digit_dir) not in msg and "weights_only=False" not in msg, msg
    assert not marker.exists()


def test_fit_codebook_writes_npy_and_atlas_never_overwrites(comfy, embedded, digit_dir):
    enc, _ = embedded
    imgs = torch.cat([scene(s, 64, 64) for s in range(3)])
    args = dict(
        encoder=enc, images=imgs, k=24, iterations=4, seed=1, image_size=128, fit="stretch", filename="mine"
    )
    assert (
        comfy.validate(
            "UltraResDiGITFitCodebook", filename="mine", overwrite=False, image_size=128, fit="stretch"
        )
        is True
    )
    (cb,) = comfy.run_node("UltraResDiGITFitCodebook", overwrite=False, **args)
    path = digit_dir / "mine.npy"
    arr = np.load(path)
    assert arr.dtype == np.float32 and arr.shape == (24, 384)
    assert torch.equal(cb.centroids, torch.from_numpy(arr)) and cb.name == "mine.npy"
    assert os.path.exists(digit_dir / "mine.atlas.safetensors")
    _, meta = D.load_atlas(str(digit_dir / "mine.atlas.safetensors"))
    # the record of the features it was fitted on, read back by the loader
    assert meta["dinov2_interpolation"] == enc.interpolation == "digit" and meta["encoder"] == ENCODER
    assert cb.interpolation == "digit"
    # the fitted codebook is listed by the loader and decodes its own training image
    (loaded,) = comfy.run_node("UltraResDiGITCodebookLoader", codebook_name="mine.npy")
    assert loaded.atlas is not None and int(loaded.atlas.counts.sum()) == 3 * 64
    assert loaded.interpolation == "digit"
    tokens, _, seen = comfy.run_node(
        "UltraResDiGITTokenize", encoder=enc, codebook=loaded, image=imgs[:1], image_size=128, fit="stretch"
    )
    (patches,) = comfy.run_node("UltraResDiGITDecode", tokens=tokens, codebook=loaded, mode="nearest_patch")
    (flat,) = comfy.run_node("UltraResDiGITDecode", tokens=tokens, codebook=loaded, mode="mean_color")
    assert patches.shape == flat.shape == seen.shape == (1, 128, 128, 3)
    err_patch = (patches - seen).abs().mean()
    err_grey = (seen - seen.mean()).abs().mean()
    assert err_patch < err_grey  # retrieval resembles the picture better than a flat grey
    # no silent overwrite: refused at queue time and at run time
    msg = comfy.validate(
        "UltraResDiGITFitCodebook", filename="mine", overwrite=False, image_size=128, fit="stretch"
    )
    assert isinstance(msg, str) and "already exists" in msg
    with pytest.raises(ValueError, match="already exists"):
        comfy.run_node("UltraResDiGITFitCodebook", overwrite=False, **args)
    (again,) = comfy.run_node("UltraResDiGITFitCodebook", overwrite=True, **{**args, "seed": 2})
    assert not torch.equal(again.centroids, cb.centroids)
    assert "plain file name" in comfy.validate(
        "UltraResDiGITFitCodebook", filename="../evil", overwrite=False, image_size=128, fit="stretch"
    )
    with pytest.raises(ValueError, match="k=500 needs at least 500 patches"):
        comfy.run_node("UltraResDiGITFitCodebook", overwrite=False, **{**args, "filename": "other", "k": 500})
    with pytest.raises(ValueError, match="K=24"):
        comfy.run_node("UltraResDiGITDecode", tokens=D_tokens(256), codebook=loaded, mode="nearest_patch")


def test_queue_time_checks_cover_combos(comfy, embedded):
    """ComfyUI 0.3.75 does not check V3 combo values itself, so the nodes do (HTTP 400 at queue time)."""
    assert "fit='zoom' is not one of" in comfy.validate("UltraResDiGITTokenize", image_size=256, fit="zoom")
    assert comfy.validate("UltraResDiGITTokenize", image_size=256, fit="center_crop") is True
    assert "above the maximum 1024" in comfy.validate("UltraResDiGITTokenize", image_size=2048, fit="stretch")
    assert "mode='x'" in comfy.validate("UltraResDiGITDecode", mode="x")
    assert comfy.validate("UltraResDiGITEncoderLoader", encoder_name=ENCODER) is True
    msg = comfy.validate("UltraResDiGITEncoderLoader", encoder_name="dinov2_vitb14_reg4_pretrain.pth")
    assert "models/digit" in msg
    assert "codebook_name='km_8k.npy'" in comfy.validate(
        "UltraResDiGITCodebookLoader", codebook_name="km_8k.npy"
    )
    assert comfy.validate("UltraResDiGITEncoderLoader", encoder_name=ENCODER, interpolation="hub") is True
    assert "interpolation='meta' is not one of" in comfy.validate(
        "UltraResDiGITEncoderLoader", encoder_name=ENCODER, interpolation="meta"
    )


@pytest.mark.parametrize(
    "inputs,what",
    [
        ({"k": float("nan")}, "k=nan is not a finite number"),
        ({"k": float("inf")}, "k=inf is not a finite number"),
        ({"k": "twelve"}, "k='twelve' is not a whole number"),
        ({"k": 1}, "k=1 is below the minimum 2"),
        ({"iterations": float("-inf")}, "iterations=-inf is not a finite number"),
        ({"iterations": [1, 2, 3]}, "iterations=[1, 2, 3] is not a whole number"),
        ({"seed": -1}, "seed=-1 is below the minimum 0"),
        ({"image_size": float("nan")}, "image_size=nan is not a finite number"),
        ({"image_size": "big"}, "image_size='big' is not a whole number"),
        ({"image_size": 250}, "image_size=250 must be a multiple of 16"),
        ({"fit": 3}, "fit=3 is not one of"),
    ],
)
def test_numbers_and_types_are_checked_at_queue_time(comfy, inputs, what):
    fit = dict(filename="q", overwrite=False, image_size=128, fit="stretch", k=24, iterations=4, seed=0)
    assert comfy.validate("UltraResDiGITFitCodebook", **fit) is True
    msg = comfy.validate("UltraResDiGITFitCodebook", **{**fit, **inputs})
    assert isinstance(msg, str) and what in msg, msg
    if "image_size" in inputs:
        msg = comfy.validate("UltraResDiGITTokenize", image_size=inputs["image_size"], fit="stretch")
        assert isinstance(msg, str) and what in msg, msg
