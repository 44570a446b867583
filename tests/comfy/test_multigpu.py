"""ComfyUI 0.30's MultiGPU CFG Split with UltraRes nodes, entered on the CPU (skipped on 0.3.75).

``MultiGPU_WorkUnits`` makes one deep clone of the model per extra device and registers it under
``additional_models["multigpu"]``; at sampling time ``CFGGuider.outer_sample`` finds the loaded clones
(``is_multigpu_base_clone``), puts ``{device: patcher}`` in the model options as ``multigpu_clones``,
starts one worker thread per device, and ``calc_cond_batch`` takes ``_calc_cond_batch_multigpu``: each
cond group (positive, negative...) goes, whole, to one device's clone.

On a CPU-only machine ``MultiGPU_WorkUnits`` finds no extra device and changes nothing (tested below).
To run the core's multi-device path anyway, :func:`two_device_model` does what
``comfy.multigpu.create_multigpu_deepclones`` does after its ``deepclone_multigpu`` call (which needs a
loader's factory and a second device): a clone flagged as a MultiGPU base clone on a second CPU device
entry (``torch.device("cpu", 0)``, a distinct dict key with the same memory), ``match_multigpu_clones``,
and the ``GPUOptionsGroup`` registration. Everything after that is ComfyUI's own code: the loader, the
thread pool, the per-device scheduler and the aggregation. The clone shares the weights, so the result
must equal the single-device run.
"""

from __future__ import annotations

import threading

import pytest
import torch

multigpu = pytest.importorskip(
    "comfy.multigpu", reason="ComfyUI < 0.30 has no MultiGPU work units (comfy/multigpu.py)"
)

SECOND = torch.device("cpu", 0)


@pytest.fixture(autouse=True)
def unload_afterwards():
    """ComfyUI keeps sampled models loaded; the clones on the second CPU entry must not outlive a test."""
    yield
    import gc

    import comfy.model_management as mm

    mm.unload_all_models()
    # unload_all_models frees the devices ComfyUI knows (get_all_torch_devices), not the fake second
    # entry: free it too, or its clone stays listed as loaded and, once collected, comes back as None
    # from loaded_models() (ComfyUI's ControlNet.get_control then fails in load_models_gpu)
    mm.free_memory(1e30, SECOND)
    gc.collect()
    mm.cleanup_models()


def two_device_model(model):
    """``model`` with a MultiGPU clone on a second CPU device entry (see the module docstring)."""
    m = model.clone()
    extra = m.clone()
    extra.load_device = SECOND
    extra.is_multigpu_base_clone = True
    m.set_additional_models("multigpu", [extra])
    m.match_multigpu_clones()
    multigpu.GPUOptionsGroup().register(m)
    return m


def spy(model):
    """A clone recording, for every diffusion-model call, (device the core scheduled it on, thread,
    input shape)."""
    import comfy.patcher_extension as pe

    calls = []

    def record(executor, *args, **kwargs):
        opts = kwargs.get("transformer_options")
        if opts is None:  # the UNet's executor passes it positionally
            opts = next(a for a in args if isinstance(a, dict) and "cond_or_uncond" in a)
        calls.append(
            (opts.get("multigpu_thread_device"), threading.current_thread().name, tuple(args[0].shape))
        )
        return executor(*args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_multigpu_spy", record)
    return m, calls


@pytest.fixture(scope="module")
def sd15(comfy, tiny_sd15):
    model, clip, _ = tiny_sd15
    (pos,) = comfy.run_node("CLIPTextEncode", clip=clip, text="a castle on a hill")
    (neg,) = comfy.run_node("CLIPTextEncode", clip=clip, text="")
    # 5 x 77 tokens: ComfyUI cannot batch it with the 77-token positive (CONDCrossAttn.can_concat), so
    # one device runs cond and uncond as separate batch-1 calls, as two devices do, and the results can
    # be compared exactly (batch 2 against 2 x batch 1 differs in float rounding alone)
    neg = [[torch.cat([t] * 5, dim=1), dict(d)] for t, d in neg]
    return model, pos, neg


def ksample(comfy, model, pos, neg, z, cfg=5.0, steps=2):
    (out,) = comfy.run_node(
        "KSampler",
        model=model,
        seed=3,
        steps=steps,
        cfg=cfg,
        sampler_name="euler",
        scheduler="normal",
        positive=pos,
        negative=neg,
        latent_image={"samples": z},
        denoise=1.0,
    )
    return out["samples"]


def test_workunits_node_on_one_device_changes_nothing(comfy, sd15):
    model = sd15[0]
    assert "MultiGPU_WorkUnits" in comfy.nodes
    (m,) = comfy.run_node("MultiGPU_WorkUnits", model=model, max_gpus=2)
    assert m is not model
    assert m.get_additional_models_with_key("multigpu") == []
    assert "multigpu_options" not in m.model_options


def test_two_device_model_takes_the_core_multigpu_path(comfy, sd15):
    """The harness itself: cond and uncond run on the two device entries, in the core's worker threads."""
    model, pos, neg = sd15
    m, calls = spy(two_device_model(model))
    assert set(m.model_options["multigpu_options"]) == {model.load_device, SECOND}
    z = torch.zeros(1, 4, 8, 8)
    out = ksample(comfy, m, pos, neg, z)
    assert torch.isfinite(out).all()
    devices = {c[0] for c in calls}
    assert devices == {model.load_device, SECOND}, calls
    assert all(c[1] != threading.main_thread().name for c in calls)  # the core's thread pool ran them
    assert all(c[2][0] == 1 for c in calls)  # one cond group per call: cond and uncond were split


def test_tiled_diffusion_works_with_multigpu(comfy, sd15):
    """The tiled wrapper sits around calc_cond_batch; each tile batch is split by cond group across the
    devices, every tile whole: same tiles, same result as on one device."""
    model, pos, neg = sd15
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
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    plain_spied, plain_calls = spy(tiled)
    reference = ksample(comfy, plain_spied, pos, neg, z)
    for before in (True, False):  # MultiGPU applied to the model before or after the tiled node
        if before:
            (m,) = comfy.run_node(
                "UltraResTiledDiffusion",
                model=two_device_model(model),
                method="FSTD",
                tile_width=64,
                tile_height=64,
                overlap=16,
                tile_batch_size=4,
                reset_interval=4,
                seed=0,
            )
        else:
            m = two_device_model(tiled)
        spied, calls = spy(m)
        out = ksample(comfy, spied, pos, neg, z)
        assert {c[0] for c in calls} == {model.load_device, SECOND}
        assert all(c[2][-2:] == (8, 8) for c in calls)  # 64 px tiles: the model never sees the whole latent
        # the same tile batches as on one device (each cond group a call of its own there too, see sd15)
        assert sorted(c[2] for c in calls) == sorted(c[2] for c in plain_calls)
        torch.testing.assert_close(out, reference, rtol=1e-6, atol=1e-6)


def test_ddim_inversion_works_with_multigpu(comfy, sd15):
    model, pos, neg = sd15
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    args = dict(latent=latent, steps=3, level=0.5, scheduler="simple", positive=pos, negative=neg, cfg=3.0)
    (ref,) = comfy.run_node("UltraResDDIMInvert", model=model, **args)
    m, calls = spy(two_device_model(model))
    (noise,) = comfy.run_node("UltraResDDIMInvert", model=m, **args)
    assert {c[0] for c in calls} == {model.load_device, SECOND}
    torch.testing.assert_close(noise["samples"], ref["samples"], rtol=1e-6, atol=1e-6)


def test_linfusion_refuses_multigpu_in_either_order(comfy, sd15, lf_dir):
    """LinFusion's layers are object patches holding the model's own attention modules: per-device clones
    made after it would share them across devices, clones made before it would run without it (cond
    with LinFusion, uncond without: silently wrong). Both orders refuse, naming the node and the fix."""
    from node_support import write_lf_file

    model = sd15[0]
    write_lf_file(model, lf_dir / "lf.safetensors", dtype=torch.float32)
    (weights,) = comfy.run_node("UltraResLinFusionLoader", lf_name="lf.safetensors")
    with pytest.raises(
        ValueError, match=r"Apply LinFusion \(UltraRes\) does not work with MultiGPU CFG Split"
    ):
        comfy.run_node("UltraResLinFusionApply", model=two_device_model(model), linfusion=weights)
    (patched,) = comfy.run_node("UltraResLinFusionApply", model=model, linfusion=weights)
    with pytest.raises(ValueError, match=r"Remove the MultiGPU CFG Split node"):
        two_device_model(patched)  # what MultiGPU_WorkUnits does on a machine with a second GPU
    # a clone made later (another node between them) carries the guard too; the unpatched model has none
    with pytest.raises(ValueError, match="LinFusion"):
        two_device_model(patched.clone())
    assert two_device_model(model).get_additional_models_with_key("multigpu")


def test_relay_upscale_works_with_multigpu(comfy, sd15):
    """Relay stage two samples through ComfyUI's guider (a KSAMPLER loop): cond and uncond go to the two
    devices, its own block noise is drawn once on the main device; same result as on one device."""
    from node_support import SAMPLER_DEFAULTS

    model, pos, neg = sd15
    low = {"samples": torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(4))}
    args = dict(
        positive=pos, negative=neg, latent=low, factor=2, seed=1, steps=3, truncation_sigma=1.5, rho=7.0
    )
    args |= {k: v for k, v in SAMPLER_DEFAULTS.items() if k != "block_size"} | {
        "s_block": 0.15,
        "s_noise": 0.2,
    }
    (ref,) = comfy.run_node("UltraResRelayUpscale", model=model, cfg=5.0, **args)
    m, calls = spy(two_device_model(model))
    (out,) = comfy.run_node("UltraResRelayUpscale", model=m, cfg=5.0, **args)
    assert {c[0] for c in calls} == {model.load_device, SECOND}
    assert out["samples"].shape == (1, 4, 8, 8)
    torch.testing.assert_close(out["samples"], ref["samples"], rtol=1e-6, atol=1e-6)
