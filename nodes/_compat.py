"""What differs between the ComfyUI versions the pack runs on (0.3.75 to 0.30.x), in one place.

- :func:`schema_extras`: the V3 ``io.Schema`` keywords newer ComfyUI knows (``search_aliases``,
  ``essentials_category``), passed only where the running ``io.Schema`` has the field, so every
  ``define_schema`` reads ``io.Schema(..., **schema_extras(search_aliases=[...]))`` on both versions.
- :func:`input_extras`: the same for an input's keywords (0.30: ``advanced``, which folds the widget
  into the node's "advanced" section), for ``io.Int.Input(..., **input_extras(advanced=True))``.
- MultiGPU (ComfyUI 0.30: ``comfy/multigpu.py``, node ``MultiGPU_WorkUnits``): :func:`multigpu_in_use`
  tells whether a MODEL carries per-device clones; :func:`refuse_multigpu` refuses such a model with a
  message that says what to do; :func:`guard_multigpu` makes a ``MultiGPU_WorkUnits`` placed *after*
  the node refuse the same way (ComfyUI calls the ``on_match_multigpu_clones`` callbacks of a model
  when it makes its per-device clones). See ``docs/multigpu.md`` for which nodes work and why.
"""

from __future__ import annotations

import dataclasses
import inspect
from functools import cache

MULTIGPU_KEY = "multigpu"
"""``ModelPatcher.additional_models`` key of the per-device clones (``comfy.multigpu``)."""

GUARD_KEY = "ultrares_multigpu_guard"


@cache
def schema_fields() -> frozenset[str]:
    """The field names of the running ComfyUI's ``io.Schema`` dataclass."""
    from comfy_api.latest import io

    return frozenset(f.name for f in dataclasses.fields(io.Schema))


def schema_extras(
    search_aliases: list[str] | tuple[str, ...] | None = None, essentials_category: str | None = None
) -> dict:
    """The ``io.Schema`` keyword arguments among these that the running ComfyUI supports (0.30 has both;
    0.3.75 neither, so its schemas stay as they were). Empty or None values are left out."""
    wanted = {"search_aliases": list(search_aliases or []), "essentials_category": essentials_category}
    fields = schema_fields()
    return {k: v for k, v in wanted.items() if v and k in fields}


@cache
def input_keywords() -> frozenset[str]:
    """The keyword arguments the running ComfyUI's V3 ``io.Input`` constructor takes."""
    from comfy_api.latest import io

    return frozenset(inspect.signature(io.Input.__init__).parameters)


def input_extras(advanced: bool | None = None) -> dict:
    """The V3 input keyword arguments among these that the running ComfyUI supports (0.30: ``advanced``;
    0.3.75: none). None values are left out."""
    wanted = {"advanced": advanced}
    return {k: v for k, v in wanted.items() if v is not None and k in input_keywords()}


# --------------------------------------------------------------------------------------------- MultiGPU


def multigpu_available() -> bool:
    """True when the running ComfyUI has the MultiGPU work-unit machinery (0.30 and newer)."""
    try:
        import comfy.multigpu  # noqa: F401
    except ImportError:
        return False
    return True


def multigpu_in_use(model) -> bool:
    """True when ``model`` (a ModelPatcher) carries ``MultiGPU_WorkUnits``' per-device clones, is one of
    them, or its model options already hold them (the state inside a sampling run)."""
    getter = getattr(model, "get_additional_models_with_key", None)
    if getter is not None and getter(MULTIGPU_KEY):
        return True
    if getattr(model, "is_multigpu_base_clone", False):
        return True
    return "multigpu_clones" in (getattr(model, "model_options", None) or {})


def multigpu_message(node_name: str, reason: str) -> str:
    return (
        f"{node_name} does not work with MultiGPU CFG Split (MultiGPU_WorkUnits): {reason}. Remove the "
        f"MultiGPU CFG Split node from this model's path, or apply it only to models that do not go "
        f"through {node_name}."
    )


def refuse_multigpu(model, node_name: str, reason: str) -> None:
    """Raise ``ValueError`` naming the node, the reason and the fix when ``model`` carries MultiGPU
    per-device clones (a ``MultiGPU_WorkUnits`` before the node)."""
    if multigpu_in_use(model):
        raise ValueError(multigpu_message(node_name, reason))


def guard_multigpu(model, node_name: str, reason: str) -> None:
    """Make a ``MultiGPU_WorkUnits`` applied to ``model`` (or to a clone of it) later refuse with the
    same message, when it makes its per-device clones. A no-op on ComfyUI without MultiGPU."""
    import comfy.patcher_extension

    kind = getattr(comfy.patcher_extension.CallbacksMP, "ON_MATCH_MULTIGPU_CLONES", None)
    if kind is None:
        return

    def refuse(_model, _clone):
        raise ValueError(multigpu_message(node_name, reason))

    model.remove_callbacks_with_key(kind, GUARD_KEY)
    model.add_callback_with_key(kind, GUARD_KEY, refuse)
