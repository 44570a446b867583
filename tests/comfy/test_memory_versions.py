"""The memory figures ComfyUI plans with, for UltraRes models, on both tested ComfyUI versions.

ComfyUI 0.30 changed how it reaches some of them: ``BaseModel.memory_required`` takes its dtype from
``get_dtype_inference()`` (0.3.75: ``manual_cast_dtype or get_dtype()`` inline), ``ModelPatcher.clone``
grew ``disable_dynamic/model_override/force_deepcopy`` (the size is still passed on), and dynamic VRAM
(``ModelPatcherDynamic``, comfy-aimdo) replaces the patcher class on NVIDIA, never with ``--cpu``. These
tests call the functions ComfyUI itself calls (``memory_required``, ``model_size``, ``LoadedModel
.model_memory``, ``loaded_size`` after ``load_models_gpu``, ``sampler_helpers.estimate_memory``) and
check the pack's figures against them on whichever version runs (``COMFYUI_VERSION=0.3.75`` for the
floor). What needs a GPU (the flash/xformers branch with a real backend, dynamic VRAM's ``loaded_size``
with the aimdo VBAR, LinFusion layers streamed by the dynamic loader) is in docs/multigpu.md's GPU list.
Also here: :func:`nodes._compat.schema_extras` against the running ``io.Schema``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import uuid

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def node_module(comfy, node_id):
    """The nodes module ComfyUI loaded for ``node_id`` (class identities as in its outputs)."""
    return sys.modules[comfy.node_class(node_id).__module__]


def comfy_version() -> tuple[int, ...]:
    import comfyui_version

    return tuple(int(p) for p in comfyui_version.__version__.split(".")[:3])


# ------------------------------------------------------------------------------ schema fields


def test_schema_extras_follow_the_running_schema(comfy):
    from comfy_api.latest import io

    compat = sys.modules[node_module(comfy, "UltraResRelayUpscale").__package__ + "._compat"]
    fields = {f.name for f in dataclasses.fields(io.Schema)}
    extras = compat.schema_extras(search_aliases=["upscale", "4k"], essentials_category="Image Tools")
    info = comfy.object_info("UltraResRelayUpscale")
    if "search_aliases" in fields:  # 0.30
        assert comfy_version() >= (0, 30, 0)
        assert extras == {"search_aliases": ["upscale", "4k"], "essentials_category": "Image Tools"}
        assert {"relay", "upscale", "4k"} <= set(info["search_aliases"])
    else:  # 0.3.75: the schemas are what they were
        assert extras == {}
        assert "search_aliases" not in info
    assert compat.schema_extras() == {}
    adv = compat.input_extras(advanced=True)
    assert adv == ({"advanced": True} if "search_aliases" in fields else {})  # both arrived in 0.30's V3 API
    assert io.Int.Input("x", **adv).as_dict().get("advanced") == adv.get("advanced")
    assert compat.input_extras() == {}
    # every UltraRes node has aliases on 0.30 (those of the tiled and CLEAR files are their owners' to add)
    if "search_aliases" in fields:
        own = [
            n
            for n in comfy.pack_nodes
            if node_module(comfy, n).__name__.rsplit(".", 1)[-1] not in ("tiled_diffusion", "clear")
        ]
        assert len(own) >= 18
        missing = [n for n in own if not comfy.object_info(n).get("search_aliases")]
        assert not missing


# ------------------------------------------------------------------------------ memory_required


def expected_memory(base, shape) -> float:
    """BaseModel.memory_required for an image latent with no extra conds, as written in both versions."""
    import comfy.model_management as mm

    area = shape[0] * math.prod(shape[2:])
    if mm.xformers_enabled() or mm.pytorch_attention_flash_attention():
        dtype = base.manual_cast_dtype or base.get_dtype()
        return area * mm.dtype_size(dtype) * 0.01 * base.memory_usage_factor * 1024 * 1024
    return area * 0.15 * base.memory_usage_factor * 1024 * 1024


@pytest.mark.parametrize("family", ["tiny_sd15", "tiny_sdxl"])
def test_memory_required_and_the_packs_frugal_figure(comfy, request, family):
    model = request.getfixturevalue(family)[0]
    base = model.model
    frugal = sys.modules[
        node_module(comfy, "UltraResRelayUpscale").__package__ + "._common"
    ].frugal_activation_bytes
    if hasattr(base, "get_dtype_inference"):  # 0.30: the dtype memory_required uses
        assert base.get_dtype_inference() == (base.manual_cast_dtype or base.get_dtype())
    for shape in ([2, 4, 16, 16], [1, 4, 32, 24]):
        est = base.memory_required(shape)
        assert est == pytest.approx(expected_memory(base, shape), rel=1e-9)
        assert 0 < frugal(model, shape) <= est
        assert model.memory_required(shape) == est  # the ModelPatcher forwards it unchanged


# ------------------------------------------------------------------------------ LinFusion size


def test_linfusion_size_is_counted_by_comfy_memory_planning(comfy, lf_dir):
    """The patched clone reports base + LinFusion bytes to ComfyUI (model_size, LoadedModel.model_memory,
    clones of it), and a full load really holds that much (loaded_size)."""
    import comfy.model_management as mm
    from harness import boot
    from node_support import write_lf_file

    # a model of its own (seed 20): the shared tiny_sd15 may have been loaded by earlier tests, and
    # loading the LinFusion clone of an already-loaded base leaves loaded_size at the base size (both
    # versions; docs/multigpu.md lists it as a GPU check)
    model = boot.tiny("sd15", 20)[0]
    write_lf_file(model, lf_dir / "lf.safetensors", dtype=torch.float32)
    (weights,) = comfy.run_node("UltraResLinFusionLoader", lf_name="lf.safetensors")
    (patched,) = comfy.run_node("UltraResLinFusionApply", model=model, linfusion=weights)
    added = patched.model_size() - model.model_size()
    n_params = sum(t.numel() for layer in weights.layers for t in layer.values())
    assert added == n_params * 4 > 0  # float32 layers (the model's dtype)
    assert patched.clone().model_size() == patched.model_size()  # clone(...) passes the size on
    assert mm.LoadedModel(patched).model_memory() == patched.model_size()
    if hasattr(patched, "is_dynamic"):  # 0.30: dynamic VRAM is never on with --cpu
        assert not patched.is_dynamic()
    mm.unload_all_models()  # a clean start: nothing of the model loaded by earlier tests
    mm.load_models_gpu([patched], force_full_load=True)
    try:
        assert patched.loaded_size() == patched.model_size()
    finally:
        mm.unload_all_models()


# ------------------------------------------------------------------------------ HDiT estimate


@pytest.fixture(scope="module")
def hdit_model(comfy):
    import folder_paths
    from hdit_layout import SMALL, write_official_safetensors

    d = folder_paths.get_folder_paths("hdit")[0]
    os.makedirs(d, exist_ok=True)
    name = f"test_memver_{uuid.uuid4().hex[:8]}.safetensors"
    path = os.path.join(d, name)
    cfg = {**SMALL, "model": {**SMALL["model"], "sigma_min": 0.02, "sigma_max": 60.0, "sigma_data": 0.5}}
    write_official_safetensors(path, cfg, seed=1)
    try:
        model = comfy.run_node("UltraResHDiTLoader", model_name=name, weight_dtype="float32")[0]
        yield model, cfg
    finally:
        os.remove(path)


def test_hdit_estimate_is_the_calibrated_peak_through_comfy(comfy, hdit_model):
    """HDiT sets memory_usage_factor so that ComfyUI's own memory_required equals its calibrated peak
    per pixel, in the branch the running ComfyUI takes; 0.30's get_dtype_inference keeps that."""
    from ultrares.kernels import hdit_format

    model, cfg = hdit_model
    per_px = hdit_format.activation_bytes_per_pixel(cfg)
    for shape in ([2, 3, 64, 64], [1, 3, 96, 64]):
        est = model.model.memory_required(shape)
        assert est == pytest.approx(per_px * shape[0] * shape[2] * shape[3], rel=1e-6)


# ------------------------------------------------------------------------------ Relay and tiled


def test_relay_and_tiled_estimates_use_comfys_figure(comfy, tiny_sd15):
    """Relay Upscale's bound is ComfyUI's frugal activation figure + its state; with Tiled Diffusion on
    the model the activations are unknown (0); and ComfyUI's own plan at load time
    (sampler_helpers.estimate_memory) still sizes the whole latent for the tiled model, on both versions."""
    import comfy.sampler_helpers as sh

    model = tiny_sd15[0]
    relay = node_module(comfy, "UltraResRelayUpscale")
    common = sys.modules[relay.__package__ + "._common"]
    shape = (1, 4, 32, 32)
    act, state = relay.estimate_relay_memory(model, shape)
    assert act == common.frugal_activation_bytes(model, shape) > 0
    assert state > 0 and relay.estimate_relay_memory(model, (2, 4, 32, 32))[1] == 2 * state  # latent-sized
    (tiled,) = comfy.run_node(
        "UltraResTiledDiffusion",
        model=model,
        method="FSTD",
        tile_width=64,
        tile_height=64,
        overlap=16,
        tile_batch_size=4,
        reset_interval=4,
        seed=0,
    )
    assert relay.estimate_relay_memory(tiled, shape) == (0, state)
    conds = {"positive": [{"model_conds": {}}]}
    assert sh.estimate_memory(tiled, shape, conds) == sh.estimate_memory(model, shape, conds)
    full, minimum = sh.estimate_memory(tiled, shape, conds)
    assert full == model.model.memory_required([2, 4, 32, 32])
    assert minimum == model.model.memory_required(list(shape))
