"""SDXL txt2img at 4096x4096: LinFusion self-attention inside FSTD tiled sampling. Linear
attention makes 2048 px tiles affordable (4 tiles per step instead of 16 at 1024 px), so each
tile sees more of the picture and there are fewer seams to hide."""

from _common import SDXL_CKPT, decode_and_save, text_encoders

TITLE = "LinFusion + FSTD tiled txt2img 4096x4096 (SDXL)"
LINFUSION_XL = "LinFusion-XL/diffusion_pytorch_model.safetensors"


def build(g):
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=SDXL_CKPT)
    lf = g.node("UltraResLinFusionLoader", lf_name=LINFUSION_XL)
    model = g.node(
        "UltraResLinFusionApply",
        model=ckpt[0],
        linfusion=lf[0],
        min_tokens=0,
        keep_base_value_output=False,
        chunk_size=0,
        precision="auto",
    )
    tiled = g.node(
        "UltraResTiledDiffusion",
        model=model[0],
        method="FSTD",
        tile_width=2048,
        tile_height=2048,
        overlap=128,
        tile_batch_size=1,
        reset_interval=4,
        seed=0,
    )
    pos, neg = text_encoders(
        g,
        ckpt[1],
        "a detailed botanical illustration of a giant tree with thousands of "
        "leaves, birds and insects, intricate, highly detailed",
    )
    latent = g.node("EmptyLatentImage", width=4096, height=4096, batch_size=1)
    sampled = g.node(
        "KSampler",
        model=tiled[0],
        seed=11,
        steps=8,
        cfg=6.0,
        sampler_name="dpmpp_2m",
        scheduler="karras",
        positive=pos[0],
        negative=neg[0],
        latent_image=latent[0],
        denoise=1.0,
    )
    decode_and_save(g, sampled[0], ckpt[2], "ultrares/linfusion_sdxl_tiled_4096", tile_size=1024)
