"""Queue-time input checks (``nodes._common.check_inputs``) on the schemas of the real UltraRes nodes:
ComfyUI's conversion, NaN/inf, min/max and combo membership, with messages that name the input and
the value and never carry Python exception text."""

from __future__ import annotations

import inspect
import math

import pytest

# Python/ComfyUI error text that must never reach a user through a node's own message.
EXCEPTION_TEXT = ("Traceback", "object has no attribute", "not supported between", "invalid literal",
                  "unhashable", "Error:", "could not convert string", "argument must be")


@pytest.fixture(scope="module")
def check(comfy):
    from ultrares.nodes._common import check_inputs

    return check_inputs


@pytest.fixture(scope="module")
def tiled(comfy):
    return comfy.node_class("UltraResTiledDiffusion")


@pytest.fixture(scope="module")
def upscale(comfy):
    return comfy.node_class("UltraResRelayUpscale")


def _spec(node_cls, name):
    return next(i for i in node_cls.define_schema().inputs if i.id == name)


def _clean(message: str, *must_name: str) -> str:
    assert isinstance(message, str), message
    for word in must_name:
        assert word in message, (word, message)
    for bad in EXCEPTION_TEXT:
        assert bad not in message, (bad, message)
    return message


def test_int_converted_as_comfyui_does(check, tiled):
    v = check(tiled, tile_width="512", tile_height=512.9, overlap=True)
    assert not isinstance(v, str), v
    assert v.tile_width == 512 and type(v.tile_width) is int
    assert v.tile_height == 512 and type(v.tile_height) is int  # int() truncates, as ComfyUI's executor
    assert v["overlap"] == 1


@pytest.mark.parametrize("bad", ["abc", "5.5", [1, 2, 3], {"a": 1}, float("nan"), float("inf"), "", "9" * 5000])
def test_int_wrong_type_is_a_message(check, tiled, bad):
    _clean(check(tiled, tile_width=bad), "tile_width=", "whole number")


def test_int_range(check, tiled):
    lo, hi = _spec(tiled, "tile_width").min, _spec(tiled, "tile_width").max
    assert not isinstance(check(tiled, tile_width=lo), str) and not isinstance(check(tiled, tile_width=hi), str)
    msg = _clean(check(tiled, tile_width=lo - 1), f"tile_width={lo - 1}", f"below the minimum {lo}")
    assert str(hi) in msg  # the fix: the allowed range
    _clean(check(tiled, tile_width=str(hi + 1)), f"tile_width={hi + 1}", f"above the maximum {hi}")


@pytest.mark.parametrize("bad", [float("nan"), "NaN", "nan", float("inf"), "-inf", "Infinity", -math.inf])
def test_float_nan_inf_refused(check, upscale, bad):
    msg = _clean(check(upscale, cfg=bad), "cfg=", "finite number")
    assert "nan" in msg.lower() or "inf" in msg.lower()


def test_float_converted_and_range(check, upscale):
    spec = _spec(upscale, "cfg")
    v = check(upscale, cfg="7.5")
    assert v.cfg == 7.5 and type(v.cfg) is float
    assert type(check(upscale, cfg=3).cfg) is float
    _clean(check(upscale, cfg=spec.max + 1), "cfg=", f"above the maximum {spec.max}")
    _clean(check(upscale, cfg=spec.min - 1), "cfg=", f"below the minimum {spec.min}")
    for bad in ("seven", [7.0], {"x": 1}, ""):
        _clean(check(upscale, cfg=bad), "cfg=", "not a number")


def test_linked_and_absent_values_are_unknown(check, tiled, upscale):
    v = check(tiled, tile_width=["4", 0], tile_height=None)
    assert v == {"tile_width": None, "tile_height": None}
    assert check(upscale, cfg=["12", 1.0]).cfg is None
    # ComfyUI unwraps {"__value__": v}, the form the frontend uses for list-valued widgets
    assert check(tiled, tile_width={"__value__": 256}).tile_width == 256
    # a length-3 list is no link: ComfyUI hands it to validate_inputs as it is
    _clean(check(tiled, tile_width=["4", 0, 1]), "tile_width=")


def test_combo_membership(check, tiled):
    options = _spec(tiled, "method").options
    assert check(tiled, method=options[0]).method == options[0]
    msg = _clean(check(tiled, method="Mixture"), "method='Mixture'", "is not one of", options[0])
    assert "Mixture" in msg
    for bad in (["FSTD"], {"a": 1}, 3, "../../etc/passwd", "a\x00b"):
        _clean(check(tiled, method=bad), "method=", "is not one of")
    hint = check(tiled, method="x", combo_hints={"method": " (see the README)"})
    assert hint.endswith(" (see the README).")


def test_boolean_and_string_conversion(check, comfy):
    hdit_class = comfy.node_class("UltraResHDiTClass")
    assert check(hdit_class, unconditional=1).unconditional is True
    assert check(hdit_class, unconditional=0).unconditional is False
    fit = comfy.node_class("UltraResDiGITFitCodebook")
    assert check(fit, filename=12).filename == "12"


def test_every_problem_reported_and_values_shortened(check, tiled, upscale):
    msg = _clean(check(tiled, tile_width="x", overlap=-8, method="nope"), "tile_width=", "overlap=-8", "method=")
    assert msg.count(". ") == 2 and msg.endswith(".")  # one sentence per bad input
    long_value = "y" * 100_000
    msg = _clean(check(tiled, method=long_value), "method=")
    assert len(msg) < 1000 and "100002 chars" in msg


def test_unknown_input_name_is_a_programming_error(check, tiled):
    with pytest.raises(KeyError, match="not_an_input"):
        check(tiled, not_an_input=1)


def test_check_choice_unhashable(comfy):
    from ultrares.nodes._common import check_choice

    _clean(check_choice("mode", ["x"], {"a", "b"}), "mode=['x']", "is not one of")
    assert check_choice("mode", "a", {"a", "b"}) is True
