"""Gradio pieces every tab uses: controls built from the nodes' input ranges, the model picker,
Run/Cancel buttons wired to one queue, and handler calls whose failures become messages."""

from __future__ import annotations

import inspect
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
    """A number box showing a node input's declared range (seeds: ComfyUI's range). The handler checks
    the value (``session.check``: a message naming ``label`` in the tab's status box); Gradio's own
    check is turned off for this box because it raises before the handler runs (a red "Error" badge
    and a traceback in the terminal for a value such as seed -1)."""
    box = gr.Number(
        value=rng.default if value is None else value,
        precision=0 if rng.kind == "INT" else None,
        minimum=rng.min,
        maximum=rng.max,
        step=rng.step or 1,
        label=label,
        **kwargs,
    )
    precision = box.precision
    box.preprocess = lambda payload: None if payload is None else box.round_to_precision(payload, precision)
    return box


def dropdown(choices: list[str], label: str, preferred=None, **kwargs) -> gr.Dropdown:
    """A dropdown preselecting ``preferred`` when offered, else the first choice."""
    value = preferred if preferred in choices else (choices[0] if choices else None)
    return gr.Dropdown(choices, value=value, label=label, **kwargs)


# ------------------------------------------------------------------------------------ running

CANCELLED = "**Cancelled.** The run stopped at its next step; nothing was changed."


def refused(message: str) -> str:
    """The status-box text of a refused run (the message says which control to change)."""
    return f"**Not run:** {message}"


def expected_time(tab_id: str, last: float | None = None, device: str | None = None) -> str:
    """The tab's time note: the measured seconds of its default run (demo/defaults.json) and the
    last run's."""
    from .. import defaults as D

    known = D.seconds(tab_id)
    text = (
        f"Expected time of the default run: **about {known:.0f} s** on a CPU (measured by "
        "`scripts/pick_demo_seeds.py` on a shared 2-core machine; seconds on a GPU)."
        if known is not None
        else "Expected time of the default run: not measured (it needs files the demo does not ship)."
    )
    if last is not None:
        text += f" Last run here: **{last:.0f} s** on {device or S.runtime().device}."
    return text


def time_note(tab_id: str) -> gr.Markdown:
    return gr.Markdown(expected_time(tab_id), elem_id=f"{tab_id}-time")


def stream(fn, progress, n_outputs: int, tab_id: str, *args, **kwargs):
    """Run a handler as a Gradio generator: each stage's outputs as soon as the handler yields them
    (a plain function yields once), then the tab's time note updated with this run's seconds.
    ``n_outputs`` counts the handler's outputs; the last is the tab's status box. A refusal
    (``ValueError``: the session's UserError and the nodes' own checks) or a Cancel leaves the images
    as they were and says so in the status box (a toast too), with no stack trace anywhere; only an
    unexpected failure is a red error, with its report in the terminal."""
    import time

    import comfy.model_management

    def report(stage: str, value: int, total: int) -> None:
        if total > 0:
            progress((value, total), desc=stage)

    keep = (gr.skip(),) * (n_outputs - 1)
    t0 = time.perf_counter()
    try:
        result = fn(*args, report=report, **kwargs)
        if inspect.isgenerator(result):
            last = None
            for last in result:
                yield (*last, gr.skip())
        else:
            last = result
    except comfy.model_management.InterruptProcessingException:
        gr.Info("Cancelled.")
        yield (*keep, CANCELLED, gr.skip())
        return
    except ValueError as exc:  # UserError and the nodes' own actionable ValueErrors
        gr.Warning(str(exc))
        yield (*keep, refused(str(exc)), gr.skip())
        return
    except Exception as exc:
        LOG.exception("demo: %s failed", getattr(fn, "__name__", fn))
        raise gr.Error(
            f"Unexpected error ({type(exc).__name__}: {exc}). The full report is in the terminal "
            "running the demo.",
            print_exception=False,
        ) from None
    yield (*last, expected_time(tab_id, time.perf_counter() - t0))  # the whole result, for API clients too


def call(fn, progress, *args, **kwargs):
    """Run a handler with progress reporting and return its outputs; failures become messages
    (the tests' and API clients' plain path; the tabs use :func:`stream`)."""
    import comfy.model_management

    def report(stage: str, value: int, total: int) -> None:
        if total > 0:
            progress((value, total), desc=stage)

    try:
        result = fn(*args, report=report, **kwargs)
        return S.last(result) if inspect.isgenerator(result) else result
    except comfy.model_management.InterruptProcessingException:
        raise gr.Error("Cancelled.", title="Cancelled", print_exception=False) from None
    except ValueError as exc:
        raise gr.Error(str(exc), print_exception=False) from None


def buttons(name: str):
    with gr.Row():
        run = gr.Button(name, variant="primary", elem_id=f"{name.lower().replace(' ', '-')}-button")
        stop = gr.Button("Cancel", variant="stop")
    return run, stop


def cancelled():
    """Cancel pressed: interrupt the run and say so in the status box."""
    S.cancel()
    gr.Info("Cancelled.")
    return CANCELLED


def wire(run, stop, fn, inputs, outputs, api_name, time_box=None):
    """Run -> ``fn`` on the one shared queue (endpoint /<api_name>); Cancel -> /cancel_<api_name>,
    which also writes "Cancelled" into the status box (the last of ``outputs``). ``time_box``: the
    tab's time note, updated after each run (``fn`` then yields one more output for it)."""
    event = run.click(
        fn, inputs, [*outputs, *([time_box] if time_box else [])], api_name=api_name, **CONCURRENCY
    )
    stop.click(cancelled, None, outputs[-1], cancels=[event], queue=False, api_name=f"cancel_{api_name}")
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


def model_controls(shared: Shared, preferred_label: str | None = None):
    """Model source, class (HDiT) and prompt (checkpoints) controls, wired together
    (``preferred_label``: the class preselected when the default model has it)."""
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
            value=preferred_label if preferred_label in labels else (labels[0] if labels else None),
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
