"""Model folders the pack adds to ComfyUI's ``folder_paths`` (``models/<name>/``)."""

from __future__ import annotations

import os

import folder_paths

# name -> accepted file extensions. Each becomes ComfyUI/models/<name>/ (and is configurable
# through extra_model_paths.yaml like any core folder).
MODEL_FOLDERS: dict[str, set[str]] = {
    "hdit": {".safetensors", ".pth", ".pt", ".ckpt", ".json"},
    "linfusion": {".safetensors", ".json"},
    "digit": {".npy", ".safetensors", ".pth", ".pt"},
    "clear": {".safetensors"},
}

EMBEDDED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")


def register_model_folders() -> None:
    """Register each folder once; the pack's own ``models/<name>/`` (embedded defaults) is
    added as a second search path so the shipped weights appear in every loader's list."""
    for name, exts in MODEL_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, name)
        folder_paths.add_model_folder_path(name, default)
        embedded = os.path.join(EMBEDDED_DIR, name)
        if os.path.isdir(embedded):
            folder_paths.add_model_folder_path(name, embedded)
        paths, old_exts = folder_paths.folder_names_and_paths[name]
        folder_paths.folder_names_and_paths[name] = (paths, set(old_exts) | exts)


def model_files(folder: str, endings: tuple[str, ...]) -> list[str]:
    """The choices of a loader's file combo: the files of ``models/<folder>`` (every search path,
    subfolders as ``sub/name``) whose names end in one of ``endings``, sorted."""
    return sorted(f for f in folder_paths.get_filename_list(folder) if f.endswith(endings))


def model_file(folder: str, input_name: str, name: str) -> str:
    """The full path of ``name``, picked in the file combo ``input_name`` of ``models/<folder>``; a
    ValueError naming the input and the file when it is not there (e.g. removed since the list was read)."""
    path = folder_paths.get_full_path(folder, name) if isinstance(name, str) else None
    if path is None:
        raise ValueError(f"{input_name} '{name}' is not in models/{folder}; put the file there and refresh.")
    return path
