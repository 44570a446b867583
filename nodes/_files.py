"""Safe file names inside one ComfyUI folder, for nodes that save or read the pack's own files.

A node takes a plain file NAME (no folders), never a path. :func:`check_name` refuses everything
that could leave the folder or misbehave on some OS (absolute paths, ``..``, separators, NUL and
control characters, Windows reserved device names, empty names, names with a trailing dot or space)
and adds the extension when it is missing. :func:`resolve` then joins the name to the folder and
checks, after resolving symlinks, that the result is still inside it.

Files the pack writes carry a marker in their safetensors header (:data:`MARKER_KEY`); :func:`is_ours`
reads it, so a node can refuse to overwrite a file it did not create unless the user asks for it.

Messages name files relative to the ComfyUI base folder (``output/ultrares/x.safetensors``), never
as absolute server paths.
"""

from __future__ import annotations

import json
import os
import re
import struct

import folder_paths

SUBFOLDER = "ultrares"
MARKER_KEY = "ultrares_file"
MAX_NAME = 128

_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{p}{i}" for p in ("COM", "LPT") for i in list("123456789") + ["¹", "²", "³"]
}
_BAD_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')
_FOLDERS = {"output": folder_paths.get_output_directory, "input": folder_paths.get_input_directory}


def folder(kind: str = "output") -> str:
    """Absolute path of ``<kind>/ultrares`` (``kind`` is ``"output"`` or ``"input"``); not created here."""
    return os.path.join(_FOLDERS[kind](), SUBFOLDER)


def shown(kind: str, name: str) -> str:
    """How messages name a file: relative to the ComfyUI folder, e.g. ``output/ultrares/x.safetensors``."""
    return f"{kind}/{SUBFOLDER}/{name}"


def check_name(input_name: str, value, ext: str = ".safetensors") -> str:
    """The file name ``value`` with ``ext`` appended if missing, or ``ValueError`` naming ``input_name``.

    Accepts only a plain name: letters, digits, spaces, ``-``, ``_``, ``.`` and other printable
    characters except separators and ``<>:"|?*``."""
    fix = f"Give a plain file name such as 'my_reference{ext}' (no folders, no '..')."
    if not isinstance(value, str):
        raise ValueError(f"{input_name} must be a file name (text); got {type(value).__name__}. {fix}")
    name = value.strip()
    if not name:
        raise ValueError(f"{input_name} is empty. {fix}")
    printable = ascii(value) if len(value) <= 80 else ascii(value[:80]) + "..."
    if "\x00" in name:
        raise ValueError(f"{input_name}={printable} contains a NUL character. {fix}")
    if os.path.isabs(name) or name.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", name):
        raise ValueError(
            f"{input_name}={printable} is an absolute path; files live in the pack's folder. {fix}"
        )
    if ".." in name.replace("\\", "/").split("/") or name in (".", ".."):
        raise ValueError(f"{input_name}={printable} contains '..'. {fix}")
    if "/" in name or "\\" in name:
        raise ValueError(f"{input_name}={printable} contains a folder separator. {fix}")
    if _BAD_CHARS.search(name):
        raise ValueError(f"{input_name}={printable} contains a character not allowed in file names. {fix}")
    if not name.lower().endswith(ext):
        name += ext
    stem = name.split(".")[0].rstrip(" ").upper()
    if stem in _WINDOWS_RESERVED:
        raise ValueError(f"{input_name}={printable} is a reserved device name on Windows. {fix}")
    if name.startswith(".") or value.rstrip() != value or name[: -len(ext)].endswith((".", " ")):
        raise ValueError(f"{input_name}={printable} starts with a dot or ends with a dot or space. {fix}")
    if len(name) > MAX_NAME:
        raise ValueError(f"{input_name} is {len(name)} characters long; the limit is {MAX_NAME}. {fix}")
    return name


def resolve(name: str, kind: str = "output") -> str:
    """Absolute path of the checked ``name`` inside ``<kind>/ultrares``; ``ValueError`` when it would
    leave the folder (e.g. through a symlink)."""
    base = os.path.realpath(folder(kind))
    path = os.path.realpath(os.path.join(base, name))
    if os.path.dirname(path) != base:
        raise ValueError(
            f"{shown(kind, name)} resolves outside {kind}/{SUBFOLDER} (a link?); pick another name."
        )
    return path


def list_files(kind: str = "output", ext: str = ".safetensors") -> list[str]:
    """Sorted plain names of the ``ext`` files directly inside ``<kind>/ultrares`` (no subfolders)."""
    base = folder(kind)
    if not os.path.isdir(base):
        return []
    out = []
    for entry in os.listdir(base):
        if entry.lower().endswith(ext) and os.path.isfile(os.path.join(base, entry)):
            try:
                if check_name("file", entry, ext) == entry:
                    out.append(entry)
            except ValueError:
                continue
    return sorted(out)


def safetensors_metadata(path: str) -> dict:
    """The ``__metadata__`` of a safetensors file's header ({} when absent or unreadable); reads the
    header only."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                return {}
            (n,) = struct.unpack("<Q", raw)
            if n > 100_000_000:
                return {}
            header = json.loads(f.read(n))
        meta = header.get("__metadata__") if isinstance(header, dict) else None
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError, UnicodeDecodeError):
        return {}


def is_ours(path: str) -> bool:
    """Whether the pack wrote this file (its safetensors header carries :data:`MARKER_KEY`)."""
    return MARKER_KEY in safetensors_metadata(path)


def check_writable(input_name: str, name: str, overwrite: bool, kind: str = "output") -> str:
    """Path to write the checked ``name`` to; ``ValueError`` when a file not made by the pack is there
    and ``overwrite`` is false (or the name is taken by a folder)."""
    path = resolve(name, kind)
    if os.path.isdir(path):
        raise ValueError(f"{input_name}: {shown(kind, name)} is a folder; pick another name.")
    if os.path.exists(path) and not overwrite and not is_ours(path):
        raise ValueError(
            f"{input_name}: {shown(kind, name)} already exists and was not written by UltraRes; pick "
            "another name or set overwrite to true to replace it."
        )
    return path


def makedirs(kind: str = "output") -> str:
    """Create ``<kind>/ultrares`` (only that one folder, inside an existing ComfyUI folder)."""
    base = folder(kind)
    os.makedirs(base, exist_ok=True)
    return base
