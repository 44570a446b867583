"""FLUX.1-dev to 4096 x 4096 with CLEAR, the official high-resolution recipe as a ComfyUI graph.

1024 px with the unmodified FLUX.1-dev (cfg 1 + FluxGuidance 3.5), then twice: decode, upscale the
image x2 (Lanczos), encode, re-noise and denoise the last 70 % of the schedule (SDEdit, denoise 0.7)
with the model patched by Apply CLEAR (clear_local_16_down_4: a 16-token window plus 4x-downsampled
keys/values; proportional attention and NTK factor 10, and distilled guidance 7.5, as in the official
inference_t2i_highres notebook) at 2048 px and then at 4096 px. CLEAR's attention cost is linear in
the number of tokens, so the 4096 px stage (65k image tokens) runs whole, without tiles.
Weights: put clear_local_16_down_4.safetensors (huggingface.co/Huage001/CLEAR) into models/clear.
"""

TITLE = "CLEAR: FLUX.1-dev 1024 -> 2048 -> 4096 px (progressive SDEdit, linear attention)"

PROMPT = (
    "an aerial photograph of a terraced rice valley with a winding river, morning mist, small farm houses, "
    "extremely detailed, ultra HD"
)


def build(g):
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name="flux1-dev-fp8.safetensors")
    text = g.node("CLIPTextEncode", title="Positive prompt", clip=ckpt[1], text=PROMPT)
    pos = g.node("FluxGuidance", conditioning=text[0], guidance=3.5)
    pos_hr = g.node(
        "FluxGuidance", title="FluxGuidance (high-res stages)", conditioning=text[0], guidance=7.5
    )
    neg = g.node("ConditioningZeroOut", title="Negative (unused at cfg 1)", conditioning=text[0])
    empty = g.node("EmptySD3LatentImage", width=1024, height=1024, batch_size=1)
    base = g.node(
        "KSampler",
        title="1024 px (FLUX.1-dev)",
        model=ckpt[0],
        seed=11,
        steps=20,
        cfg=1.0,
        sampler_name="euler",
        scheduler="simple",
        positive=pos[0],
        negative=neg[0],
        latent_image=empty[0],
        denoise=1.0,
    )
    weights = g.node("UltraResCLEARLoader", clear_name="clear_local_16_down_4.safetensors")
    clear = g.node(
        "UltraResCLEARApply",
        model=ckpt[0],
        clear=weights[0],
        window=0,
        proportional_attention=True,
        ntk_factor=10.0,
    )
    latent = base[0]
    for px in (2048, 4096):
        image = g.node(
            "VAEDecodeTiled",
            samples=latent,
            vae=ckpt[2],
            tile_size=1024,
            overlap=64,
            temporal_size=64,
            temporal_overlap=8,
        )
        bigger = g.node("ImageScaleBy", image=image[0], upscale_method="lanczos", scale_by=2.0)
        encoded = g.node("VAEEncodeTiled", pixels=bigger[0], vae=ckpt[2], tile_size=1024, overlap=64)
        latent = g.node(
            "KSampler",
            title=f"{px} px (CLEAR, denoise 0.7)",
            model=clear[0],
            seed=11,
            steps=20,
            cfg=1.0,
            sampler_name="euler",
            scheduler="simple",
            positive=pos_hr[0],
            negative=neg[0],
            latent_image=encoded[0],
            denoise=0.7,
        )[0]
    final = g.node(
        "VAEDecodeTiled",
        samples=latent,
        vae=ckpt[2],
        tile_size=1024,
        overlap=64,
        temporal_size=64,
        temporal_overlap=8,
    )
    g.node("SaveImage", images=final[0], filename_prefix="ultrares/clear_flux_4096")
