"""Relay Diffusion + tiled sampling for 4096 x 4096 px with SD1.5.

512 px base -> x2 relay (UltraResRelayUpscale) -> 1024 px -> x4 relay in SamplerCustomAdvanced with
the model patched by UltraResTiledDiffusion (FSTD, 512 px tiles): the relay starts from the
nearest-upsampled 1024 px latent plus x4 block noise at the truncation sigma and runs only the
low-noise end of the schedule, each evaluation in tiles. Decoded with tiled VAE decode.
Step counts are kept low so the workflow runs on a CPU in the tests; raise `steps` for quality.
"""

TITLE = "Relay + tiled diffusion 512 -> 1024 -> 4096 (SD1.5)"

RELAY = dict(
    blur_sigma_max=0.0,
    prob_length=0.93,
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
        text="an aerial view of a medieval harbour town, boats, tiled roofs, intricate detail",
    )
    neg = g.node("CLIPTextEncode", clip=ckpt[1], text="blurry, lowres, jpeg artifacts, watermark")
    empty = g.node("EmptyLatentImage", width=512, height=512, batch_size=1)
    base = g.node(
        "KSampler",
        model=ckpt[0],
        seed=7,
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
    mid = g.node(
        "UltraResRelayUpscale",
        model=tiled[0],
        positive=pos[0],
        negative=neg[0],
        latent=base[0],
        factor=2,
        seed=8,
        steps=6,
        truncation_sigma=1.0,
        rho=7.0,
        cfg=7.0,
        s_block=0.15,
        **RELAY,
    )
    up = g.node("LatentUpscaleBy", samples=mid[0], upscale_method="nearest-exact", scale_by=4.0)
    noise = g.node("UltraResBlockNoise", noise_seed=9, block_size=4, s_block=0.15)
    guider = g.node("CFGGuider", model=tiled[0], positive=pos[0], negative=neg[0], cfg=7.0)
    sampler = g.node("UltraResRelaySampler", block_size=4, s_block=0.15, **RELAY)
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
    g.node("SaveImage", images=image[0], filename_prefix="ultrares/relay_tiled_4096")
