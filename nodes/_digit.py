"""What the DiGIT node files share (``digit.py``: loaders and Tokenize; ``digit_codebook.py``: Fit
Codebook and Decode): the DIGIT_* socket types, the loaded encoder, the image-size and fit inputs, the
encoding loop with ComfyUI's progress and interrupts, and the models/digit file lists."""

from __future__ import annotations

from dataclasses import dataclass

import comfy.model_management
import comfy.model_patcher
import comfy.utils
import torch
from comfy_api.latest import io

from ..kernels import digit as D
from ..kernels import dinov2
from ._paths import model_files

CATEGORY = "UltraRes/digit"
FOLDER = "digit"
DEFAULT_ENCODER = "ultrares-dinov2-s14-imgfocus.safetensors"
DEFAULT_CODEBOOK = "ultrares-emoji-k256.npy"
ENCODER_EXTS = (".safetensors", ".pth", ".pt")
DECODE_MODES = D.DECODE_MODES
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


def encoder_files() -> list[str]:
    return [f for f in model_files(FOLDER, ENCODER_EXTS) if not f.endswith(".atlas.safetensors")]


def codebook_files() -> list[str]:
    return model_files(FOLDER, (".npy",))


def preferred(options: list[str], name: str) -> str | None:
    """The default of a file combo: ``name`` when present, else the first file (None: no files)."""
    if name in options:
        return name
    return options[0] if options else None


def image_size_input() -> io.Int.Input:
    return io.Int.Input(
        "image_size",
        default=256,
        min=16,
        max=1024,
        step=16,
        tooltip="Square size the image is brought to before encoding (DiGIT: 256 -> 16 x 16 = 256 tokens). "
        "Multiples of 16; the token grid is image_size / 16 per side.",
    )


def image_size_rule(image_size: int | None) -> bool | str:
    """The ``rules`` check of an image_size input (a multiple of 16): True, or the message; ``None``
    (linked: known at run time only) passes."""
    return True if image_size is None else D.image_size_problem(image_size) or True


def fit_input() -> io.Combo.Input:
    return io.Combo.Input(
        "fit",
        options=list(D.FIT_MODES),
        default="center_crop",
        tooltip="center_crop: scale the short side to image_size and crop the centre (DiGIT's evaluation "
        "transform); stretch: resize both sides, keeping the whole picture.",
    )


def encode(
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


def as_image(bchw: torch.Tensor) -> torch.Tensor:
    return bchw.permute(0, 2, 3, 1).clamp(0, 1).contiguous().to(comfy.model_management.intermediate_device())
