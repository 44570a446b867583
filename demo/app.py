"""UltraRes demo: a Gradio app over the pack's ComfyUI nodes, on the embedded model.

    python -m ultrares.demo.app [--host 127.0.0.1] [--port 7860] [--share] [--cpu]

ComfyUI is booted in this process as a library (:mod:`.runtime`); what the tabs share (model
sources, conversions, the nodes' ranges) is :mod:`.session`; each tab is one module of
:mod:`.tabs`. One job runs at a time (a queue of 20); Cancel interrupts sampling.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from . import session as S  # noqa: E402
from . import tabs  # noqa: E402
from .tabs._ui import Shared  # noqa: E402

LOG = logging.getLogger("ultrares.demo")
EXAMPLES = Path(__file__).resolve().parent / "examples"


def example_images() -> list[str]:
    return sorted(str(p) for p in EXAMPLES.glob("*.png"))


def build_app() -> gr.Blocks:
    """The page: a header, one tab per module of :data:`ultrares.demo.tabs.TABS`, a footer."""
    runtime = S.runtime()  # boot ComfyUI (and load the pack) before building the lists
    sources = S.sources()
    shared = Shared(sources=sources, default=S.default_source(), examples=example_images())
    missing = None if sources else S.missing_model_message()

    with gr.Blocks(title="UltraRes demo") as demo:
        gr.Markdown(
            "# UltraRes\nHigh-resolution synthesis techniques as ComfyUI nodes, run here with ComfyUI loaded as "
            "a library. Every tab calls the pack's node classes. One job runs at a time; **Cancel** stops it."
        )
        if S.EMBEDDED_HDIT not in S.hdit_files():
            gr.Markdown(
                f"**The embedded model `models/hdit/{S.EMBEDDED_HDIT}` is missing.** Run `make embedded-models` "
                "(or `make setup`) to build it."
                + (f" {missing}" if missing else " Other models found are listed in each tab."),
                elem_id="model-missing",
            )
        for tab in tabs.modules():
            with gr.Tab(tab.TITLE, id=tab.ID):
                tab.build(shared)
        gr.Markdown(
            f"<small>ComfyUI: `{runtime.comfy_path}` · device: `{runtime.device}` · "
            f"{len(runtime.pack_nodes)} UltraRes nodes</small>"
        )

    demo.queue(default_concurrency_limit=1, max_size=20)
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ultrares.demo.app", description="UltraRes Gradio demo.")
    p.add_argument("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0 for every interface).")
    p.add_argument("--port", type=int, default=7860, help="Port (default 7860).")
    p.add_argument(
        "--share", action="store_true", help="Also open a public gradio.live link (off by default)."
    )
    p.add_argument("--cpu", action="store_true", help="Run on the CPU even when a GPU is present.")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    print("UltraRes demo: starting ComfyUI (about 20 s)...", flush=True)
    from . import runtime

    try:
        runtime.boot(cpu=True if args.cpu else None)
    except runtime.ComfyNotFound as exc:
        sys.exit(f"UltraRes demo: {exc}")
    demo = build_app()
    _, local_url, share_url = demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        show_error=True,
        prevent_thread_lock=True,
        quiet=True,
    )
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(
        f"UltraRes demo running at http://{host}:{args.port}/"
        + (f" (public: {share_url})" if share_url else "")
        + "  (Ctrl+C to stop)",
        flush=True,
    )
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()


if __name__ == "__main__":
    main()
