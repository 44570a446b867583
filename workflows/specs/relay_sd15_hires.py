"""Relay Diffusion as a training-free hires fix for SD1.5: 512 -> 1024 -> 2048 px.

Stage one samples 512 px as usual. Stage two (UltraResRelayUpscale, on the FSTD-tiled model) nearest-upsamples the latent
x2, adds noise plus block noise at the truncation sigma and runs only the low-noise part of the
schedule. Stage three does the same x2 again with the custom-sampling nodes (UltraResBlockNoise,
UltraResRelaySigmas, UltraResRelaySampler in SamplerCustomAdvanced) on the model patched by
UltraResTiledDiffusion (512 px tiles: SD1.5's native size, and bounded memory), then decodes in tiles.
Step counts are kept low so the workflow runs on a CPU in the tests; raise `steps` for quality
(only the levels below truncation_sigma run: about half of them).
"""

TITLE = "Relay hires fix 512 -> 1024 -> 2048 (SD1.5, training-free)"

RELAY = dict(
    blur_sigma_max=0.0,
    prob_length=0.93,
    s_block=0.15,
    s_noise=0.2,
    s_churn=0.0,
    s_tmin=0.0,
    s_tmax=1000.0,
    s_churn_noise=1.0,
)


def build(g):
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name="v1-5-pruned-emaonly.safetensors")
    pos = g.node(
        "CLIPTextEncode",
        clip=ckpt[1],
        text="a cozy wooden cabin in a snowy pine forest at dusk, warm light in the windows, highly detailed",
    )
    neg = g.node("CLIPTextEncode", clip=ckpt[1], text="blurry, lowres, jpeg artifacts, watermark")
    empty = g.node("EmptyLatentImage", width=512, height=512, batch_size=1)
    base = g.node(
        "KSampler",
        model=ckpt[0],
        seed=42,
        steps=10,
        cfg=7.0,
        sampler_name="dpmpp_2m",
        scheduler="karras",
        positive=pos[0],
        negative=neg[0],
        latent_image=empty[0],
        denoise=1.0,
    )
    # SD1.5 is a 512 px model: above that, every stage samples in FSTD tiles of its native size
    tiled = g.node(
        "UltraResTiledDiffusion",
        model=ckpt[0],
        method="FSTD",
        tile_width=512,
        tile_height=512,
        overlap=0,
        tile_batch_size=4,
        reset_interval=4,
        seed=0,
    )
    # 512 -> 1024: the all-in-one node
    mid = g.node(
        "UltraResRelayUpscale",
        model=tiled[0],
        positive=pos[0],
        negative=neg[0],
        latent=base[0],
        factor=2,
        seed=43,
        steps=6,
        truncation_sigma=1.0,
        rho=7.0,
        cfg=7.0,
        **RELAY,
    )
    # 1024 -> 2048: the same relay built from custom-sampling nodes
    up = g.node("LatentUpscaleBy", samples=mid[0], upscale_method="nearest-exact", scale_by=2.0)
    noise = g.node("UltraResBlockNoise", noise_seed=44, block_size=2, s_block=0.15)
    guider = g.node("CFGGuider", model=tiled[0], positive=pos[0], negative=neg[0], cfg=7.0)
    sampler = g.node("UltraResRelaySampler", block_size=2, **RELAY)
    sigmas = g.node("UltraResRelaySigmas", model=ckpt[0], steps=4, truncation_sigma=0.7, rho=7.0)
    out = g.node(
        "SamplerCustomAdvanced",
        noise=noise[0],
        guider=guider[0],
        sampler=sampler[0],
        sigmas=sigmas[0],
        latent_image=up[0],
    )
    image = g.node(
        "VAEDecodeTiled",
        samples=out[0],
        vae=ckpt[2],
        tile_size=512,
        overlap=64,
        temporal_size=64,
        temporal_overlap=8,
    )
    g.node("SaveImage", images=image[0], filename_prefix="ultrares/relay_hires_2048")
