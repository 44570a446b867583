"""DINOv2 kernel: both checkpoint layouts, register tokens, position-embedding interpolation,
intermediate layers against a direct evaluation written from the layer equations."""

import json
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dinov2_reference import (
    aa_bicubic_matrix,
    keys_bicubic_matrix,
    random_official_sd,
    reference_forward,
    to_hf_layout,
)
from ultrares.kernels import dinov2
from ultrares.kernels.dinov2 import Dinov2, Dinov2Config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


SMALL = dict(embed_dim=128, depth=4, num_heads=2, patch_size=14, mlp_hidden=256, pos_grid=5)


@pytest.mark.parametrize("registers,layer_scale", [(0, True), (4, True), (4, False)])
def test_official_layout_matches_direct_evaluation(registers, layer_scale):
    cfg = Dinov2Config(**SMALL, num_register_tokens=registers, layer_scale=layer_scale)
    sd = random_official_sd(cfg)
    model = dinov2.from_state_dict(dict(sd))
    assert model.cfg.num_register_tokens == registers and model.cfg.layer_scale == layer_scale
    assert model.cfg.depth == 4 and model.cfg.num_heads == 2
    # default "digit": DiGIT's DINOv2 copy keeps the class defaults (0.1, no antialias) for every model
    assert (model.cfg.interpolate_offset, model.cfg.interpolate_antialias) == (0.1, False)
    # "hub" (and None = the official layout's own code): Meta's hub models, (0, antialias) for _reg4
    hub = (0.0, True) if registers else (0.1, False)
    for conv in ("hub", None):
        m = dinov2.from_state_dict(dict(sd), interpolation=conv)
        assert (m.cfg.interpolate_offset, m.cfg.interpolate_antialias) == hub
    x = torch.randn(2, 3, 70, 70, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model.get_intermediate_layers(x, [1], norm=True, prefix=True)[0]
        patches = model.get_intermediate_layers(x, [1])[0]
        full = model(x)
    want = reference_forward(sd, cfg, x, upto=1)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(patches, want[:, 1 + registers :], atol=2e-4, rtol=2e-4)
    assert patches.shape == (2, 25, 128)
    torch.testing.assert_close(full, reference_forward(sd, cfg, x, upto=3), atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("registers", [0, 4])
def test_hf_layout_converts_to_identical_outputs(registers):
    cfg = Dinov2Config(**SMALL, num_register_tokens=registers)
    sd = random_official_sd(cfg, seed=3)
    hf = to_hf_layout(sd)
    assert dinov2.detect_layout(hf) == "hf" and dinov2.detect_layout(sd) == "official"
    a = dinov2.from_state_dict(dict(sd))
    b = dinov2.from_state_dict(hf, config=a.cfg)
    x = torch.randn(1, 3, 56, 84, generator=torch.Generator().manual_seed(2))  # non-square, interpolated
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)
    # with interpolation=None and no config the HF layout keeps the size-based resize of the HF code
    c = dinov2.from_state_dict(hf, interpolation=None)
    assert c.cfg.interpolate_offset == 0.0 and not c.cfg.interpolate_antialias
    assert dinov2.from_state_dict(hf).cfg.interpolate_offset == 0.1  # the default is DiGIT's
    assert c.cfg.num_register_tokens == registers


def test_block_chunked_and_wrapped_checkpoints_load(tmp_path):
    cfg = Dinov2Config(**SMALL)
    sd = random_official_sd(cfg)
    chunked = {
        (k.replace("blocks.", f"blocks.{int(k.split('.')[1]) // 2}.", 1) if k.startswith("blocks.") else k): v
        for k, v in sd.items()
    }
    path = tmp_path / "teacher.pth"
    torch.save({"teacher": chunked}, path)
    model = dinov2.load_dinov2(str(path))
    ref = dinov2.from_state_dict(dict(sd))
    x = torch.randn(1, 3, 70, 70)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=0, rtol=0)


def test_safetensors_round_trip_keeps_config(tmp_path):
    cfg = Dinov2Config(**{**SMALL, "pos_grid": 4}, num_register_tokens=4, interpolate_offset=0.0)
    model = Dinov2(cfg)
    model.load_state_dict(random_official_sd(cfg))
    path = str(tmp_path / "m.safetensors")
    dinov2.save_dinov2(model, path)
    back = dinov2.load_dinov2(path, interpolation=None)  # the stored convention
    assert back.cfg == cfg
    # an explicit convention replaces the stored one (and only that)
    digit_cfg = dinov2.load_dinov2(path).cfg
    assert (digit_cfg.interpolate_offset, digit_cfg.interpolate_antialias) == (0.1, False)
    assert dinov2.load_dinov2(path, interpolation="hub").cfg == Dinov2Config(
        **{**SMALL, "pos_grid": 4}, num_register_tokens=4, interpolate_offset=0.0, interpolate_antialias=True
    )
    x = torch.randn(1, 3, 42, 42)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), atol=0, rtol=0)


@pytest.mark.parametrize("offset,antialias", [(0.1, False), (0.0, False), (0.0, True)])
@pytest.mark.parametrize("rows,cols", [(14, 6), (16, 16)])
def test_position_interpolation_is_bicubic_with_the_chosen_convention(offset, antialias, rows, cols):
    """Separable bicubic written out: Keys a = -0.75 at src = (dst + 0.5) * grid / (n + offset) - 0.5
    (official ViT-S/B/L, Hugging Face), or the antialiased filter of the official _reg4 models."""
    m = 9
    cfg = Dinov2Config(**{**SMALL, "pos_grid": m}, interpolate_offset=offset, interpolate_antialias=antialias)
    model = Dinov2(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.pos_embed.copy_(torch.randn(model.pos_embed.shape, generator=g))
    pos = model.interpolate_pos_embed(rows, cols)
    assert pos.shape == (1, 1 + rows * cols, cfg.embed_dim)
    torch.testing.assert_close(pos[0, 0], model.pos_embed[0, 0])  # cls position untouched
    if antialias:
        mat_r, mat_c = aa_bicubic_matrix(rows, m), aa_bicubic_matrix(cols, m)
    else:
        mat_r = keys_bicubic_matrix((torch.arange(rows) + 0.5) * m / (rows + offset) - 0.5, m)
        mat_c = keys_bicubic_matrix((torch.arange(cols) + 0.5) * m / (cols + offset) - 0.5, m)
    grid = model.pos_embed[0, 1:].double().reshape(m, m, -1)
    want = torch.einsum("rm,mnd,cn->rcd", mat_r, grid, mat_c)
    torch.testing.assert_close(pos[0, 1:].reshape(rows, cols, -1).double(), want, atol=1e-4, rtol=1e-4)
    # the two conventions really differ, and the stored grid is used as is
    other = Dinov2(
        Dinov2Config(
            **{**SMALL, "pos_grid": m}, interpolate_offset=0.1 - offset, interpolate_antialias=not antialias
        )
    )
    other.load_state_dict(model.state_dict())
    assert not torch.allclose(other.interpolate_pos_embed(rows, cols), pos)
    assert torch.equal(model.interpolate_pos_embed(m, m), model.pos_embed)


def test_interpolated_forward_uses_interpolated_embedding():
    cfg = Dinov2Config(**SMALL)
    model = dinov2.from_state_dict(random_official_sd(cfg))
    x = torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        tokens = model.prepare_tokens(x)
        patches = (
            F.conv2d(x, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=14)
            .flatten(2)
            .transpose(1, 2)
        )
        want = torch.cat([model.cls_token, patches], 1) + model.interpolate_pos_embed(3, 4)
    torch.testing.assert_close(tokens, want)


def test_bad_inputs_have_clear_messages():
    model = Dinov2(Dinov2Config(**SMALL))
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        model(torch.randn(1, 3, 30, 28))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(1, 1, 28, 28))
    with pytest.raises(ValueError, match="not a DINOv2 checkpoint"):
        dinov2.from_state_dict({"foo.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="out of range"):
        model.get_intermediate_layers(torch.randn(1, 3, 28, 28), [7])
    assert Dinov2Config.preset("vitb14_reg4").num_register_tokens == 4
    assert Dinov2Config.preset("vitb14_reg4").interpolate_offset == 0.1  # DiGIT's encoder
    assert Dinov2Config.preset("vitb14_reg4", "hub").interpolate_antialias  # Meta's hub _reg4
    assert Dinov2Config.preset("vitl14").depth == 24
    with pytest.raises(ValueError, match="unknown DINOv2 preset"):
        Dinov2Config.preset("vitg14")


# ----------------------------------------------------------------------------- hostile files


class _Payload:
    """Unpickling this would create ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _no_module(monkeypatch):
    """Fail the test if a DINOv2 module is built (i.e. memory sized from the file is allocated)."""

    def boom(*_a, **_k):
        raise AssertionError("a module was allocated from an unchecked file")

    monkeypatch.setattr(dinov2, "Dinov2", boom)


def _assert_clean(msg: str, name: str, tmp_path):
    assert name in msg and str(tmp_path) not in msg  # the file by its given name, never a server path
    assert "weights_only=False" not in msg and "weights_only" not in msg.replace("weights_only=True", "")


def test_damaged_safetensors_are_refused_with_a_named_message(tmp_path, monkeypatch):
    cfg = Dinov2Config(**SMALL)
    model = Dinov2(cfg)
    model.load_state_dict(random_official_sd(cfg))
    good = tmp_path / "good.safetensors"
    dinov2.save_dinov2(model, str(good))
    data = good.read_bytes()
    (tmp_path / "random.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "tiny.safetensors").write_bytes(b"\x01\x02")
    huge = (10**12).to_bytes(8, "little") + b"{}"
    (tmp_path / "huge_header.safetensors").write_bytes(huge)
    _no_module(monkeypatch)
    cases = {
        "random.safetensors": "header claims",
        "truncated.safetensors": "claims bytes",
        "tiny.safetensors": "too short",
        "huge_header.safetensors": "header claims 1,000,000,000,000 bytes",
    }
    for fname, what in cases.items():
        with pytest.raises(dinov2.WeightFileError) as err:
            dinov2.load_dinov2(str(tmp_path / fname), name=f"encoder_name '{fname}'")
        msg = str(err.value)
        assert what in msg and "download or convert it again" in msg, msg
        _assert_clean(msg, fname, tmp_path)


def _with_config(tmp_path, fname, config: dict) -> str:
    from safetensors.torch import save_file

    cfg = Dinov2Config(**SMALL)
    path = str(tmp_path / fname)
    save_file(random_official_sd(cfg), path, metadata={"dinov2_config": json.dumps(config)})
    return path


def test_stored_config_is_checked_before_anything_is_allocated(tmp_path, monkeypatch):
    base = dict(SMALL, num_register_tokens=0, layer_scale=True, interpolate_offset=0.1)
    unknown = _with_config(tmp_path, "unknown.safetensors", {**base, "flash": True})
    absurd = _with_config(tmp_path, "absurd.safetensors", {**base, "embed_dim": 16384, "depth": 128})
    big = _with_config(
        tmp_path, "big.safetensors", {**base, "embed_dim": 1024, "depth": 24, "mlp_hidden": 4096}
    )
    nan = _with_config(tmp_path, "nan.safetensors", {**base, "eps": float("nan")})
    wrong_type = _with_config(tmp_path, "type.safetensors", {**base, "depth": "12"})
    _no_module(monkeypatch)
    expect = {
        unknown: "unknown key(s) ['flash']",
        absurd: "embed_dim=16384, expected a finite int in [64, 8192]",  # ~1.2 TB of weights
        big: "needs more numbers than the file holds",
        nan: "eps=nan",
        wrong_type: "depth='12'",
    }
    for path, what in expect.items():
        fname = os.path.basename(path)
        with pytest.raises(dinov2.WeightFileError) as err:
            dinov2.load_dinov2(path)
        msg = str(err.value)
        assert what in msg and fname in msg, msg
        _assert_clean(msg, fname, tmp_path)
    # the same check covers configs inferred from tensor shapes: block indices with gaps
    sd = random_official_sd(Dinov2Config(**SMALL))
    sd["blocks.100000.norm1.weight"] = torch.ones(128)
    with pytest.raises(dinov2.WeightFileError, match="with gaps"):
        dinov2.from_state_dict(sd, name="x.pth")


def test_pickles_with_code_are_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"cls_token": torch.zeros(1, 1, 64), "x": _Payload(marker)}, tmp_path / "evil.pth")
    (tmp_path / "legacy.pt").write_bytes(pickle.dumps({"w": _Payload(marker)}))
    (tmp_path / "cut.pth").write_bytes((tmp_path / "evil.pth").read_bytes()[:100])
    for fname in ("evil.pth", "legacy.pt", "cut.pth"):
        with pytest.raises(dinov2.WeightFileError) as err:
            dinov2.load_dinov2(str(tmp_path / fname), name=f"encoder_name '{fname}'")
        msg = str(err.value)
        assert "not a plain PyTorch weights file" in msg and "never loaded" in msg, msg
        _assert_clean(msg, fname, tmp_path)
        assert not marker.exists()
    # a zip whose members expand far beyond the file (a zip bomb) is refused before torch reads it
    import zipfile

    with zipfile.ZipFile(tmp_path / "bomb.pth", "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("bomb/data/0", b"\0" * (64 << 20))
    with pytest.raises(dinov2.WeightFileError, match=r"bomb\.pth: its archive expands to 67,108,864 bytes"):
        dinov2.load_dinov2(str(tmp_path / "bomb.pth"))
    with pytest.raises(dinov2.WeightFileError, match="unsupported DINOv2 weight file type '.onnx'"):
        dinov2.load_dinov2(str(tmp_path / "m.onnx"))
    with pytest.raises(ValueError, match="interpolation='meta'"):
        dinov2.from_state_dict(random_official_sd(Dinov2Config(**SMALL)), interpolation="meta")
