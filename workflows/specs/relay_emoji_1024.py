"""Class -> 64 px -> relay to 256 px -> FSTD relay to 1024 px with the embedded emoji models.

Stage one: the class-conditional 64 px HDiT (ultrares-emoji64) samples a 64x64 emoji (DPM++ 2M,
Karras, 30 steps, cfg 2). Stage two: the relay-trained 256 px HDiT (ultrares-emoji-relay256,
unconditional) up-samples it x4 with UltraResRelayUpscale: relay_settings "model" runs the blurring
diffusion it was trained with (B_max 3, L 0.93, s_block 0.15, s_noise 0.2, read from the model's
metadata; the same values are typed into the widgets, so "inputs" gives the same result), 40-level
Karras grid truncated at sigma 0.9. Stage three: the same relay model patched with
UltraResTiledDiffusion (FSTD, non-overlapping 256 px tiles = its native size, the grid shifted every
step) relays 256 -> 1024. Previews show the 64 px and 256 px stages.
"""

TITLE = "Relay emoji: class -> 64 -> 256 (relay) -> 1024 px (FSTD relay)"

BASE = "ultrares-emoji64.safetensors"
RELAY_MODEL = "ultrares-emoji-relay256.safetensors"
# the relay model's trained settings (its metadata; used with relay_settings="model" whatever is typed here)
TRAINED = dict(blur_sigma_max=3.0, prob_length=0.93, s_block=0.15, s_noise=0.2)
CLASS_ID, SEED = 0, 4  # Smileys & Emotion: the 64 px model's most recognisable class
RELAY = dict(
    factor=4,
    steps=40,
    truncation_sigma=0.9,
    rho=7.0,
    cfg=1.0,
    s_churn=0.0,
    s_tmin=0.0,
    s_tmax=1000.0,
    s_churn_noise=1.0,
    relay_settings="model",
    **TRAINED,
)


def build(g):
    base = g.node(
        "UltraResHDiTLoader", title="64 px model (class-conditional)", model_name=BASE, weight_dtype="float32"
    )
    cls = g.node("UltraResHDiTClass", class_id=CLASS_ID, unconditional=False)
    empty = g.node("EmptyChromaRadianceLatentImage", width=64, height=64, batch_size=1)
    low = g.node(
        "KSampler",
        model=base[0],
        seed=SEED,
        steps=30,
        cfg=2.0,
        sampler_name="dpmpp_2m",
        scheduler="karras",
        positive=cls[0],
        negative=cls[1],
        latent_image=empty[0],
        denoise=1.0,
    )
    low_image = g.node("VAEDecode", samples=low[0], vae=base[1])
    g.node("PreviewImage", title="64 px", images=low_image[0])

    relay = g.node(
        "UltraResHDiTLoader",
        title="Relay model 64 -> 256 (unconditional)",
        model_name=RELAY_MODEL,
        weight_dtype="float32",
    )
    uncond = g.node("UltraResHDiTClass", title="Unconditional", class_id=0, unconditional=True)
    mid = g.node(
        "UltraResRelayUpscale",
        title="Relay 64 -> 256",
        model=relay[0],
        positive=uncond[0],
        latent=low[0],
        seed=SEED,
        **RELAY,
    )
    mid_image = g.node("VAEDecode", samples=mid[0], vae=relay[1])
    g.node("PreviewImage", title="256 px", images=mid_image[0])

    tiled = g.node(
        "UltraResTiledDiffusion",
        model=relay[0],
        method="FSTD",
        tile_width=256,
        tile_height=256,
        overlap=0,
        tile_batch_size=4,
        reset_interval=4,
        seed=SEED,
    )
    high = g.node(
        "UltraResRelayUpscale",
        title="FSTD relay 256 -> 1024",
        model=tiled[0],
        positive=uncond[0],
        latent=mid[0],
        seed=SEED,
        **RELAY,
    )
    image = g.node("VAEDecode", samples=high[0], vae=relay[1])
    g.node("SaveImage", images=image[0], filename_prefix="ultrares/relay_emoji_1024")
