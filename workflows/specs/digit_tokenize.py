"""DiGIT: tokenize an image with the embedded encoder and codebook, save its token map and the
nearest-training-patch decoding next to the image as the tokenizer saw it."""

TITLE = "DiGIT tokenize: token map and patch decoding (embedded ViT-S/14 + emoji K=256)"


def build(g):
    image = g.node("LoadImage", image="digit_example.png")
    encoder = g.node("UltraResDiGITEncoderLoader", encoder_name="ultrares-dinov2-s14-imgfocus.safetensors")
    codebook = g.node("UltraResDiGITCodebookLoader", codebook_name="ultrares-emoji-k256.npy")
    tok = g.node(
        "UltraResDiGITTokenize",
        encoder=encoder[0],
        codebook=codebook[0],
        image=image[0],
        image_size=256,
        fit="center_crop",
    )
    g.node("SaveImage", images=tok[1], filename_prefix="ultrares/digit_token_map")
    decoded = g.node("UltraResDiGITDecode", tokens=tok[0], codebook=codebook[0], mode="nearest_patch")
    g.node("SaveImage", images=decoded[0], filename_prefix="ultrares/digit_decoded")
    g.node("SaveImage", images=tok[2], filename_prefix="ultrares/digit_input")
