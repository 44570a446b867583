"""What an HDiT takes besides its weights (``kernels/hdit.py``, ``kernels/hdit_format.py``): the smallest
image it samples, any size above it (padded and cropped back), class ids with the unconditional row,
a user's file opened with plain messages, and the one reader of a model's trained relay settings."""

import json

import pytest
import torch
import torch.nn.functional as F
from hdit_layout import SMALL, random_official_state_dict, small_keys
from ultrares.kernels import hdit, hdit_format, relay
from ultrares.kernels.hdit_format import HDiTLoadError


def _config(patch, attns, classes=0):
    """A tiny two-level HDiT config with the given patch size and per-level attention."""
    return {
        "model": {
            "type": "image_transformer_v2",
            "input_size": [32, 32],
            "patch_size": list(patch),
            "depths": [1, 1],
            "widths": [32, 32],
            "self_attns": attns,
            "mapping_width": 32,
            "mapping_depth": 1,
            "sigma_data": 0.5,
        },
        "dataset": {"num_classes": classes},
    }


def _runs(model, h, w) -> bool:
    """Whether the inner forward takes an ``h`` x ``w`` image (its sides multiples of size_multiple)."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, h, w), torch.ones(1))
    except ValueError as e:
        assert "neighborhood attention needs each side" in str(e), e
        return False
    return True


@pytest.mark.parametrize(
    "patch,attns",
    [
        ((2, 2), [{"type": "neighborhood", "d_head": 16, "kernel_size": 3}] * 2),
        (
            (2, 1),
            [{"type": "global", "d_head": 16}, {"type": "neighborhood", "d_head": 16, "kernel_size": 5}],
        ),
        ((1, 2), [{"type": "neighborhood", "d_head": 16, "kernel_size": 3, "dilation": 2}] * 2),
        ((2, 2), [{"type": "global", "d_head": 16}] * 2),
    ],
)
def test_min_size_is_the_smallest_size_the_model_runs(patch, attns):
    """min_size per side is the first multiple of size_multiple at which the forward runs (found here by
    trying each multiple in turn, the other side kept large), and the message is in pixels."""
    torch.manual_seed(0)
    model = hdit_format.build_model(_config(patch, attns)).eval()
    mh, mw = model.size_multiple
    big = 64
    first_h = next(h for h in range(mh, big + 1, mh) if _runs(model, h, big))
    first_w = next(w for w in range(mw, big + 1, mw) if _runs(model, big, w))
    assert model.min_size() == (first_h, first_w)
    assert model.size_problem(first_h, first_w) is None
    msg = model.size_problem(first_h - 1, first_w)
    assert msg.startswith(
        f"HDiT: this model needs images of at least {first_w}x{first_h} px (width x height)"
    )
    assert f"got {first_w}x{first_h - 1} px" in msg


def test_forward_any_size_pads_crops_and_maps_the_unconditional_row():
    model = hdit_format.build_model(SMALL).eval()  # 5 classes + the unconditional row, size multiple 16
    hdit_format.load_state_dict_strict(model, random_official_state_dict(small_keys()))  # no zero head
    assert model.size_multiple == (16, 16) and model.min_size() == (16, 16)
    n = model.num_classes - 1
    x, sigma = torch.randn(2, 3, 20, 30), torch.tensor([0.7, 2.0])
    ids = torch.tensor([3, hdit.UNCOND])
    with torch.no_grad():
        got = model.forward_any_size(x, sigma, ids)
        # the same by hand: reflect-pad to 32 x 32, the unconditional id as the last embedding row, crop
        want = model(F.pad(x, (0, 2, 0, 12), mode="reflect"), sigma, class_cond=torch.tensor([3, n]))
        torch.testing.assert_close(got, want[..., :20, :30])
        assert (got[1] - model.forward_any_size(x, sigma, torch.tensor([3, 0]))[1]).abs().max() > 1e-4
        # no ids: unconditional for every image
        free = model.forward_any_size(x[:1], sigma[:1])
        torch.testing.assert_close(
            free, model.forward_any_size(x[:1], sigma[:1], torch.tensor([hdit.UNCOND]))
        )
    with pytest.raises(ValueError, match="got 30x12 px"):
        model.forward_any_size(torch.zeros(1, 3, 12, 30), sigma[:1])


def test_class_ids_are_dataset_classes_or_the_unconditional_row():
    model = hdit_format.build_model(SMALL)
    assert model.class_problem(torch.tensor([0, 4, hdit.UNCOND])) is None
    for bad in (5, -2):
        msg = model.class_problem([1, bad])
        assert msg == (
            f"class_id {bad} is out of range for this HDiT, which has 5 classes (ids 0-4); use a smaller id, "
            "or turn on 'unconditional' for unconditional sampling."
        )
        with pytest.raises(ValueError, match=f"class_id {bad} is out of range"):
            model.forward_any_size(torch.zeros(1, 3, 16, 16), torch.ones(1), torch.tensor([bad]))
    uncond = hdit_format.build_model({**SMALL, "dataset": {"num_classes": 0}})
    assert uncond.class_problem([hdit.UNCOND]) is None
    assert uncond.class_problem([0]).startswith("class_id 0 was given, but this HDiT is unconditional")


def test_open_checkpoint_names_the_file_for_every_failure(tmp_path, monkeypatch, caplog):
    path = tmp_path / "m.safetensors"
    hdit_format.save_inference(hdit_format.build_model(SMALL), hdit_format.parse_config(SMALL), str(path))
    model, cfg = hdit_format.open_checkpoint(str(path), name="sub/m.safetensors")
    assert isinstance(model, hdit.HDiT) and cfg.num_classes == 5
    with pytest.raises(HDiTLoadError, match="HDiT file sub/x.pth not found"):
        hdit_format.open_checkpoint(str(tmp_path / "x.pth"), name="sub/x.pth")

    def fail(kind):
        def load(*args, **kwargs):
            raise kind("deep inside")

        monkeypatch.setattr(hdit_format, "load_checkpoint", load)

    fail(MemoryError)
    with pytest.raises(HDiTLoadError, match=r"^not enough memory to load m.safetensors; free memory"):
        hdit_format.open_checkpoint(str(path))
    fail(KeyError)
    with pytest.raises(HDiTLoadError) as e:
        hdit_format.open_checkpoint(str(path), name="sub/m.safetensors")
    assert str(e.value).startswith("cannot load sub/m.safetensors: unexpected KeyError while reading it")
    assert "deep inside" not in str(e.value) and "deep inside" in caplog.text  # the details go to the log


def test_trained_relay_is_read_from_the_config_parsed_at_load():
    class _Holder:
        def __init__(self, **attrs):
            self.__dict__.update(attrs)

    sec = {"patch": 4, "blur_sigma_max": 3.0, "steps": 30}
    cfg = hdit_format.parse_config({**json.loads(json.dumps(SMALL)), "relay": sec})
    assert cfg.relay == relay.relay_config({"relay": sec})
    base = _Holder(hdit_config=cfg)  # a BaseModel carrying the config
    assert hdit_format.trained_relay(base) is cfg.relay
    assert hdit_format.trained_relay(_Holder(model=base)) is cfg.relay  # a ModelPatcher around it
    # read by attribute: ComfyUI's copy of the pack (its own HDiTConfig class) reads the same way
    assert (
        hdit_format.trained_relay(_Holder(model=_Holder(hdit_config=_Holder(relay=cfg.relay)))) is cfg.relay
    )
    plain = _Holder(model=_Holder(hdit_config=hdit_format.parse_config(SMALL)))
    for other in (plain, _Holder(model=_Holder()), None, _Holder(hdit_config={"relay": sec})):
        assert hdit_format.trained_relay(other) is None
