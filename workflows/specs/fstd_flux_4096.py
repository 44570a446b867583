"""Flux-dev txt2img at 4096x4096 with FSTD tiled sampling: cfg 1 with FluxGuidance (Flux is
guidance-distilled), 1024 px tiles (Flux's native size, 16 per step, no overlap work), tiled VAE decode.

Flux runs at cfg 1, so ComfyUI skips the negative prompt entirely (the negative below is a zeroed-out
copy only because KSampler asks for one); FSTD keeps its reference for the positive group alone.
"""

TITLE = "FSTD tiled txt2img 4096x4096 (Flux dev, cfg 1 + FluxGuidance)"


def build(g):
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name="flux1-dev-fp8.safetensors")
    tiled = g.node(
        "UltraResTiledDiffusion",
        model=ckpt[0],
        method="FSTD",
        tile_width=1024,
        tile_height=1024,
        overlap=0,
        tile_batch_size=2,
        reset_interval=4,
        seed=0,
    )
    text = g.node(
        "CLIPTextEncode",
        title="Positive prompt",
        clip=ckpt[1],
        text="an aerial photograph of a terraced rice valley with a winding river, morning mist, "
        "extremely detailed",
    )
    pos = g.node("FluxGuidance", conditioning=text[0], guidance=3.5)
    neg = g.node("ConditioningZeroOut", title="Negative (unused at cfg 1)", conditioning=text[0])
    latent = g.node("EmptySD3LatentImage", width=4096, height=4096, batch_size=1)
    sampled = g.node(
        "KSampler",
        model=tiled[0],
        seed=11,
        steps=20,
        cfg=1.0,
        sampler_name="euler",
        scheduler="simple",
        positive=pos[0],
        negative=neg[0],
        latent_image=latent[0],
        denoise=1.0,
    )
    image = g.node(
        "VAEDecodeTiled",
        samples=sampled[0],
        vae=ckpt[2],
        tile_size=1024,
        overlap=64,
        temporal_size=64,
        temporal_overlap=8,
    )
    g.node("SaveImage", images=image[0], filename_prefix="ultrares/fstd_flux_4096")
