"""ComfyUI as a library, shared by the demo, the tests, the scripts and the benches.

Which ComfyUI tree (:func:`comfy_root`), its version's own packages first on ``sys.path``
(:func:`put_comfy_on_path`), its CLI args (:func:`configure_args`), and :func:`boot`: ComfyUI started
in this process as its ``main.py`` does before it starts its server (claim the name ``utils`` for
ComfyUI's package, set the CLI args, which are read once when ``comfy.model_management`` is imported,
load the core node modules), with the UltraRes pack of this checkout and any other custom node packs
loaded by ComfyUI's own ``load_custom_node`` from their folders, so it works whether or not that
ComfyUI has them installed.

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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]  # this checkout: the UltraRes pack
LOG = logging.getLogger("ultrares.devtools")

DEFAULT_COMFYUI_VERSION = "0.30.0"
TESTED_COMFYUI_VERSIONS = ("0.30.0", "0.3.75")  # make setup unpacks either into .comfyui/<version>/

_RUNTIME: Runtime | None = None
_LOCK = threading.Lock()


class ComfyNotFound(RuntimeError):
    pass


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


def comfy_version(root: Path | None = None) -> str:
    """The version the tree at ``root`` (default: :func:`comfy_root`) says it is (``comfyui_version.py``)."""
    import re

    text = ((root or comfy_root()) / "comfyui_version.py").read_text(encoding="utf-8")
    return re.search(r"__version__\s*=\s*['\"]([^'\"]+)", text).group(1)


def _has_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(
        torch.cuda.is_available()
        or (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    )


def configure_args(cpu: bool | None = None) -> Path:
    """Put ComfyUI on sys.path and set its CLI args (``cpu``: None = the CPU when there is no GPU); must
    run before comfy.model_management is imported, else it changes nothing. Returns the ComfyUI root."""
    root = comfy_root()
    put_comfy_on_path(root)
    # As main.py does: claim the name "utils" for ComfyUI's package before anything puts comfy/ on
    # sys.path and shadows it with comfy/utils.py (app.frontend_management needs it).
    import utils.extra_config  # noqa: F401
    from comfy.cli_args import args

    if "comfy.model_management" in sys.modules:
        return root  # the args were read already (an earlier configure_args or boot in this process)
    use_cpu = (not _has_gpu()) if cpu is None else cpu
    args.cpu = use_cpu
    if use_cpu:
        # ComfyUI picks sub-quadratic attention on CPU, several times slower than torch's SDPA.
        args.use_pytorch_cross_attention = True
    return root


@dataclass
class Runtime:
    """The booted ComfyUI. ``nodes`` is ComfyUI's ``NODE_CLASS_MAPPINGS`` (core and every loaded pack);
    ``pack_nodes`` the ids the UltraRes pack of this checkout registered."""

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

    def object_info(self, node_id: str) -> dict:
        """What the server would return at /object_info/<node_id>."""
        return node_info(self.node_class(node_id), node_id)

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


def node_info(cls: type, node_id: str) -> dict:
    """Same shape as server.py's node_info (V3 via GET_NODE_INFO_V1, V1 from the class attributes)."""
    from comfy_api.internal import _ComfyNodeInternal

    if issubclass(cls, _ComfyNodeInternal):
        return cls.GET_NODE_INFO_V1()
    import nodes

    types = cls.INPUT_TYPES()
    return {
        "input": types,
        "input_order": {key: list(value.keys()) for key, value in types.items()},
        "output": cls.RETURN_TYPES,
        "output_is_list": getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES)),
        "output_name": getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES),
        "name": node_id,
        "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(node_id, node_id),
        "description": getattr(cls, "DESCRIPTION", ""),
        "category": getattr(cls, "CATEGORY", "sd"),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
    }


# Core node modules that cannot load in-process, with the reason that does not matter here.
SERVER_ONLY_CORE_MODULES = {
    # 0.30+: registers node-id replacements (old id -> new id, for the graph editor's missing-node
    # dialog) with PromptServer.instance.node_replace_manager. Only a running server has that
    # instance (the server tests' main.py subprocess loads it); it defines no node, and building a
    # PromptServer in-process would create user folders and a web app for nothing.
    "nodes_replacements.py": "needs the running PromptServer (frontend node-replacement registry)",
}


async def _init_core_nodes(nodes) -> None:
    """ComfyUI's ``init_extra_nodes`` without the API nodes and custom nodes: the public APIs and the
    core extra node modules; the modules that need a running server fail quietly, any other import
    failure is reported."""
    await nodes.init_public_apis()
    root = logging.getLogger()
    level = root.level
    # ComfyUI logs a traceback for each optional core module whose dependency is absent (torchaudio...)
    root.setLevel(logging.ERROR)
    try:
        failed = await nodes.init_builtin_extra_nodes()
    finally:
        root.setLevel(level)
    unexpected = [f for f in failed or [] if f not in SERVER_ONLY_CORE_MODULES]
    if unexpected:
        LOG.warning("ComfyUI core node modules that did not import: %s", ", ".join(unexpected))


def _load_pack(nodes, path: Path) -> list[str]:
    """Load one custom node pack from its folder (once); returns the node ids it added."""
    if any(Path(d).resolve() == path.resolve() for d in nodes.LOADED_MODULE_DIRS.values()):
        return []
    before = set(nodes.NODE_CLASS_MAPPINGS)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)  # its INFO lines (web folder registered...) are not the tools' business
    try:
        ok = asyncio.run(nodes.load_custom_node(str(path), module_parent="custom_nodes"))
    finally:
        root.setLevel(level)
    if not ok:
        raise RuntimeError(f"ComfyUI could not load the custom node pack {path}; see the log above.")
    return sorted(set(nodes.NODE_CLASS_MAPPINGS) - before)


def boot(cpu: bool | None = None, packs: Iterable[Path] = ()) -> Runtime:
    """Boot ComfyUI once in this process with the UltraRes pack of this checkout and return the
    :class:`Runtime`; ``packs``: more custom node pack folders to load (each once, also into an already
    booted ComfyUI). ``cpu`` as in :func:`configure_args` (only the first boot of a process sets it)."""
    global _RUNTIME
    with _LOCK:
        if _RUNTIME is None:
            root = configure_args(cpu)
            import comfy.model_management

            import nodes

            asyncio.run(_init_core_nodes(nodes))
            pack = _load_pack(nodes, ROOT)
            device = str(comfy.model_management.get_torch_device())
            LOG.info("ComfyUI %s booted (%d UltraRes nodes)", root, len(pack))
            _RUNTIME = Runtime(root, nodes.NODE_CLASS_MAPPINGS, pack_nodes=pack, device=device)
        for path in packs:
            _load_pack(sys.modules["nodes"], Path(path))
        return _RUNTIME
