"""Gradio pieces every tab uses: controls built from the nodes' input ranges, the model picker,
Run/Cancel buttons wired to one queue, and handler calls whose failures become messages."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import gradio as gr

from .. import session as S

LOG = logging.getLogger("ultrares.demo")
CONCURRENCY = dict(concurrency_id="comfy", concurrency_limit=1)


@dataclass(frozen=True)
class Shared:
    """What app.build_app gathers once for every tab."""

    sources: list[str]  # model sources (session.sources())
    default: str | None  # the preselected source
    examples: list[str]  # example image paths


# ------------------------------------------------------------------------------------ controls


def slider(rng: S.InputRange, label: str, value=None, **kwargs) -> gr.Slider:
    """A slider over a node input's declared range (``value`` None: the node's default)."""
    step = rng.step or (1 if rng.kind == "INT" else 0.01)
    return gr.Slider(
        rng.min, rng.max, value=rng.default if value is None else value, step=step, label=label, **kwargs
    )


def number(rng: S.InputRange, label: str, value=None, **kwargs) -> gr.Number:
    """A number box limited to a node input's declared range (seeds: ComfyUI's range)."""
    return gr.Number(
        value=rng.default if value is None else value,
        precision=0 if rng.kind == "INT" else None,
        minimum=rng.min,
        maximum=rng.max,
        label=label,
        **kwargs,
    )


def dropdown(choices: list[str], label: str, preferred=None, **kwargs) -> gr.Dropdown:
    """A dropdown preselecting ``preferred`` when offered, else the first choice."""
    value = preferred if preferred in choices else (choices[0] if choices else None)
    return gr.Dropdown(choices, value=value, label=label, **kwargs)


# ------------------------------------------------------------------------------------ running


def call(fn, progress, *args, **kwargs):
    """Run a handler with progress reporting; every failure becomes a gr.Error (no stack trace)."""
    import comfy.model_management

    def report(stage: str, value: int, total: int) -> None:
        if total > 0:
            progress((value, total), desc=stage)

    try:
        return fn(*args, report=report, **kwargs)
    except comfy.model_management.InterruptProcessingException:
        raise gr.Error("Cancelled.", title="Cancelled", print_exception=False) from None
    except ValueError as exc:  # UserError and the nodes' own actionable ValueErrors
        raise gr.Error(str(exc), print_exception=False) from None
    except Exception as exc:
        LOG.exception("demo: %s failed", getattr(fn, "__name__", fn))
        raise gr.Error(
            f"Unexpected error ({type(exc).__name__}: {exc}). The full report is in the terminal "
            "running the demo.",
            print_exception=False,
        ) from None


def buttons(name: str):
    with gr.Row():
        run = gr.Button(name, variant="primary", elem_id=f"{name.lower().replace(' ', '-')}-button")
        stop = gr.Button("Cancel", variant="stop")
    return run, stop


def wire(run, stop, fn, inputs, outputs, api_name):
    """Run -> ``fn`` on the one shared queue (endpoint /<api_name>); Cancel -> /cancel_<api_name>."""
    event = run.click(fn, inputs, outputs, api_name=api_name, **CONCURRENCY)
    stop.click(S.cancel, None, None, cancels=[event], queue=False, api_name=f"cancel_{api_name}")
    return event


# ------------------------------------------------------------------------------------ the model picker


def source_changed(source):
    """Class choices for an HDiT source, a prompt box for a checkpoint."""
    if not source:
        return gr.update(choices=[], value=None, visible=True), gr.update(visible=False)
    if source.startswith(S.CKPT_PREFIX):
        return gr.update(visible=False), gr.update(visible=True)
    try:
        labels = S.load(source).labels
    except ValueError as exc:
        raise gr.Error(str(exc), print_exception=False) from None
    return gr.update(choices=labels, value=labels[0] if labels else None, visible=True), gr.update(
        visible=False
    )


def model_controls(shared: Shared):
    """Model source, class (HDiT) and prompt (checkpoints) controls, wired together."""
    default = shared.default
    labels = S.labels_of(default)
    with gr.Row():
        source = gr.Dropdown(
            shared.sources,
            value=default,
            label="Model",
            info="The embedded HDiT, or a checkpoint from ComfyUI/models/checkpoints.",
        )
        label = gr.Dropdown(
            labels,
            value=labels[0] if labels else None,
            label="Class",
            visible=not default or default.startswith(S.HDIT_PREFIX),
            info="What the class-conditional HDiT draws ('unconditional' = any).",
            allow_custom_value=True,
        )  # the choices follow the model; the handler checks
        prompt = gr.Textbox(
            label="Prompt",
            value="a photo of a cat",
            visible=bool(default) and default.startswith(S.CKPT_PREFIX),
        )
    source.change(source_changed, source, [label, prompt], queue=False, api_visibility="undocumented")
    return source, label, prompt
