"""Session fixtures: a real ComfyUI in-process (``comfy``), tiny real-architecture models, and a real
ComfyUI server subprocess (``comfy_server``). See tests/HARNESS.md."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import boot as _boot  # noqa: E402


def pytest_configure(config):
    # ComfyUI reads its CLI args when comfy.model_management is first imported: set them first.
    _boot.configure_args()


@pytest.fixture()
def one_thread():
    """One torch thread for the test: on tiny tensors OpenMP barriers cost more than a second thread
    gains, above all on a shared 2-core machine. Files opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def lf_dir(comfy, tmp_path):
    """A temporary folder added to ComfyUI's "linfusion" model paths for one test."""
    import folder_paths

    d = tmp_path / "linfusion"
    d.mkdir()
    folder_paths.add_model_folder_path("linfusion", str(d))
    yield d
    folder_paths.folder_names_and_paths["linfusion"][0].remove(str(d))


@pytest.fixture(scope="session")
def comfy():
    """ComfyUI booted in this process (CPU) with UltraRes + the test pack: a harness.boot.Runtime."""
    return _boot.boot()


@pytest.fixture(scope="session")
def tiny_sd15(comfy):
    """(MODEL, CLIP, VAE): SD1.5 block layout, model_channels 32, context 64, seeded weights. Shared:
    clone() before patching."""
    return _boot.tiny("sd15")


@pytest.fixture(scope="session")
def tiny_sdxl(comfy):
    """(MODEL, CLIP, VAE): SDXL block layout, model_channels 64, reduced depths, seeded weights."""
    return _boot.tiny("sdxl")


@pytest.fixture(scope="session")
def tiny_sd3(comfy):
    """(MODEL, CLIP, VAE): SD3 MMDiT (depth 2, hidden 128, 16-channel latent, flow matching, shift 3);
    text encoder = the tiny SDXL CLIP (context 128, pooled 64)."""
    return _boot.tiny("sd3")


@pytest.fixture(scope="session")
def tiny_flux(comfy):
    """(MODEL, CLIP, VAE): Flux (guidance-embedded, hidden 64, one double + one single block, 16-channel
    latent); text encoder = the tiny SD1.5 CLIP-L (context and pooled width 64). Sample at cfg 1 with
    FluxGuidance as real Flux-dev graphs do."""
    return _boot.tiny("flux")


@pytest.fixture(scope="session")
def tiny_sd15_inpaint(comfy):
    """(MODEL, CLIP, VAE): the SD1.5 layout with a 9-channel input (noise + mask + masked image)."""
    return _boot.tiny("sd15_inpaint")


@pytest.fixture(scope="session")
def tiny_family(comfy):
    """``tiny_family(name, seed=0) -> (MODEL, CLIP | None, VAE | None)``: any family of the test pack's
    ``tiny_models.FAMILIES`` (the 2026 families too: "flux2", "qwen_image", "zimage", "chroma",
    "chroma_radiance", "hidream", "hunyuan_image21", "flux_fill"), built through the running
    ComfyUI's own detection; cached, so clone() before patching. Families without a tiny text
    encoder give CLIP None: use ``tiny_models.family_conditioning``. ``tiny_family.tm`` is the module
    (FAMILY_INFO, latent_shape, family_conditioning, build_flux_controlnet, build_control_lora...)."""

    tm = _boot.tiny_models_module()

    def build(name: str, seed: int = 0):
        if name not in tm.FAMILIES:
            pytest.skip(f"ComfyUI {comfy.comfy_path.parent.name} has no {name} family")
        return tm.build(name, seed)

    build.tm = tm
    return build


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """A real `main.py --cpu` subprocess with UltraRes and the test pack installed (harness.server)."""
    from harness.server import ComfyServer

    server = ComfyServer.start(tmp_path_factory.mktemp("comfy-server"))
    try:
        yield server
    finally:
        server.stop()
