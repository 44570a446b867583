"""The embedded models' data: Fluent 3D emoji decoding, box downscale, class ids, hold-out split."""

import os

import pytest
import torch
from ultrares.kernels import emoji_data as E

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
FLUENT = os.path.join(ROOT, E.FLUENT_DIR)


def test_box_downscale_is_the_block_mean():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = E.box_downscale(x, 4)
    assert y.shape == (3, 3, 2, 2) and y.dtype == torch.uint8
    ref = x.double().reshape(3, 3, 2, 4, 2, 4).mean((3, 5)).round()
    assert torch.equal(y.double(), ref)
    with pytest.raises(ValueError, match="multiple of 3"):
        E.box_downscale(x, 3)


def test_class_ids_of_fluent_file_names():
    lut = E.emoji_category_lookup()
    name = lambda stem: E.EMOJI_CLASSES[E.emoji_class_id(stem, lut)]  # noqa: E731
    assert name("1f600") == "Smileys & Emotion"
    assert name("0023-fe0f-20e3") == "Symbols"  # keycap #: FE0F is ignored
    assert name("1f1e9-1f1ea") == "Flags"
    assert name("1f468-1f3fb-200d-1f384") == "People & Body"


def test_missing_data_names_the_setup_step(tmp_path):
    with pytest.raises(FileNotFoundError, match="make setup"):
        E.fluent_files(str(tmp_path))


@pytest.mark.skipif(not os.path.isdir(FLUENT), reason="Fluent emoji not installed (make setup)")
def test_fluent_set_decodes_on_white_with_a_five_percent_holdout(tmp_path):
    files = E.fluent_files(FLUENT)
    assert len(files) == E.FLUENT_COUNT
    sub = tmp_path / "assets"
    sub.mkdir()
    for f in files[:40]:  # a small copy: decoding all 3,391 takes a minute on 2 cores
        os.symlink(os.path.abspath(f), sub / os.path.basename(f))
    d = E.build_fluent_dataset(str(tmp_path), 64)
    assert d["images"].shape == (40, 3, 64, 64) and d["images"].dtype == torch.uint8
    assert d["holdout"].sum() == 2 and bool(d["holdout"][19]) and bool(d["holdout"][39])
    # composited on the white background: the corners are white, the centre is not
    assert (d["images"][:, :, 0, 0] == 255).all()
    assert (d["images"][:, :, 24:40, 24:40].float().mean((1, 2, 3)) < 250).float().mean() > 0.9
    d256 = E.build_fluent_dataset(str(tmp_path), 256)
    assert torch.equal(E.box_downscale(d256["images"], 4), d["images"])
    assert d["names"] == d256["names"] and torch.equal(d["labels"], d256["labels"])
