"""DiGIT codebook nodes: ``UltraResDiGITFitCodebook`` (images -> a new ``.npy`` codebook + atlas in the
``digit`` folder) and ``UltraResDiGITDecode`` (DIGIT_TOKENS -> IMAGE by nearest-training-patch retrieval,
cluster mean colour or centroid colouring, to inspect the token space). Thin adapters over
``kernels/digit.py``; the loaders and Tokenize are ``digit.py``.
"""

from __future__ import annotations

import os

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..kernels import digit as D
from ..kernels.digit import DigitCodebook, to_rgb
from ._common import seed_input, show_value
from ._compat import schema_extras
from ._digit import (
    CATEGORY,
    DECODE_MODES,
    FOLDER,
    DigitCodebookType,
    DigitEncoderType,
    DigitTokensType,
    as_image,
    encode,
    fit_input,
    image_size_input,
    image_size_rule,
)
from ._inputs import CheckedNode


def _codebook_target(filename: str) -> str:
    name = D.codebook_file_name(filename)
    if name is None:
        raise ValueError(
            f"filename={show_value(filename)} must be a plain file name (letters, digits, '.', '_', '-'; no folders)"
        )
    return os.path.join(folder_paths.get_folder_paths(FOLDER)[0], name)


class UltraResDiGITFitCodebook(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UltraResDiGITFitCodebook",
            **schema_extras(search_aliases=["digit", "k-means", "train codebook"]),
            display_name="DiGIT Fit Codebook (UltraRes)",
            category=CATEGORY,
            description=(
                "Fits a DiGIT codebook: K-means (k-means++ seeding, Lloyd iterations, chunked so large K fits in "
                "memory) on the DINOv2 patch features of the images, saved as models/digit/<filename>.npy (float32 "
                "[K, D]) with an atlas (nearest training patch and mean colour per centroid) for decoding. Refuses "
                "to replace an existing file unless overwrite is on."
            ),
            inputs=[
                DigitEncoderType.Input(
                    "encoder", tooltip="From DiGIT Encoder Loader; tokenize later with the same encoder."
                ),
                io.Image.Input(
                    "images",
                    tooltip="Training images (a batch); every image gives (image_size/16)^2 features.",
                ),
                io.Int.Input(
                    "k",
                    default=256,
                    min=2,
                    max=65536,
                    tooltip="Number of centroids K (DiGIT: 8192 for ViT-B); needs at least K patches in total.",
                ),
                io.Int.Input(
                    "iterations",
                    default=20,
                    min=1,
                    max=1000,
                    tooltip="Lloyd iterations (DiGIT used 20 with faiss).",
                ),
                seed_input("Seed of the k-means++ initialisation.", control_after_generate=False),
                image_size_input(),
                fit_input(),
                io.String.Input(
                    "filename",
                    default="digit-codebook",
                    tooltip="Name of the .npy written to the first models/digit folder (no folders).",
                ),
                io.Boolean.Input(
                    "overwrite",
                    default=False,
                    tooltip="Replace an existing codebook of that name (off: the node refuses).",
                ),
            ],
            outputs=[
                DigitCodebookType.Output(
                    display_name="codebook", tooltip="The new codebook, ready for Tokenize."
                )
            ],
            is_output_node=True,
        )

    @classmethod
    def rules(cls, v) -> bool | str:
        # check_inputs did types, ranges and the fit choice; None is a linked value, known only at run time
        ok = image_size_rule(v.image_size)
        if ok is not True or v.filename is None:
            return ok
        try:
            target = _codebook_target(v.filename)
        except ValueError as exc:
            return str(exc)
        if os.path.exists(target) and v.overwrite is False:  # None: overwrite is linked
            return f"codebook {os.path.basename(target)} already exists in models/digit: choose another filename or turn overwrite on"
        return True

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        v = cls.checked(inputs)  # rules: the file name and, without overwrite, that the file is new
        encoder, images, target = v.encoder, v.images, _codebook_target(v.filename)
        D.check_enough_patches(v.k, images.shape[0], v.image_size)
        prepared, feats = encode(encoder, to_rgb(images), v.image_size, v.fit)
        pbar = comfy.utils.ProgressBar(v.iterations)

        def progress(i: int, total: int) -> None:
            comfy.model_management.throw_exception_if_processing_interrupted()
            pbar.update_absolute(i, total)

        centroids, atlas = D.fit_codebook(feats, prepared, v.k, v.iterations, v.seed, progress)
        record = D.encoder_record(encoder.model, encoder.name)  # which features the codebook belongs to
        D.save_fitted(target, centroids, atlas, record, v.overwrite)
        name = os.path.basename(target)
        return io.NodeOutput(
            DigitCodebook(name, centroids, atlas, D.centroid_colors(centroids), encoder.interpolation)
        )


class UltraResDiGITDecode(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UltraResDiGITDecode",
            **schema_extras(search_aliases=["digit", "tokens to image", "detokenize"]),
            display_name="DiGIT Tokens to Image (UltraRes)",
            category=CATEGORY,
            description=(
                "Turns DiGIT tokens back into a picture to inspect the token space: each token drawn as the training "
                "patch nearest to its centroid (nearest_patch), as the mean colour of its cluster (mean_color), both "
                "from the codebook's atlas, or as its centroid's PCA colour (centroid_pca, works for any codebook). "
                "Not a generative pixel decoder."
            ),
            inputs=[
                DigitTokensType.Input("tokens", tooltip="From DiGIT Tokenize."),
                DigitCodebookType.Input("codebook", tooltip="The codebook the tokens were made with."),
                io.Combo.Input(
                    "mode",
                    options=list(DECODE_MODES),
                    default="nearest_patch",
                    tooltip="nearest_patch / mean_color need the codebook's atlas; centroid_pca does not.",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="Tokens drawn as pixels (16 px per token).")
            ],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        v = cls.checked(inputs)
        return io.NodeOutput(as_image(D.decode_image(v.tokens, v.codebook, v.mode)))


NODES = [UltraResDiGITFitCodebook, UltraResDiGITDecode]
