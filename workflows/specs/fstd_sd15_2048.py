"""SD1.5 txt2img at 2048x2048 with FSTD tiled sampling (512 px tiles, 16 per step, no overlap)."""

from _common import SD15_CKPT, decode_and_save, text_encoders

TITLE = "FSTD tiled txt2img 2048x2048 (SD1.5)"


def build(g):
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=SD15_CKPT)
    tiled = g.node(
        "UltraResTiledDiffusion",
        model=ckpt[0],
        method="FSTD",
        tile_width=512,
        tile_height=512,
        overlap=64,
        tile_batch_size=4,
        reset_interval=4,
        seed=0,
    )
    pos, neg = text_encoders(
        g,
        ckpt[1],
        "an aerial photograph of a vast medieval city, intricate rooftops, "
        "rivers and bridges, highly detailed",
    )
    latent = g.node("EmptyLatentImage", width=2048, height=2048, batch_size=1)
    sampled = g.node(
        "KSampler",
        model=tiled[0],
        seed=42,
        steps=10,
        cfg=7.0,
        sampler_name="dpmpp_2m",
        scheduler="karras",
        positive=pos[0],
        negative=neg[0],
        latent_image=latent[0],
        denoise=1.0,
    )
    decode_and_save(g, sampled[0], ckpt[2], "ultrares/fstd_sd15_2048")
