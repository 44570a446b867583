"""Shared by the demo and browser tests: a small random-weight HDiT for the demo's model list, the
demo app launched on a free port, and headless Debian Chromium launched through Playwright."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# Browser tests photograph the demo and the graph editor. They write into the README's docs/images
# only when asked (ULTRARES_UPDATE_SCREENSHOTS=1), so a test run never edits tracked files.
DOCS_IMAGES = (
    ROOT / "docs" / "images"
    if os.environ.get("ULTRARES_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "ultrares-screenshots"
)
CHROMIUM = os.environ.get("ULTRARES_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
]
TEST_HDIT = "demo-test-hdit.safetensors"
TEST_CLASSES = ["circles", "squares", "stars"]


def write_test_hdit(folder: Path, seed: int = 0) -> Path:
    """A 64x64 class-conditional HDiT (3 classes, ~0.1 M parameters) with seeded random weights, in the
    inference format the loader reads (config with class names in the metadata)."""
    from ultrares.kernels import hdit_format

    config = {
        "model": {
            "type": "image_transformer_v2",
            "input_channels": 3,
            "input_size": [64, 64],
            "patch_size": [4, 4],
            "depths": [1, 1],
            "widths": [32, 64],
            "mapping_width": 32,
            "mapping_depth": 1,
            "self_attns": [
                {"type": "neighborhood", "d_head": 16, "kernel_size": 3},
                {"type": "global", "d_head": 16},
            ],
            "sigma_data": 0.5,
            "sigma_min": 0.01,
            "sigma_max": 80.0,
        },
        "dataset": {"num_classes": len(TEST_CLASSES), "class_names": TEST_CLASSES},
    }
    cfg = hdit_format.parse_config(config)
    model = hdit_format.build_model(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # the zero-initialised output layers too, so the model does something
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TEST_HDIT
    hdit_format.save_inference(model, cfg, str(path), dtype=torch.float32)
    return path


@contextlib.contextmanager
def hdit_registered(tmp: Path):
    """The random HDiT in a temporary folder added to ComfyUI's ``hdit`` search paths (removed after)."""
    import folder_paths

    folder = tmp / "hdit"
    write_test_hdit(folder)
    folder_paths.add_model_folder_path("hdit", str(folder))
    try:
        yield TEST_HDIT
    finally:
        paths = folder_paths.folder_names_and_paths["hdit"][0]
        if str(folder) in paths:
            paths.remove(str(folder))
        # ComfyUI's file-list cache stats every folder it listed: forget this one before deleting it
        folder_paths.filename_list_cache.pop("hdit", None)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def launched_demo():
    """build_app() launched on a free loopback port (in this process); yields (demo, url)."""
    from harness.server import free_port
    from ultrares.demo import app

    demo = app.build_app()
    port = free_port()
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, show_error=True
    )
    try:
        yield demo, f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@contextlib.contextmanager
def chromium():
    """Headless Debian Chromium through Playwright (its own fresh profile); yields the Browser."""
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        raise RuntimeError(
            f"{CHROMIUM} not found: install Debian's chromium (`SETUP_BROWSER=1 bash scripts/setup.sh`) "
            "or set ULTRARES_CHROMIUM to a Chromium binary."
        )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
