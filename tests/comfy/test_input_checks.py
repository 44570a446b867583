"""Queue-time input checks (``nodes._common.check_inputs``) on the schemas of the real UltraRes nodes:
ComfyUI's conversion, NaN/inf, min/max and combo membership, with messages that name the input and
the value and never carry Python exception text."""

from __future__ import annotations

import inspect
import math

import pytest

# Python/ComfyUI error text that must never reach a user through a node's own message.
EXCEPTION_TEXT = (
    "Traceback",
    "object has no attribute",
    "not supported between",
    "invalid literal",
    "unhashable",
    "Error:",
    "could not convert string",
    "argument must be",
)


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


@pytest.mark.parametrize(
    "bad", ["abc", "5.5", [1, 2, 3], {"a": 1}, float("nan"), float("inf"), "", "9" * 5000]
)
def test_int_wrong_type_is_a_message(check, tiled, bad):
    _clean(check(tiled, tile_width=bad), "tile_width=", "whole number")


def test_int_range(check, tiled):
    lo, hi = _spec(tiled, "tile_width").min, _spec(tiled, "tile_width").max
    assert not isinstance(check(tiled, tile_width=lo), str) and not isinstance(
        check(tiled, tile_width=hi), str
    )
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
    msg = _clean(
        check(tiled, tile_width="x", overlap=-8, method="nope"), "tile_width=", "overlap=-8", "method="
    )
    assert msg.count(". ") == 2 and msg.endswith(".")  # one sentence per bad input
    long_value = "y" * 100_000
    msg = _clean(check(tiled, method=long_value), "method=")
    assert len(msg) < 1000 and "100002 chars" in msg


def test_unknown_input_name_is_a_programming_error(check, tiled):
    with pytest.raises(KeyError, match="not_an_input"):
        check(tiled, not_an_input=1)


def test_checked_inputs_named_like_dict_methods_read_as_inputs(comfy):
    """Apply CLEAR's input ``clear`` read as ``v.clear`` is the input, not ``dict.clear`` (which made
    the node refuse every CLEAR file); the dict's own methods still work for other names."""
    from ultrares.nodes._common import CheckedInputs

    v = CheckedInputs(clear="file", items=3, steps=None)
    assert (v.clear, v.items, v.steps) == ("file", 3, None)
    assert v.get("clear") == "file" and sorted(v.keys()) == ["clear", "items", "steps"]
    with pytest.raises(AttributeError, match="window"):
        _ = v.window


def test_an_unhashable_combo_value_is_refused_by_name(check, tiled):
    """A list from a hand-written prompt (not a link) for a COMBO: a message, not a TypeError."""
    _clean(check(tiled, method=["x"]), "method=['x']", "is not one of")
    _clean(check(tiled, method=[["x"], 0]), "method=", "is not one of")


# ---------------------------------------------------------------------------------------------
# Every UltraRes node: its validate_inputs goes through check_inputs


WIDGETS = ("INT", "FLOAT", "BOOLEAN", "STRING", "COMBO")


def _pack_nodes(comfy):
    return sorted(
        n for n in comfy.pack_nodes if n.startswith("UltraRes") and not n.startswith("UltraResTest")
    )


def _widgets(node_cls) -> dict:
    return {i.id: i for i in node_cls.define_schema().inputs if str(i.get_io_type()) in WIDGETS}


def _named(node_cls) -> list[str]:
    """The inputs the node's validate_inputs names (those ComfyUI leaves unchecked for it): with a
    ``**kwargs`` signature every declared input (ComfyUI's ``validate_has_kwargs``)."""
    from comfy_api.internal import first_real_override  # what ComfyUI's executor uses to find it

    check = first_real_override(node_cls, "validate_inputs")
    if check is None:
        return []
    params = inspect.signature(check).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return [i.id for i in node_cls.define_schema().inputs]
    return [p for p in params if p not in ("cls", "input_types")]


def test_every_float_input_is_checked_at_queue_time(comfy):
    """ComfyUI lets NaN/inf through its min/max check: a FLOAT is safe only when validate_inputs names it."""
    missing = {}
    for node_id in _pack_nodes(comfy):
        cls = comfy.node_class(node_id)
        floats = [n for n, spec in _widgets(cls).items() if str(spec.get_io_type()) == "FLOAT"]
        unnamed = sorted(set(floats) - set(_named(cls)))
        if unnamed:
            missing[node_id] = unnamed
    assert not missing, f"FLOAT inputs no validate_inputs names (NaN would run): {missing}"


def test_validate_inputs_names_only_schema_inputs(comfy):
    for node_id in _pack_nodes(comfy):
        cls = comfy.node_class(node_id)
        declared = {i.id for i in cls.define_schema().inputs}
        assert set(_named(cls)) <= declared, (node_id, set(_named(cls)) - declared)


def _bad_values(spec) -> list:
    kind = str(spec.get_io_type())
    if kind == "FLOAT":
        return [float("nan"), float("inf"), "abc", [1, 2, 3], {"a": 1}]
    if kind == "INT":
        return ["abc", [1, 2, 3], {"a": 1}, float("nan")]
    if kind == "COMBO":
        return [["x"], {"a": 1}, "../../etc/passwd", "not-a-choice\x00"]
    return []


def test_every_named_input_refuses_bad_values_with_a_message(comfy):
    """The fuzz of the real server, in-process: each bad value of each named input gives a message that
    names the input (no exception, no Python error text); with every named input linked (None) the node
    accepts at queue time."""
    checked = 0
    for node_id in _pack_nodes(comfy):
        cls = comfy.node_class(node_id)
        widgets = _widgets(cls)
        named = [n for n in _named(cls) if n in widgets]
        if not named:  # no validate_inputs: ComfyUI's own INT/combo checks apply (no FLOAT, see above)
            continue
        assert comfy.validate(node_id, **{n: None for n in _named(cls)}) is True, node_id
        assert comfy.validate(node_id) is True, (
            node_id
        )  # a missing widget: ComfyUI calls it without the value
        for name in named:
            spec = widgets[name]
            bad = list(_bad_values(spec))
            if str(spec.get_io_type()) in ("INT", "FLOAT"):
                bad += [
                    v
                    for v in (
                        (spec.min - 1) if spec.min is not None else None,
                        (spec.max + 1) if spec.max is not None else None,
                    )
                    if v is not None
                ]
            for value in bad:
                others = {n: None for n in _named(cls)}  # ComfyUI passes every named input (None: linked)
                msg = comfy.validate(node_id, **{**others, name: value})
                assert isinstance(msg, str), (node_id, name, value, msg)
                _clean(msg, f"{name}=")
                checked += 1
    assert checked > 150  # every node with a validate_inputs took part


# ---------------------------------------------------------------------------------------------
# nodes._inputs.CheckedNode: each input once, checked at queue time and again at run time


SAMPLER = dict(
    block_size=2,
    blur_sigma_max=0.0,
    prob_length=0.93,
    s_block=0.15,
    s_noise=0.2,
    s_churn=0.0,
    s_tmin=0.0,
    s_tmax=1000.0,
    s_churn_noise=1.0,
)


def _queue(comfy, prompt: dict, node: str):
    """ComfyUI's own queue-time validation of node ``node`` of an API ``prompt`` (execution.py's
    ``validate_inputs``, as the server runs it on POST /prompt): (ok, [error details])."""
    import asyncio

    import execution

    ok, errors, _ = asyncio.run(execution.validate_inputs("test", prompt, node, {}))
    return ok, [e.get("details", "") for e in errors]


def test_checked_node_takes_its_inputs_once(comfy):
    """The relay nodes declare their inputs only in the schema: validate_inputs and execute take
    ``**inputs`` (so ComfyUI passes every input to validate_inputs and leaves every check to it)."""
    from comfy_api.internal import first_real_override

    for node_id in (
        "UltraResBlockNoise",
        "UltraResRelaySigmas",
        "UltraResRelaySampler",
        "UltraResRelayUpscale",
    ):
        cls = comfy.node_class(node_id)
        # ComfyUI loads the pack under a path-derived module name: compare the class by name
        assert "CheckedNode" in [c.__name__ for c in cls.__mro__], node_id
        # validate_inputs names one more argument, ComfyUI's input_types (which inputs are linked), so
        # that a JSON null can be told from a link
        for name, args in (("validate_inputs", ["cls", "input_types"]), ("execute", ["cls"])):
            spec = inspect.getfullargspec(first_real_override(cls, name))
            assert spec.args == args and spec.varkw == "inputs", (node_id, name, spec)


def test_queue_time_through_comfyuis_validator(comfy):
    """ComfyUI's own validate_inputs on a prompt: a widget value out of range is refused with our
    message; the same input linked (its value unknown at queue time) is accepted; a bad optional
    combo value and the cross-input rule are refused."""
    base = {"1": {"class_type": "UltraResRelaySampler", "inputs": dict(SAMPLER)}}
    assert _queue(comfy, base, "1") == (True, [])
    bad = {"1": {"class_type": "UltraResRelaySampler", "inputs": {**SAMPLER, "s_noise": 5.0}}}
    ok, details = _queue(comfy, bad, "1")
    assert not ok and any("s_noise=5.0 is above the maximum 1.0" in d for d in details), details
    linked = {
        "1": {"class_type": "UltraResRelaySampler", "inputs": {**SAMPLER, "s_noise": ["2", 0]}},
        "2": {"class_type": "PrimitiveFloat", "inputs": {"value": 5.0}},
    }
    assert _queue(comfy, linked, "1") == (True, [])
    for change, words in (
        ({"relay_settings": "nope"}, "relay_settings='nope' is not one of: model, inputs"),
        ({"s_tmin": 5.0, "s_tmax": 1.0}, "s_tmin (5.0) must not exceed s_tmax (1.0)"),
        ({"block_size": 17}, "block_size=17 is above the maximum 16"),
    ):
        prompt = {"1": {"class_type": "UltraResRelaySampler", "inputs": {**SAMPLER, **change}}}
        ok, details = _queue(comfy, prompt, "1")
        assert not ok and any(words in d for d in details), (change, details)


def test_run_time_checks_what_the_queue_could_not(comfy):
    """execute re-checks every input with the same rules: a linked value now known is refused by
    name, an optional widget left out takes its schema default, a missing required input or an
    unknown name is a TypeError, a required widget without a value is refused."""
    cls = comfy.node_class("UltraResRelaySampler")
    with pytest.raises(ValueError, match=r"s_noise=5.0 is above the maximum 1.0"):
        comfy.run_node("UltraResRelaySampler", **{**SAMPLER, "s_noise": 5.0})
    with pytest.raises(ValueError, match="s_tmin"):
        comfy.run_node("UltraResRelaySampler", **{**SAMPLER, "s_tmin": 5.0, "s_tmax": 1.0})
    v = cls.checked(dict(SAMPLER))
    assert v.relay_settings == "model" and type(v.block_size) is int and v.s_noise == 0.2
    assert cls.checked({**SAMPLER, "block_size": "4", "s_noise": 1}).block_size == 4
    with pytest.raises(TypeError, match="missing its required input 's_churn'"):
        cls.checked({k: x for k, x in SAMPLER.items() if k != "s_churn"})
    with pytest.raises(TypeError, match="no input 'steps'"):
        cls.checked({**SAMPLER, "steps": 3})
    with pytest.raises(ValueError, match="s_block=None is not a value"):
        cls.checked({**SAMPLER, "s_block": None})
    # queue time: absent and linked values are not known, so nothing is refused for them
    assert comfy.validate("UltraResRelaySampler", block_size=None, s_noise=["7", 0]) is True
    # an optional socket left out is None at run time; an optional widget its default
    up = comfy.node_class("UltraResRelayUpscale")
    assert up.validate_inputs(relay_settings=None) is True
