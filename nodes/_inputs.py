"""Each input once: a node's inputs are declared in its schema and nowhere else.

A node subclasses :class:`CheckedNode` instead of ``io.ComfyNode``; its ``validate_inputs`` (queue
time) and the checks at the top of its ``execute`` (run time) then come from the schema, and the node
writes only what the schema cannot say (cross-input rules) in :meth:`CheckedNode.rules`::

    class UltraResThing(CheckedNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id="UltraResThing", ..., inputs=[
                io.Model.Input("model", tooltip=...),
                io.Float.Input("lo", default=0.0, min=0.0, max=10.0, tooltip=...),
                io.Float.Input("hi", default=1.0, min=0.0, max=10.0, tooltip=...),
                io.Combo.Input("mode", options=["a", "b"], default="a", optional=True, tooltip=...),
            ], outputs=[...])

        @classmethod
        def rules(cls, v) -> bool | str:  # optional; v.lo / v.hi are None when not known at queue time
            if v.lo is not None and v.hi is not None and v.lo >= v.hi:
                return f"lo ({v.lo}) must be below hi ({v.hi})."
            return True

        @classmethod
        def execute(cls, **inputs) -> io.NodeOutput:
            v = cls.checked(inputs)  # the queue-time checks again, on the values now known
            return io.NodeOutput(thing(v.model, v.lo, v.hi, v.mode))

What ComfyUI hands a ``validate_inputs(cls, **kwargs)`` (read in ``execution.py`` ``validate_inputs`` and
``get_input_data`` of ComfyUI 0.3.75 and 0.30.0, the same on both):

- every declared input present in the prompt, required and optional, widgets and sockets; an optional
  input left out of the prompt is absent; undeclared keys are dropped (0.30's ``accept_all_inputs``
  schemas aside, which this pack does not use);
- a **linked** input (socket or widget converted to an input) as ``None``: there is no execution list
  at queue time, so ``get_input_data`` marks it missing. Its value is checked at run time only;
- widget values after ComfyUI's INT/FLOAT/STRING/BOOLEAN conversion (a failed conversion is already
  ComfyUI's own error), but **without** its min/max and combo checks for any input, because the
  signature takes ``**kwargs`` (``validate_has_kwargs``). NaN and inf pass its conversion.

So :meth:`CheckedNode.validate_inputs` runs ``_common.check_inputs`` on *every* widget input it is
given (conversion as ComfyUI's, NaN/inf, min/max, combo membership; ``None`` = not known yet), then
:meth:`CheckedNode.rules`. A message is reported by ComfyUI once per input it handed over.

Both checks first fill what ComfyUI leaves out: an absent optional widget takes its schema default,
an absent optional socket is ``None``; so :meth:`CheckedNode.rules` sees every declared input (at queue
time a socket, a linked widget and an absent required input are ``None``: not known yet).

At run time :meth:`CheckedNode.checked` refuses a missing required input or an unknown name as Python
would (``TypeError``), runs the same checks on the values now known (a linked widget is checked here
for the first time), refuses a required widget without a value, runs :meth:`CheckedNode.rules`, and
raises ``ValueError`` with the queue-time message. It returns every declared input, widgets converted
(:class:`._common.CheckedInputs`: ``v.steps`` or ``v["steps"]``).

Adopting it in a node file: subclass :class:`CheckedNode`, delete the ``validate_inputs`` (or keep only
its cross-input part, as :meth:`CheckedNode.rules`), and write ``execute(cls, **inputs)`` starting with
``v = cls.checked(inputs)``. A node with file-name combos returns ``{input: hint}`` from
:meth:`CheckedNode.combo_hints`. Tests call nodes as before (``comfy.run_node(id, **inputs)``,
``comfy.validate(id, **inputs)``); ``tests/comfy/test_input_checks.py`` fuzzes every widget input of a
``**kwargs`` validator.
"""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ._common import CheckedInputs, check_inputs, show_value

WIDGET_TYPES = ("INT", "FLOAT", "BOOLEAN", "STRING", "COMBO")
"""The io types whose values are typed into the node (widgets); every other input is a socket."""


def input_specs(node_cls) -> dict[str, Any]:
    """The node's declared inputs by id, in schema order."""
    return {spec.id: spec for spec in node_cls.define_schema().inputs}


def is_widget(spec) -> bool:
    return str(spec.get_io_type()) in WIDGET_TYPES


def with_defaults(node_cls, inputs: dict, names: tuple[str, ...] | None = None) -> dict:
    """``inputs`` with each widget of ``names`` (None: every widget) that is absent set to its schema
    default: for nodes whose direct callers (scripts, tests) may leave out a required widget, as before
    their checks came from the schema. ComfyUI's executor always passes every required widget."""
    specs = input_specs(node_cls)
    defaults = {k: s.default for k, s in specs.items() if is_widget(s) and (names is None or k in names)}
    return {**defaults, **inputs}


def _filled(node_cls, specs: dict, inputs: dict, *, run: bool) -> dict:
    """``inputs`` with every declared input: an absent optional widget takes its schema default, an
    absent optional socket None; an absent required input is None at queue time (ComfyUI reports it
    itself) and a ``TypeError`` at run time, as Python's own for a missing argument."""
    if unknown := set(inputs) - set(specs):
        raise TypeError(
            f"{node_cls.__name__} has no input {', '.join(repr(n) for n in sorted(unknown))}: "
            f"its schema declares {', '.join(specs)}"
        )
    values = {}
    for name, spec in specs.items():
        if name in inputs:
            values[name] = inputs[name]
        elif getattr(spec, "optional", False):
            values[name] = getattr(spec, "default", None) if is_widget(spec) else None
        elif run:
            raise TypeError(f"{node_cls.__name__} is missing its required input {name!r}")
        else:
            values[name] = None
    return values


def _check(node_cls, specs: dict, values: dict) -> CheckedInputs | str:
    widgets = {k: val for k, val in values.items() if is_widget(specs[k])}
    v = check_inputs(node_cls, combo_hints=node_cls.combo_hints(), **widgets)
    if isinstance(v, str):
        return v
    return CheckedInputs({k: (v[k] if k in v else values[k]) for k in specs})


def _links_and_nulls(specs: dict, inputs: dict, linked: dict) -> str | None:
    """With ComfyUI's ``input_types`` (the type of every linked input): a link of the wrong type (the
    check ComfyUI skips once ``validate_inputs`` names ``input_types``), or a JSON null for a COMBO
    (None that is not a link), refused by name; None when there is neither."""
    from comfy_execution.validation import validate_node_input

    for name, received in linked.items():
        declared = str(specs[name].get_io_type()) if name in specs else None
        if declared is not None and not validate_node_input(received, declared):
            return f"{name}: a {received} output is linked to this {declared} input; link a {declared}."
    nulls = [
        n
        for n, spec in specs.items()
        if str(spec.get_io_type()) == "COMBO" and n in inputs and inputs[n] is None and n not in linked
    ]
    if nulls:
        return (
            ". ".join(f"{n}=None (a JSON null) is not a choice; give {n} one of its options" for n in nulls)
            + "."
        )
    return None


def links_and_nulls(node_cls, inputs: dict, input_types: dict | None) -> str | None:
    """For a node that keeps its own keyword-listed ``validate_inputs``: name ``input_types`` in its
    signature and return this first, so a JSON null for a COMBO is refused by name and a linked input
    of the wrong type too (the check ComfyUI then leaves to the node). ``None`` (direct callers pass no
    ``input_types``) or a message."""
    if input_types is None:
        return None
    return _links_and_nulls(input_specs(node_cls), inputs, input_types)


def queue_check(node_cls, inputs: dict, linked: dict | None = None) -> bool | str:
    """The queue-time verdict on ``inputs`` as ComfyUI hands them to ``validate_inputs(**kwargs)``:
    True, or one message naming each bad input, its value and the fix; then the node's rules, which
    see every declared input (None: linked or missing, a socket always). ``linked`` is ComfyUI's
    ``input_types`` (absent for direct callers: then a None is taken as not known yet)."""
    specs = input_specs(node_cls)
    if linked is not None and (problem := _links_and_nulls(specs, inputs, linked)):
        return problem
    values = _filled(node_cls, specs, inputs, run=False)
    for name, spec in specs.items():
        if not is_widget(spec):
            values[name] = None  # a socket's value is an object made at run time
    v = _check(node_cls, specs, values)
    return v if isinstance(v, str) else node_cls.rules(v)


def run_check(node_cls, inputs: dict) -> CheckedInputs:
    """Every declared input of a run, checked and converted; raises ``ValueError`` with the
    queue-time message (see the module docstring)."""
    specs = input_specs(node_cls)
    values = _filled(node_cls, specs, inputs, run=True)
    v = _check(node_cls, specs, values)
    if isinstance(v, str):
        raise ValueError(v)
    empty = [  # a required widget without a value, or an optional one given as a JSON null
        k
        for k, s in specs.items()
        if is_widget(s) and v[k] is None and (not getattr(s, "optional", False) or k in inputs)
    ]
    if empty:
        raise ValueError(
            ". ".join(f"{k}={show_value(values[k])} is not a value; give {k} a value" for k in empty) + "."
        )
    verdict = node_cls.rules(v)
    if isinstance(verdict, str):
        raise ValueError(verdict)
    return v


class CheckedNode(io.ComfyNode):
    """A V3 node whose inputs are checked from its schema at queue time and at run time (module
    docstring). Subclasses define ``define_schema`` and ``execute(cls, **inputs)`` (starting with
    ``v = cls.checked(inputs)``), and optionally :meth:`rules` and :meth:`combo_hints`."""

    @classmethod
    def rules(cls, v: CheckedInputs) -> bool | str:
        """Cross-input rules on checked values (``None``: not known yet, at queue time): True or a
        message naming the inputs, their values and the fix. None by default."""
        return True

    @classmethod
    def combo_hints(cls) -> dict[str, str]:
        """Text added after a bad combo value's message, by input (e.g. where model files go)."""
        return {}

    @classmethod
    def validate_inputs(cls, input_types: dict | None = None, **inputs) -> bool | str:
        # naming input_types makes ComfyUI pass the types of the linked inputs (and skip its own
        # link type check, which queue_check then does): a None that is not linked is a JSON null
        return queue_check(cls, inputs, linked=input_types)

    @classmethod
    def checked(cls, inputs: dict) -> CheckedInputs:
        return run_check(cls, inputs)
