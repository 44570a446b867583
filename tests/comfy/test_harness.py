"""The harness itself: ComfyUI boots with the pack, tiny models sample through ComfyUI's own code."""

import torch


def test_pack_loaded_with_v3_nodes(comfy):
    assert comfy.pack_nodes, "no UltraRes node registered"
    assert "UltraResTestCheckpointLoader" in comfy.nodes


def test_tiny_sd15_samples_through_ksampler(comfy, tiny_sd15):
    model, clip, vae = tiny_sd15
    (pos,) = comfy.run_node("CLIPTextEncode", clip=clip, text="a castle")
    (neg,) = comfy.run_node("CLIPTextEncode", clip=clip, text="")
    latent = {"samples": torch.zeros(1, 4, 16, 24)}
    (out,) = comfy.run_node(
        "KSampler",
        model=model,
        seed=1,
        steps=2,
        cfg=5.0,
        sampler_name="euler",
        scheduler="normal",
        positive=pos,
        negative=neg,
        latent_image=latent,
        denoise=1.0,
    )
    assert out["samples"].shape == (1, 4, 16, 24)
    assert torch.isfinite(out["samples"]).all()
    (image,) = comfy.run_node("VAEDecode", samples=out, vae=vae)
    assert image.shape == (1, 128, 192, 3)


def test_tiny_sdxl_is_sdxl_architecture(tiny_sdxl):
    model, clip, _ = tiny_sdxl
    import comfy.latent_formats
    import comfy.model_base

    assert isinstance(model.model, comfy.model_base.SDXL)
    assert isinstance(model.get_model_object("latent_format"), comfy.latent_formats.SDXL)
    names = dict(model.model.diffusion_model.named_modules())
    assert "input_blocks.4.1.transformer_blocks.0.attn1" in names  # first SDXL attention block
    assert "input_blocks.1.1" not in names  # SDXL has no attention at the first level
