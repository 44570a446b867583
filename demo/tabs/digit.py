"""DiGIT tokens tab: DiGIT's discriminative tokenizer (``UltraResDiGITTokenize``,
``UltraResDiGITDecode``) on an uploaded image."""

from __future__ import annotations

import time

import gradio as gr
from PIL import Image

from .. import defaults as D
from .. import session as S
from . import _ui

TITLE, ID = "DiGIT tokens", "digit"
TOKENIZE = "UltraResDiGITTokenize"
DEFAULTS = D.of("digit", dict(example="apple.png"))


def codebook_background(cb) -> tuple[int, int, int] | None:
    """The background the codebook's training images had: the mean colour of its most used token
    (its atlas); None without an atlas. Transparent inputs are composited on it, so the image as
    tokenized and the tokens decoded share one background (the embedded codebook's emoji were on grey)."""
    atlas = getattr(cb, "atlas", None)
    if atlas is None:
        return None
    rgb = atlas.mean_rgb[int(atlas.counts.argmax())]
    return tuple(int(round(float(c) * 255)) for c in rgb)


def digit_encoders() -> list[str]:
    return S.node_options("UltraResDiGITEncoderLoader", "encoder_name")


def digit_codebooks() -> list[str]:
    return S.node_options("UltraResDiGITCodebookLoader", "codebook_name")


def digit_decode_modes() -> list[str]:
    return S.node_options("UltraResDiGITDecode", "mode")


_CACHE: dict[tuple[str, str], tuple] = {}


@S.exclusive
def digit_tokens(
    image,
    encoder: str | None = None,
    codebook: str | None = None,
    image_size: int | None = None,
    fit: str | None = None,
    mode: str = "nearest_patch",
    report: S.Report | None = None,
) -> tuple[Image.Image, Image.Image, Image.Image, str]:
    """Tokenize an image with DiGIT (``image_size``, ``fit`` None: the node's defaults); returns
    (image as tokenized, token map, tokens decoded, description)."""
    encoder = encoder or (digit_encoders() or [None])[0]
    codebook = codebook or (digit_codebooks() or [None])[0]
    if not encoder or not codebook:
        raise S.UserError(
            "DiGIT needs a DINOv2 encoder and a codebook in the digit models folder; the embedded ones "
            "are made by `make setup` (models/digit). Run it, or put dinov2_vitb14_reg4_pretrain.pth and "
            "km_8k.npy in ComfyUI/models/digit."
        )
    if image is None:
        raise S.UserError("Image: upload an image first (or click one of the examples).")
    defaults = S.node_defaults(TOKENIZE)
    rng = S.input_range(TOKENIZE, "image_size")
    image_size = S.check(
        "image size", defaults["image_size"] if image_size is None else image_size, rng, int(rng.step or 1)
    )
    fit = fit or defaults["fit"]
    key = (encoder, codebook)
    if key not in _CACHE:
        _CACHE.clear()
        with S.tracked(report, "loading the encoder and codebook"):
            (enc,) = S.run_node("UltraResDiGITEncoderLoader", encoder_name=encoder)
            (cb,) = S.run_node("UltraResDiGITCodebookLoader", codebook_name=codebook)
        _CACHE[key] = (enc, cb)
    enc, cb = _CACHE[key]
    background = codebook_background(cb)
    pixels = S.from_pil(image, "Image", background or (255, 255, 255))
    t0 = time.perf_counter()
    with S.tracked(report, "tokenizing"):
        tokens, token_map, seen = S.run_node(
            TOKENIZE, encoder=enc, codebook=cb, image=pixels, image_size=image_size, fit=fit
        )
        if mode == "nearest_patch" and cb.atlas is None:  # no atlas: nothing to draw patches from
            mode = "centroid_pca"
        (decoded,) = S.run_node("UltraResDiGITDecode", tokens=tokens, codebook=cb, mode=mode)
    ids = tokens.ids
    info = (
        f"{ids.shape[-2]}x{ids.shape[-1]} tokens from codebook {codebook} (K = {tokens.k}); "
        f"{int(ids.unique().numel())} distinct ids in this image; decoded as {mode}; "
        f"{time.perf_counter() - t0:.1f} s"
        + (f"; transparent parts on the codebook's background RGB {background}." if background else ".")
    )
    return S.enlarge(S.to_pil(seen)), S.enlarge(S.to_pil(token_map)), S.enlarge(S.to_pil(decoded)), info


def ui_digit(image, encoder, codebook, image_size, fit, mode, progress=gr.Progress()):
    yield from _ui.stream(digit_tokens, progress, 4, ID, image, encoder, codebook, int(image_size), fit, mode)


def build(shared: _ui.Shared) -> None:
    gr.Markdown(
        "DiGIT's discriminative tokenizer (`UltraResDiGITTokenize`, `UltraResDiGITDecode`): every "
        "16x16 patch becomes the id of the nearest K-means centroid of its DINOv2 feature. The token "
        "map colours each id by its centroid; the decoding draws each token as its nearest training patch. "
        "Transparent images are laid on the background the codebook was fitted on."
    )
    time_box = _ui.time_note(ID)
    image = gr.Image(
        value=D.example(DEFAULTS["example"]),
        label="Image",
        elem_id="digit-input",
        type="pil",
        sources=["upload", "clipboard"],
        image_mode="RGBA",  # keep the transparency: the handler lays it on the codebook's background
        height=256,
    )
    with gr.Row():
        encoder = _ui.dropdown(digit_encoders(), "Encoder")
        codebook = _ui.dropdown(digit_codebooks(), "Codebook")
        image_size = _ui.slider(
            S.input_range(TOKENIZE, "image_size"), "Image size (tokens = size/16 per side)"
        )
        fit = _ui.dropdown(S.node_options(TOKENIZE, "fit"), "Fit", S.node_defaults(TOKENIZE).get("fit"))
        mode = _ui.dropdown(digit_decode_modes(), "Decode as")
    run, stop = _ui.buttons("Tokenize")
    with gr.Row():
        seen = gr.Image(
            label="As tokenized", type="pil", interactive=False, format="png", elem_id="digit-seen"
        )
        token_map = gr.Image(label="Token map", type="pil", interactive=False, format="png")
        decoded = gr.Image(
            label="Tokens decoded", type="pil", interactive=False, format="png", elem_id="digit-output"
        )
    info = gr.Markdown(elem_id="digit-info")
    _ui.wire(
        run,
        stop,
        ui_digit,
        [image, encoder, codebook, image_size, fit, mode],
        [seen, token_map, decoded, info],
        "digit",
        time_box,
    )
    if shared.examples:
        gr.Examples([[p] for p in shared.examples], [image], label="Examples")
