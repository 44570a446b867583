"""SDXL txt2img at 4096x2048 with FSTD tiled sampling (1024 px tiles, 8 per step)."""

from _common import SDXL_CKPT, decode_and_save, text_encoders

TITLE = "FSTD tiled txt2img 4096x2048 (SDXL)"


def build(g):
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=SDXL_CKPT)
    tiled = g.node(
        "UltraResTiledDiffusion",
        model=ckpt[0],
        method="FSTD",
        tile_width=1024,
        tile_height=1024,
        overlap=128,
        tile_batch_size=2,
        reset_interval=4,
        seed=0,
    )
    pos, neg = text_encoders(
        g,
        ckpt[1],
        "a panoramic landscape of snowy mountains above a lake at sunrise, ultra wide, highly detailed",
    )
    latent = g.node("EmptyLatentImage", width=4096, height=2048, batch_size=1)
    sampled = g.node(
        "KSampler",
        model=tiled[0],
        seed=7,
        steps=10,
        cfg=6.0,
        sampler_name="dpmpp_2m",
        scheduler="karras",
        positive=pos[0],
        negative=neg[0],
        latent_image=latent[0],
        denoise=1.0,
    )
    decode_and_save(g, sampled[0], ckpt[2], "ultrares/fstd_sdxl_4096x2048", tile_size=1024)
