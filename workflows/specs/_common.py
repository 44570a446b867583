"""Pieces shared by several workflow specs (files starting with _ are not workflows)."""

SD15_CKPT = "v1-5-pruned-emaonly.safetensors"
SDXL_CKPT = "sd_xl_base_1.0.safetensors"
NEGATIVE = "blurry, low quality, jpeg artifacts, watermark"


def text_encoders(g, clip, positive, negative=NEGATIVE):
    pos = g.node("CLIPTextEncode", title="Positive prompt", clip=clip, text=positive)
    neg = g.node("CLIPTextEncode", title="Negative prompt", clip=clip, text=negative)
    return pos, neg


def decode_and_save(g, samples, vae, prefix, tile_size=512):
    image = g.node(
        "VAEDecodeTiled",
        samples=samples,
        vae=vae,
        tile_size=tile_size,
        overlap=64,
        temporal_size=64,
        temporal_overlap=8,
    )
    g.node("SaveImage", images=image[0], filename_prefix=prefix)
    return image
