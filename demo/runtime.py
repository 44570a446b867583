"""ComfyUI as a library for the demo: booted in this process with the UltraRes pack loaded.

Mirrors what ComfyUI's ``main.py`` does before it starts its server: claim the name ``utils`` for
ComfyUI's package, set the CLI args (read once, when ``comfy.model_management`` is imported), then
``nodes.init_extra_nodes``. The pack is loaded from this checkout with ComfyUI's own
``load_custom_node``, so it works whether or not the ComfyUI at ``COMFYUI_PATH`` has it installed.

Nothing here knows an algorithm: :meth:`Runtime.run_node` calls a node class's ``execute`` (V3) or
``FUNCTION`` (V1) exactly as ComfyUI's executor does for one item.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]  # the pack (this checkout)
LOG = logging.getLogger("ultrares.demo")

_RUNTIME: Runtime | None = None
_LOCK = threading.Lock()


class ComfyNotFound(RuntimeError):
    pass


DEFAULT_COMFYUI_VERSION = "0.30.0"
TESTED_COMFYUI_VERSIONS = ("0.30.0", "0.3.75")  # make setup unpacks either into .comfyui/<version>/


def comfy_root() -> Path:
    """The ComfyUI to boot: ``COMFYUI_PATH``, else ``COMFYUI_VERSION`` (one ``make setup`` unpacked),
    else the path an earlier ``COMFYUI_PATH`` set-up recorded in ``.comfyui/path``, else the default
    version."""
    env = os.environ.get("COMFYUI_PATH")
    version = os.environ.get("COMFYUI_VERSION")
    recorded = ROOT / ".comfyui" / "path"
    if env:
        path = Path(env).expanduser().resolve()
    elif version:
        if version not in TESTED_COMFYUI_VERSIONS:
            raise ComfyNotFound(
                f"COMFYUI_VERSION={version} is not a tested version: use one of "
                f"{', '.join(TESTED_COMFYUI_VERSIONS)} or set COMFYUI_PATH=/path/to/ComfyUI."
            )
        path = ROOT / ".comfyui" / version / "ComfyUI"
    elif recorded.exists():
        path = Path(recorded.read_text().strip())
    else:
        path = ROOT / ".comfyui" / DEFAULT_COMFYUI_VERSION / "ComfyUI"
    if not (path / "nodes.py").exists() or not (path / "comfy").is_dir():
        raise ComfyNotFound(
            f"ComfyUI not found at {path.name if not env else path}: run `make setup` (it unpacks ComfyUI "
            "into .comfyui/<version>/) or set COMFYUI_PATH=/path/to/ComfyUI."
        )
    return path


def comfy_site(root: Path | None = None) -> Path | None:
    """The folder of a non-default version's own pinned packages (its frontend), which ``make setup``
    installs beside its tree and which goes in front of the venv's on ``sys.path``; None if absent."""
    site = (root or comfy_root()).parent / "site"
    return site if site.is_dir() else None


def put_comfy_on_path(root: Path) -> None:
    """ComfyUI's folder (and its version's own packages, if any) first on ``sys.path``."""
    for entry in (comfy_site(root), root):
        if entry is not None and str(entry) not in sys.path:
            sys.path.insert(0, str(entry))


def _has_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(
        torch.cuda.is_available()
        or (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    )


@dataclass
class Runtime:
    """The booted ComfyUI. ``nodes`` is ComfyUI's ``NODE_CLASS_MAPPINGS`` (core + UltraRes)."""

    comfy_path: Path
    nodes: dict[str, type]
    pack_nodes: list[str] = field(default_factory=list)
    device: str = "cpu"

    def has(self, node_id: str) -> bool:
        return node_id in self.nodes

    def node_class(self, node_id: str) -> type:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise KeyError(
                f"node {node_id!r} is not registered in ComfyUI (is the pack up to date?)"
            ) from None

    def input_names(self, node_id: str) -> list[str]:
        """The node's input names in declaration order (required, then optional)."""
        cls = self.node_class(node_id)
        types = cls.INPUT_TYPES()
        return [name for group in ("required", "optional") for name in types.get(group, {})]

    def input_spec(self, node_id: str, name: str) -> tuple:
        """(type, options) of one input, as /object_info shows it."""
        types = self.node_class(node_id).INPUT_TYPES()
        for group in ("required", "optional"):
            if name in types.get(group, {}):
                spec = types[group][name]
                return spec[0], (spec[1] if len(spec) > 1 else {})
        raise KeyError(f"{node_id} has no input {name!r}")

    def run_node(self, node_id: str, **inputs: Any) -> tuple:
        """Run one node as ComfyUI's executor would (for one item); returns its outputs tuple.
        Raises the node's own exception (ValueError with an actionable message, or
        ``comfy.model_management.InterruptProcessingException`` when cancelled)."""
        import comfy.model_management
        from comfy_api.latest import io

        comfy.model_management.throw_exception_if_processing_interrupted()
        cls = self.node_class(node_id)
        if isinstance(cls, type) and issubclass(cls, io.ComfyNode):
            result = cls.execute(**inputs)
        else:
            result = getattr(cls(), cls.FUNCTION)(**inputs)
        if inspect.isawaitable(result):
            result = asyncio.run(result)
        if isinstance(result, io.NodeOutput):
            result = result.result
        if isinstance(result, dict) and "result" in result:  # V1 node returning a ui dict
            result = result["result"]
        return tuple(result) if result is not None else ()

    def validate(self, node_id: str, **inputs: Any) -> bool | str:
        """The node's queue-time check (``validate_inputs``), given only the inputs it asks for, as
        ComfyUI's executor does; True when valid, else the node's message."""
        from comfy_api.latest import io

        cls = self.node_class(node_id)
        if isinstance(cls, type) and issubclass(
            cls, io.ComfyNode
        ):  # V3: the base class's placeholder is not a check
            from comfy_api.internal import first_real_override

            check = first_real_override(cls, "validate_inputs")
        else:
            check = getattr(cls, "VALIDATE_INPUTS", None)
        if check is None:
            return True
        params = inspect.signature(check).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            inputs = {k: v for k, v in inputs.items() if k in params}
        out = check(**inputs)
        if inspect.isawaitable(out):
            out = asyncio.run(out)
        return out

    def filenames(self, folder: str) -> list[str]:
        """Files in one of ComfyUI's model folders (``folder_paths.get_filename_list``); [] for an unknown folder."""
        import folder_paths

        if folder not in folder_paths.folder_names_and_paths:
            return []
        return list(folder_paths.get_filename_list(folder))

    def full_path(self, folder: str, name: str) -> str | None:
        import folder_paths

        return folder_paths.get_full_path(folder, name)


def configure_args(cpu: bool | None = None) -> Path:
    """Put ComfyUI on sys.path and set its CLI args; must run before comfy.model_management is imported."""
    root = comfy_root()
    put_comfy_on_path(root)
    # As main.py does: claim the name "utils" for ComfyUI's package before anything puts comfy/ on
    # sys.path and shadows it with comfy/utils.py.
    import utils.extra_config  # noqa: F401
    from comfy.cli_args import args

    if "comfy.model_management" in sys.modules:
        return root  # already booted by someone else in this process (e.g. the test session)
    use_cpu = (not _has_gpu()) if cpu is None else cpu
    args.cpu = use_cpu
    if use_cpu:
        # ComfyUI picks sub-quadratic attention on CPU, several times slower than torch's SDPA.
        args.use_pytorch_cross_attention = True
    return root


def boot(cpu: bool | None = None) -> Runtime:
    """Boot ComfyUI once in this process (idempotent) and return the :class:`Runtime`."""
    global _RUNTIME
    with _LOCK:
        if _RUNTIME is not None:
            return _RUNTIME
        root = configure_args(cpu)
        import nodes

        before = set(nodes.NODE_CLASS_MAPPINGS)
        level = logging.getLogger().level
        try:
            if "SamplerCustomAdvanced" not in nodes.NODE_CLASS_MAPPINGS:
                # ComfyUI logs a traceback for each optional core module whose dependency is absent
                # (torchaudio...): not the demo's business.
                # 0.30's nodes_replacements.py needs a running PromptServer (it registers node-id
                # replacements for the graph editor; no node of its own): irrelevant in-process.
                logging.getLogger().setLevel(logging.ERROR)
                failed = asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
                failed = [f for f in failed or [] if f != "nodes_replacements.py"]
                if failed:
                    LOG.info("ComfyUI core node modules not loaded: %s", ", ".join(failed))
            logging.getLogger().setLevel(logging.WARNING)
            if not any(
                n.startswith("UltraRes") and not n.startswith("UltraResTest")
                for n in nodes.NODE_CLASS_MAPPINGS
            ):
                ok = asyncio.run(nodes.load_custom_node(str(ROOT), module_parent="custom_nodes"))
                if not ok:
                    raise RuntimeError(
                        f"ComfyUI could not load the UltraRes pack from {ROOT}; see the log above."
                    )
        finally:
            logging.getLogger().setLevel(level)
        import comfy.model_management

        added = set(nodes.NODE_CLASS_MAPPINGS) - before
        pack = sorted(
            n
            for n in nodes.NODE_CLASS_MAPPINGS
            if n.startswith("UltraRes") and not n.startswith("UltraResTest")
        )
        LOG.info("ComfyUI %s booted (%d nodes added, %d UltraRes)", root, len(added), len(pack))
        device = str(comfy.model_management.get_torch_device())
        _RUNTIME = Runtime(comfy_path=root, nodes=nodes.NODE_CLASS_MAPPINGS, pack_nodes=pack, device=device)
        return _RUNTIME


class Cancelled(Exception):
    """The user pressed Cancel (ComfyUI's InterruptProcessingException, re-raised for the UI)."""


def progress_hook(report: Callable[[int, int], None]):
    """A hook for ``comfy.utils.set_progress_bar_global_hook``: forwards (value, total) and, like
    ComfyUI's server hook, raises when processing was interrupted."""
    import comfy.model_management

    def hook(value, total, preview=None, prompt_id=None, node_id=None):
        comfy.model_management.throw_exception_if_processing_interrupted()
        report(int(value), int(total))

    return hook
