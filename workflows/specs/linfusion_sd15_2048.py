"""SD1.5 txt2img to 2048x2048 with LinFusion: 512 px, then two 2x SDEdit passes (the official
high-resolution recipe); layers with fewer than 4096 tokens (below a 64x64 latent) keep softmax attention."""

from _common import SD15_CKPT, decode_and_save, text_encoders

TITLE = "LinFusion txt2img 2048x2048 (SD1.5)"
LINFUSION_SD15 = "LinFusion-1-5/diffusion_pytorch_model.safetensors"


def build(g):
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=SD15_CKPT)
    lf = g.node("UltraResLinFusionLoader", lf_name=LINFUSION_SD15)
    model = g.node(
        "UltraResLinFusionApply",
        model=ckpt[0],
        linfusion=lf[0],
        min_tokens=4096,
        keep_base_value_output=False,
        chunk_size=0,
        precision="auto",
    )
    pos, neg = text_encoders(
        g,
        ckpt[1],
        "an aerial photograph of a vast medieval city, intricate rooftops, "
        "rivers and bridges, highly detailed",
    )
    latent = g.node("EmptyLatentImage", width=512, height=512, batch_size=1)
    x = g.node(
        "KSampler",
        title="512x512",
        model=model[0],
        seed=42,
        steps=8,
        cfg=7.0,
        sampler_name="dpmpp_2m",
        scheduler="karras",
        positive=pos[0],
        negative=neg[0],
        latent_image=latent[0],
        denoise=1.0,
    )
    for size, denoise in ((1024, 0.55), (2048, 0.45)):
        up = g.node("LatentUpscaleBy", samples=x[0], upscale_method="bislerp", scale_by=2.0)
        x = g.node(
            "KSampler",
            title=f"{size}x{size} (SDEdit)",
            model=model[0],
            seed=43,
            steps=6,
            cfg=7.0,
            sampler_name="dpmpp_2m",
            scheduler="karras",
            positive=pos[0],
            negative=neg[0],
            latent_image=up[0],
            denoise=denoise,
        )
    decode_and_save(g, x[0], ckpt[2], "ultrares/linfusion_sd15_2048")
