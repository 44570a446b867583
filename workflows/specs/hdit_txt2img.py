"""HDiT txt2img (class-conditional) with the embedded 64x64 Twemoji model: pixel space, stock KSampler."""

TITLE = "HDiT class-conditional emoji 64x64 (embedded model)"


def build(g):
    loader = g.node("UltraResHDiTLoader", model_name="ultrares-emoji64.safetensors", weight_dtype="float32")
    cls = g.node(
        "UltraResHDiTClass",
        title="Class (0 smileys, 2 animals, 3 food, 8 flags...)",
        class_id=0,
        unconditional=False,
    )
    latent = g.node("EmptyChromaRadianceLatentImage", width=64, height=64, batch_size=4)
    sampled = g.node(
        "KSampler",
        model=loader[0],
        seed=7,
        steps=20,
        cfg=2.5,
        sampler_name="dpmpp_2m",
        scheduler="karras",
        positive=cls[0],
        negative=cls[1],
        latent_image=latent[0],
        denoise=1.0,
    )
    image = g.node("VAEDecode", samples=sampled[0], vae=loader[1])
    g.node("SaveImage", images=image[0], filename_prefix="ultrares/hdit_emoji")
