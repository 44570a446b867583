"""Any-Size-Diffusion pipeline: generate at the model's native pixel count with the target's aspect
ratio, upscale it (aspect kept) to just cover the target, crop the exact target size out of the
centre, refine with FSTD tiled img2img. The image is never stretched, and the output is exactly the
requested size."""

from _common import SD15_CKPT, decode_and_save, text_encoders

TITLE = "Any-size pipeline: native pass, upscale, FSTD refine (SD1.5, 1920x1080)"


def build(g):
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=SD15_CKPT)
    plan = g.node("UltraResAnySizePlan", target_width=1920, target_height=1080, native_size=0, model=ckpt[0])
    pos, neg = text_encoders(g, ckpt[1], "a cozy cabin in a snowy forest at dusk, warm light in the windows")
    latent = g.node("EmptyLatentImage", width=plan[0], height=plan[1], batch_size=1)
    first = g.node(
        "KSampler",
        title="Stage 1: native size",
        model=ckpt[0],
        seed=1,
        steps=12,
        cfg=7.0,
        sampler_name="dpmpp_2m",
        scheduler="karras",
        positive=pos[0],
        negative=neg[0],
        latent_image=latent[0],
        denoise=1.0,
    )
    upscaled = g.node(
        "LatentUpscale",
        samples=first[0],
        upscale_method="bislerp",
        width=plan[6],
        height=plan[7],
        crop="disabled",
    )
    cropped = g.node(
        "LatentCrop",
        title="Exact target size",
        samples=upscaled[0],
        width=plan[3],
        height=plan[4],
        x=plan[8],
        y=plan[9],
    )
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
    refined = g.node(
        "KSampler",
        title="Stage 2: FSTD refine",
        model=tiled[0],
        seed=2,
        steps=10,
        cfg=7.0,
        sampler_name="dpmpp_2m",
        scheduler="karras",
        positive=pos[0],
        negative=neg[0],
        latent_image=cropped[0],
        denoise=0.45,
    )
    decode_and_save(g, refined[0], ckpt[2], "ultrares/fstd_any_size")
