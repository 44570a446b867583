"""SDXL + ControlNet (canny) + FSTD at 4096x2048: the edge map of a guide image steers every tile.

The ControlNet's hint is prepared once for the whole image (resized to the output size, exactly as an
untiled ControlNet would see it) and each tile receives its crop, so the structure stays continuous
across tiles while the FSTD grid shifts every step. Put a guide image named
`ultrares_controlnet_guide.png` into ComfyUI's input folder (any size: it is resized to the output).
"""

from _common import SDXL_CKPT, decode_and_save, text_encoders

TITLE = "FSTD tiled txt2img 4096x2048 with ControlNet canny (SDXL)"


def build(g):
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=SDXL_CKPT)
    control = g.node("ControlNetLoader", control_net_name="diffusers_xl_canny_full.safetensors")
    guide = g.node("LoadImage", image="ultrares_controlnet_guide.png")
    edges = g.node("Canny", image=guide[0], low_threshold=0.4, high_threshold=0.8)
    pos, neg = text_encoders(
        g,
        ckpt[1],
        "a futuristic city skyline at night, neon reflections on wet streets, ultra wide, highly detailed",
    )
    controlled = g.node(
        "ControlNetApplyAdvanced",
        positive=pos[0],
        negative=neg[0],
        control_net=control[0],
        image=edges[0],
        strength=0.7,
        start_percent=0.0,
        end_percent=0.8,
    )
    tiled = g.node(
        "UltraResTiledDiffusion",
        model=ckpt[0],
        method="FSTD",
        tile_width=1024,
        tile_height=1024,
        overlap=0,
        tile_batch_size=2,
        reset_interval=4,
        seed=0,
    )
    latent = g.node("EmptyLatentImage", width=4096, height=2048, batch_size=1)
    sampled = g.node(
        "KSampler",
        model=tiled[0],
        seed=5,
        steps=10,
        cfg=6.0,
        sampler_name="dpmpp_2m",
        scheduler="karras",
        positive=controlled[0],
        negative=controlled[1],
        latent_image=latent[0],
        denoise=1.0,
    )
    decode_and_save(g, sampled[0], ckpt[2], "ultrares/fstd_controlnet_sdxl", tile_size=1024)
