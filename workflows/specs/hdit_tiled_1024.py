"""HDiT + FSTD tiled sampling to 1024x1024: the 64x64 emoji model denoises 64 px tiles whose grid shifts
every step, so the whole canvas is one coherent sample without seams."""

TITLE = "HDiT + FSTD tiled sampling 1024x1024 (embedded model)"


def build(g):
    loader = g.node("UltraResHDiTLoader", model_name="ultrares-emoji64.safetensors", weight_dtype="float32")
    tiled = g.node(
        "UltraResTiledDiffusion",
        model=loader[0],
        method="FSTD",
        tile_width=64,
        tile_height=64,
        overlap=0,
        tile_batch_size=64,
        reset_interval=4,
        seed=0,
    )
    cls = g.node("UltraResHDiTClass", class_id=2, unconditional=False)
    latent = g.node("EmptyChromaRadianceLatentImage", width=1024, height=1024, batch_size=1)
    sampled = g.node(
        "KSampler",
        model=tiled[0],
        seed=3,
        steps=8,
        cfg=2.0,
        sampler_name="dpmpp_2m",
        scheduler="karras",
        positive=cls[0],
        negative=cls[1],
        latent_image=latent[0],
        denoise=1.0,
    )
    image = g.node("VAEDecode", samples=sampled[0], vae=loader[1])
    g.node("SaveImage", images=image[0], filename_prefix="ultrares/hdit_tiled_1024")
