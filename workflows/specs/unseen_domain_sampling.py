"""Unseen-domain sampling (arXiv 2310.09213, the paper's whole loop): a few images of a domain the model
never saw are VAE-encoded and DDIM-inverted; a Gaussian (per-dimension mean, scalar variance, as the
official code fits it) is fitted to the inverted latents and new starting latents are drawn from it;
DDIM generation with the same model, steps, level and scheduler turns them into new images of that
domain. A Domain Score node shows how the drawn latents sit against the inverted set (and saves that
set as output/ultrares/unseen_domain_reference.safetensors for later runs)."""

from _common import SD15_CKPT

TITLE = "Unseen-domain sampling: invert a few images of a new domain, fit a Gaussian, sample, generate"

IMAGES = [f"unseen_domain_{i}.png" for i in range(1, 5)]
SIZE = 256
STEPS = 20
LEVEL = 1.0
SCHEDULER = "normal"


def build(g):
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=SD15_CKPT)
    empty = g.node("CLIPTextEncode", title="Empty prompt (unconditional)", clip=ckpt[1], text="")
    images = [g.node("LoadImage", image=name) for name in IMAGES]
    batch = images[0][0]
    for img in images[1:]:
        batch = g.node("ImageBatch", image1=batch, image2=img[0])[0]
    small = g.node("ImageScale", image=batch, upscale_method="area", width=SIZE, height=SIZE, crop="center")
    g.node("SaveImage", images=small[0], filename_prefix="ultrares/unseen_domain_inputs")
    latent = g.node("VAEEncode", pixels=small[0], vae=ckpt[2])
    ddim = dict(model=ckpt[0], steps=STEPS, level=LEVEL, scheduler=SCHEDULER, positive=empty[0], cfg=1.0)
    noise = g.node("UltraResDDIMInvert", latent=latent[0], **ddim)
    drawn = g.node("UltraResDomainGaussian", latents=noise[0], count=4, seed=0, spread="scalar (paper)")
    g.node(
        "UltraResDomainScore",
        latents=drawn[0],
        percentile=95.0,
        reference=noise[0],
        reference_file="(none)",  # stated, so the UI file's widget values line up with the editor's widgets
        save_reference_as="unseen_domain_reference",
        overwrite=False,
    )
    out = g.node("UltraResDDIMGenerate", noise=drawn[0], **ddim)
    decoded = g.node("VAEDecode", samples=out[0], vae=ckpt[2])
    g.node("SaveImage", images=decoded[0], filename_prefix="ultrares/unseen_domain_samples")
