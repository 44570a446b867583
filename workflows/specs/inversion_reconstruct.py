"""DDIM inversion (UnseenDiffusion): invert an out-of-domain photo into the embedded emoji HDiT's
noise space and generate it back; saves the 64x64 input as the model saw it and the reconstruction."""

TITLE = "DDIM inversion: reconstruct an out-of-domain photo with the embedded emoji HDiT"


def build(g):
    image = g.node("LoadImage", image="inversion_example.png")
    loader = g.node("UltraResHDiTLoader", model_name="ultrares-twemoji64.safetensors")
    small = g.node("ImageScale", image=image[0], upscale_method="area", width=64, height=64, crop="center")
    cond = g.node("UltraResHDiTClass", class_id=0, unconditional=True)
    latent = g.node("VAEEncode", pixels=small[0], vae=loader[1])
    noise = g.node(
        "UltraResDDIMInvert",
        model=loader[0],
        latent=latent[0],
        steps=30,
        level=1.0,
        scheduler="karras",
        positive=cond[0],
        cfg=1.0,
    )
    rec = g.node(
        "UltraResDDIMGenerate",
        model=loader[0],
        noise=noise[0],
        steps=30,
        level=1.0,
        scheduler="karras",
        positive=cond[0],
        cfg=1.0,
    )
    decoded = g.node("VAEDecode", samples=rec[0], vae=loader[1])
    g.node("SaveImage", images=decoded[0], filename_prefix="ultrares/inversion_reconstruction")
    g.node("SaveImage", images=small[0], filename_prefix="ultrares/inversion_input")
