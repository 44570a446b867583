"""DiGIT discriminative image tokenizer: DINOv2 patch features clustered with K-means.

DiGIT (arXiv 2410.12490) turns an image into 16 x 16 = 256 discrete tokens, each the nearest
K-means centroid of one DINOv2 patch feature. The feature is taken exactly as the release does:

1. a ``256 x 256`` RGB image in ``[0, 1]`` is normalised with the ImageNet mean and std;
2. it is resized to ``224 x 224`` (``x 224/256``) by bicubic interpolation (``align_corners=False``,
   no antialiasing) of the *normalised* tensor;
3. DINOv2 runs up to the **first of its last three blocks** (block ``depth - 3``: index 9 of 12
   for ViT-B, 21 of 24 for ViT-L; the release's ``get_intermediate_layers(x, n=3)`` stops there
   because of an early ``break``), then the model's **final LayerNorm** is applied;
4. the patch tokens are kept (cls and register tokens dropped): ``[B, 256, D]``.

A token is ``argmin_k ||r||^2 - 2 r.c_k + ||c_k||^2`` over the centroids ``c`` (the released
``km_8k.npy`` is ``float32 [8192, 768]``). Other image sizes work the same way: ``image_size`` a
multiple of 16 gives a ``(image_size / 16)``-square token grid (the position embedding is
interpolated).

Also here: K-means in PyTorch (k-means++ seeding on a sample, Lloyd iterations with chunked
assignment so ``8192`` centroids over a million 768-d features never materialise the full distance
matrix; CPU or GPU; seeded), the ``.npy`` codebook format, a 3-d PCA colouring of the centroids
for token maps, and an *atlas* (per centroid: its nearest training patch and the mean colour of its
cluster) that turns tokens back into an image.

**Which features a codebook belongs to.** The ``.npy`` format has no metadata, so the record
lives in the codebook's atlas (``<name>.atlas.safetensors``, metadata ``dinov2_interpolation``: an
:func:`~.dinov2.interpolation_key`, plus ``feature_dim`` and ``encoder``). A codebook without an
atlas or without that key -- DiGIT's released ``km_8k.npy`` -- is taken as ``"digit"``, the
features it was fitted on. :func:`check_codebook_matches` refuses an encoder that interpolates its
position embedding differently. Every reader here checks sizes read from a file against the file's
size (and sane bounds) before allocating, and raises :class:`~.dinov2.WeightFileError` naming the
file by the display name it was given. Nothing here imports ComfyUI.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from .dinov2 import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Dinov2,
    WeightFileError,
    cfg_interpolation_key,
    describe_interpolation,
    read_safetensors,
)

INPUT_SIZE = 256
"""The tokenizer's image size (pixels); the encoder sees ``INPUT_SIZE * 224 / 256``."""
LAYER_FROM_END = 3
"""DiGIT's block: the first of the last three, i.e. index ``depth - 3``."""
FIT_MODES = ("center_crop", "stretch")


def _check_images(images: torch.Tensor, name: str = "images") -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must be [B, 3, H, W] RGB, got shape {tuple(images.shape)}")


def prepare_images(
    images: torch.Tensor, image_size: int = INPUT_SIZE, fit: str = "center_crop"
) -> torch.Tensor:
    """Bring images to the tokenizer's square size.

    ``images``: ``[B, 3, H, W]`` float in ``[0, 1]`` (any ``H, W >= 1``). ``fit="center_crop"``
    scales the shorter side to ``image_size`` and crops the centre (the release's evaluation
    transform); ``"stretch"`` resizes both sides. Bicubic with antialiasing when shrinking.
    Returns ``[B, 3, image_size, image_size]`` float32 in ``[0, 1]``.
    """
    _check_images(images)
    if fit not in FIT_MODES:
        raise ValueError(f"fit={fit!r}: use one of {FIT_MODES}")
    x = images.float()
    h, w = x.shape[-2:]
    if fit == "stretch":
        size = (image_size, image_size)
    else:
        s = image_size / min(h, w)
        size = (max(image_size, round(h * s)), max(image_size, round(w * s)))
    if (h, w) != size:
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=min(h, w) > image_size)
    top, left = (x.shape[-2] - image_size) // 2, (x.shape[-1] - image_size) // 2
    return x[..., top : top + image_size, left : left + image_size].clamp(0, 1)


def encoder_input(images: torch.Tensor) -> torch.Tensor:
    """``[B, 3, S, S]`` in ``[0, 1]`` (S a multiple of 16) -> the encoder's input
    ``[B, 3, 7S/8, 7S/8]``: ImageNet-normalised, then bicubic-resized (no antialias)."""
    _check_images(images)
    s = images.shape[-1]
    if images.shape[-2] != s or s % 16:
        raise ValueError(
            f"DiGIT images must be square with a side that is a multiple of 16, got {tuple(images.shape[-2:])}"
        )
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
    x = (images.float() - mean) / std
    return F.interpolate(x, size=(s * 7 // 8, s * 7 // 8), mode="bicubic", align_corners=False)


@torch.no_grad()
def extract_features(model: Dinov2, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """DiGIT features of square images.

    ``images``: ``[B, 3, S, S]`` float in ``[0, 1]``, ``S`` a multiple of 16 (256 in the release).
    Returns ``[B, (S/16)^2, D]`` float32 (row-major patch order): block ``depth - 3`` output
    through the final LayerNorm, patch tokens only. Runs on ``model``'s device.
    """
    p = next(model.parameters())
    layer = model.cfg.depth - LAYER_FROM_END
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = encoder_input(images[i : i + batch_size].to(p.device))
        out.append(model.get_intermediate_layers(x.to(p.dtype), [layer], norm=True)[0].float())
    return torch.cat(out)


# ----------------------------------------------------------------------------- assignment


def auto_chunk(k: int, budget_bytes: int = 1 << 28) -> int:
    """Rows per chunk so that a ``[rows, k]`` float32 distance block stays within ``budget_bytes``."""
    return max(256, budget_bytes // (4 * max(k, 1)))


@torch.no_grad()
def assign(
    x: torch.Tensor, centroids: torch.Tensor, chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid by squared L2: ``argmin_k ||x||^2 - 2 x.c_k + ||c_k||^2``.

    ``x``: ``[N, D]`` float; ``centroids``: ``[K, D]`` float (same device). Processes ``chunk_size``
    rows at a time (default: a 256 MiB distance block). Returns ``(ids [N] int64,
    sqdist [N] float32 >= 0)``.
    """
    if x.ndim != 2 or centroids.ndim != 2 or x.shape[1] != centroids.shape[1]:
        raise ValueError(
            f"features {tuple(x.shape)} and centroids {tuple(centroids.shape)} must be [N, D] and [K, D]"
        )
    c = centroids.float()
    c_t = c.t().contiguous()
    c_sq = (c * c).sum(1)
    chunk = chunk_size or auto_chunk(c.shape[0])
    ids = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    dist = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for i in range(0, x.shape[0], chunk):
        xc = x[i : i + chunk].float()
        score = torch.addmm(c_sq, xc, c_t, beta=1.0, alpha=-2.0)
        best, idx = score.min(dim=1)
        ids[i : i + chunk] = idx
        dist[i : i + chunk] = (best + (xc * xc).sum(1)).clamp_min(0)
    return ids, dist


# ----------------------------------------------------------------------------- k-means


@dataclass
class KMeansResult:
    centroids: torch.Tensor
    """``[K, D]`` float32 on the CPU."""
    inertia: list[float]
    """Sum of squared distances to the assigned centroid, after each Lloyd assignment pass."""
    reseeded: int
    """Empty clusters re-seeded (with the points farthest from their centroids) over the run."""


def kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: ``x`` ``[N, D]`` float32 (any device), ``k <= N``; returns ``[k, D]``.
    Each new centre is drawn with probability proportional to the squared distance to the
    nearest centre already chosen; ``generator`` is a CPU generator (reproducible everywhere)."""
    n = x.shape[0]
    x_sq = (x * x).sum(1)
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [x[first]]
    d2 = (x_sq - 2 * (x @ x[first]) + x_sq[first]).clamp_min(0)
    for _ in range(1, k):
        cum = torch.cumsum(d2.double(), 0)
        total = float(cum[-1])
        if total <= 0:  # fewer distinct points than k: any point will do
            j = int(torch.randint(n, (1,), generator=generator))
        else:
            u = float(torch.rand((), generator=generator, dtype=torch.float64)) * total
            j = min(
                int(torch.searchsorted(cum, torch.tensor([u], dtype=torch.float64, device=x.device))), n - 1
            )
        centres.append(x[j])
        d2 = torch.minimum(d2, (x_sq - 2 * (x @ x[j]) + x_sq[j]).clamp_min(0))
    return torch.stack(centres)


@torch.no_grad()
def kmeans(
    x: torch.Tensor,
    k: int,
    n_iter: int = 20,
    seed: int = 0,
    init: str = "k-means++",
    init_sample: int | None = None,
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> KMeansResult:
    """Lloyd's K-means.

    ``x``: ``[N, D]`` float features (moved to ``device``, default ``x``'s own). ``k <= N``.
    ``init``: ``"k-means++"`` (on a random sample of ``init_sample`` rows, default
    ``min(N, 8 K)``: seeding is sequential over K, so its sample stays small) or ``"random"``
    (``k`` distinct rows, as faiss does). ``n_iter`` rounds of assign + update; assignment is chunked (``chunk_size`` rows, default a 256 MiB distance block),
    sums are accumulated per chunk in float32 and across chunks in float64. A cluster left empty
    is re-seeded with the point farthest from its centroid. ``progress(i, n_iter)`` is called after
    each round. Deterministic for a given seed and device.
    """
    if x.ndim != 2:
        raise ValueError(f"k-means features must be [N, D], got {tuple(x.shape)}")
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(
            f"k-means needs 1 <= K <= N, got K={k} for N={n} features: fit on more images or lower K"
        )
    if init not in ("k-means++", "random"):
        raise ValueError(f"init={init!r}: use 'k-means++' or 'random'")
    dev = torch.device(device) if device is not None else x.device
    x = x.to(dev, torch.float32)
    gen = torch.Generator().manual_seed(seed)
    if init == "random":
        c = x[torch.randperm(n, generator=gen)[:k].to(dev)].clone()
    else:
        m = min(n, init_sample or 8 * k)
        sample = x[torch.randperm(n, generator=gen)[:m].to(dev)] if m < n else x
        c = kmeans_plusplus(sample, k, gen)
    chunk = chunk_size or auto_chunk(k)
    inertia: list[float] = []
    reseeded = 0
    ids = torch.empty(n, dtype=torch.long, device=dev)
    mind = torch.empty(n, dtype=torch.float32, device=dev)
    x_sq = (x * x).sum(1)
    for it in range(n_iter):
        c_t = c.t().contiguous()
        c_sq = (c * c).sum(1)
        sums = torch.zeros(k, d, dtype=torch.float64, device=dev)
        counts = torch.zeros(k, dtype=torch.float64, device=dev)
        for i in range(0, n, chunk):
            xc = x[i : i + chunk]
            best, idx = torch.addmm(c_sq, xc, c_t, beta=1.0, alpha=-2.0).min(dim=1)
            ids[i : i + chunk] = idx
            mind[i : i + chunk] = best + x_sq[i : i + chunk]
            part = torch.zeros(k, d, dtype=torch.float32, device=dev).index_add_(0, idx, xc)
            sums += part
            counts += torch.bincount(idx, minlength=k)
        inertia.append(float(mind.clamp_min(0).sum(dtype=torch.float64)))
        empty = (counts == 0).nonzero().flatten()
        c = (sums / counts.clamp_min(1).unsqueeze(1)).float()
        if empty.numel():
            far = torch.topk(mind, int(empty.numel())).indices
            c[empty] = x[far]
            reseeded += int(empty.numel())
        if progress is not None:
            progress(it + 1, n_iter)
    return KMeansResult(c.cpu(), inertia, reseeded)


# ----------------------------------------------------------------------------- codebooks


def save_codebook(path: str, centroids: torch.Tensor, overwrite: bool = False) -> None:
    """Write centroids ``[K, D]`` as ``.npy`` float32 (the released format)."""
    if centroids.ndim != 2:
        raise ValueError(f"a codebook is [K, D], got {tuple(centroids.shape)}")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"codebook {os.path.basename(path)} already exists: choose another name or delete it first"
        )
    np.save(path, centroids.detach().float().cpu().numpy().astype(np.float32))


MAX_CODEBOOK_K = 1 << 20
MAX_CODEBOOK_DIM = 8192
DEFAULT_INTERPOLATION = "digit"
"""The convention a codebook without a record was fitted on (DiGIT's own)."""


def load_codebook(path: str, name: str | None = None) -> torch.Tensor:
    """Read a ``.npy`` codebook; returns ``[K, D]`` float32 (CPU). The header is parsed first:
    no pickles, a float ``[K, D]`` array with ``K <= 2^20``, ``D <= 8192`` and exactly the bytes
    the file holds, so a forged shape allocates nothing. Then the values must be finite.
    ``name``: how messages call the file (default its base name)."""
    name = name or os.path.basename(path)
    fix = (
        "a DiGIT codebook is a plain float32 [K, D] .npy (np.save of the centroids): re-download or refit it"
    )
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except Exception:
        raise WeightFileError(f"{name}: not a .npy file (its header is missing or damaged); {fix}") from None
    if dtype.hasobject or dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
        raise WeightFileError(
            f"{name}: holds {dtype} values, not floats (pickled objects are never loaded); {fix}"
        )
    if len(shape) != 2:
        raise WeightFileError(f"{name}: has shape {shape}, not [K, D]; {fix}")
    k, d = shape
    if not (1 <= k <= MAX_CODEBOOK_K and 1 <= d <= MAX_CODEBOOK_DIM):
        raise WeightFileError(
            f"{name}: has shape {shape}; a codebook has 1..{MAX_CODEBOOK_K} centroids of 1..{MAX_CODEBOOK_DIM} "
            f"dimensions; {fix}"
        )
    need = k * d * dtype.itemsize
    if size - offset != need:
        raise WeightFileError(
            f"{name}: its header claims {shape} {dtype} ({need:,} bytes) but the file holds {size - offset:,} "
            f"bytes of data (truncated or damaged); {fix}"
        )
    with open(path, "rb") as f:
        f.seek(offset)
        arr = np.frombuffer(bytearray(f.read(need)), dtype=dtype)
    arr = arr.reshape((d, k)).T if fortran else arr.reshape(k, d)
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if not torch.isfinite(t).all():
        raise WeightFileError(f"{name}: the codebook holds NaN or infinite values; {fix}")
    return t


def centroid_colors(centroids: torch.Tensor) -> torch.Tensor:
    """A colour per centroid: its projection on the codebook's 3 principal axes, each axis
    mapped from its 1st..99th percentile to ``[0, 1]``. ``[K, D]`` -> ``[K, 3]`` float32 in
    ``[0, 1]``. Deterministic (each axis is signed so its largest loading is positive)."""
    c = centroids.double()
    c = c - c.mean(0)
    cov = c.t() @ c / max(c.shape[0] - 1, 1)
    evals, evecs = torch.linalg.eigh(cov)
    axes = evecs[:, torch.argsort(evals, descending=True)[:3]]
    if axes.shape[1] < 3:
        axes = F.pad(axes, (0, 3 - axes.shape[1]))
    signs = torch.sign(axes.gather(0, axes.abs().argmax(0, keepdim=True))).clamp_min(0) * 2 - 1
    proj = c @ (axes * signs)
    if proj.shape[0] > 1:
        lo = torch.quantile(proj, 0.01, dim=0)
        hi = torch.quantile(proj, 0.99, dim=0)
    else:
        lo, hi = proj[0] - 1, proj[0] + 1
    return ((proj - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1).float()


def paint_tokens(tokens: torch.Tensor, palette: torch.Tensor, cell: int) -> torch.Tensor:
    """Token grid ``[B, h, w]`` int64 + colours ``[K, 3]`` -> ``[B, 3, h*cell, w*cell]`` (each
    token a flat ``cell x cell`` square)."""
    img = rearrange(palette[tokens], "b h w c -> b c h w")
    return img.repeat_interleave(cell, dim=2).repeat_interleave(cell, dim=3)


# ----------------------------------------------------------------------------- atlas (decoding)


@dataclass
class Atlas:
    """What turns tokens back into pixels."""

    patches: torch.Tensor
    """``[K, 3, p, p]`` float32 in ``[0, 1]``: per centroid, the training patch nearest to it."""
    mean_rgb: torch.Tensor
    """``[K, 3]`` float32 in ``[0, 1]``: mean colour of the training patches assigned to it."""
    counts: torch.Tensor
    """``[K]`` int64: training patches assigned to each centroid."""


def image_patches(images: torch.Tensor, grid: int) -> torch.Tensor:
    """``[B, 3, S, S]`` -> ``[B * grid^2, 3, S/grid, S/grid]``, in the features' row-major order."""
    return rearrange(images, "b c (gh p) (gw q) -> (b gh gw) c p q", gh=grid, gw=grid)


@torch.no_grad()
def build_atlas(
    features: torch.Tensor, patches: torch.Tensor, centroids: torch.Tensor, chunk_size: int | None = None
) -> Atlas:
    """``features`` ``[N, D]`` and their pixel ``patches`` ``[N, 3, p, p]`` (``[0, 1]``) ->
    :class:`Atlas` for ``centroids`` ``[K, D]``. The nearest patch is ``argmin_n ||x_n - c_k||^2``
    (chunked over ``n``); a centroid that no training patch is assigned to keeps its nearest
    patch's mean colour."""
    if features.shape[0] != patches.shape[0]:
        raise ValueError(f"{features.shape[0]} features but {patches.shape[0]} patches")
    c = centroids.float().to(features.device)
    k = c.shape[0]
    chunk = chunk_size or auto_chunk(k)
    best = torch.full((k,), float("inf"), device=features.device)
    arg = torch.zeros(k, dtype=torch.long, device=features.device)
    for i in range(0, features.shape[0], chunk):
        xc = features[i : i + chunk].float()
        score = (xc * xc).sum(1, keepdim=True) - 2 * xc @ c.t()  # [n, K]; ||c||^2 is constant per column
        val, idx = score.min(dim=0)
        better = val < best
        best = torch.where(better, val, best)
        arg = torch.where(better, idx + i, arg)
    ids, _ = assign(features, c, chunk)
    colour = patches.float().mean(dim=(2, 3))
    sums = torch.zeros(k, 3, device=features.device).index_add_(0, ids, colour.to(features.device))
    counts = torch.bincount(ids, minlength=k)
    nearest = patches[arg.cpu()].float()
    mean_rgb = torch.where(
        counts.unsqueeze(1) > 0,
        sums / counts.clamp_min(1).unsqueeze(1),
        nearest.mean(dim=(2, 3)).to(sums.device),
    )
    return Atlas(nearest.cpu(), mean_rgb.float().cpu(), counts.cpu())


def decode_tokens(tokens: torch.Tensor, atlas: Atlas, mode: str = "nearest_patch") -> torch.Tensor:
    """Tokens ``[B, h, w]`` int64 -> ``[B, 3, h*p, w*p]`` float32 in ``[0, 1]``: each token
    drawn as its centroid's nearest training patch (``"nearest_patch"``) or as its cluster's
    mean colour (``"mean_color"``)."""
    k = atlas.patches.shape[0]
    if int(tokens.max()) >= k or int(tokens.min()) < 0:
        raise ValueError(
            f"token ids span [{int(tokens.min())}, {int(tokens.max())}] but the atlas has {k} entries"
        )
    p = atlas.patches.shape[-1]
    if mode == "nearest_patch":
        tiles = atlas.patches[tokens.cpu()]
        return rearrange(tiles, "b h w c p q -> b c (h p) (w q)")
    if mode == "mean_color":
        return paint_tokens(tokens.cpu(), atlas.mean_rgb, p)
    raise ValueError(f"decode mode {mode!r}: use 'nearest_patch' or 'mean_color'")


def codebook_record(interpolation: str, feature_dim: int, encoder: str = "") -> dict[str, str]:
    """The metadata that ties a codebook to the features it was fitted on (stored in its atlas)."""
    return {"dinov2_interpolation": interpolation, "feature_dim": str(int(feature_dim)), "encoder": encoder}


def encoder_record(model: Dinov2, encoder: str = "") -> dict[str, str]:
    """:func:`codebook_record` for features of ``model``."""
    return codebook_record(cfg_interpolation_key(model.cfg), model.cfg.embed_dim, encoder)


def save_atlas(path: str, atlas: Atlas, record: dict[str, str], overwrite: bool = False) -> None:
    """Write an atlas as safetensors (patches stored as uint8) with the codebook's ``record``
    (:func:`codebook_record`) in its metadata."""
    from safetensors.torch import save_file

    if "dinov2_interpolation" not in record:
        raise ValueError("an atlas must record the codebook's dinov2_interpolation (see codebook_record)")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"atlas {os.path.basename(path)} already exists: choose another name or delete it first"
        )
    tensors = {
        "patches": (atlas.patches.clamp(0, 1) * 255).round().to(torch.uint8).contiguous(),
        "mean_rgb": atlas.mean_rgb.float().contiguous(),
        "counts": atlas.counts.long().contiguous(),
    }
    save_file(tensors, path, metadata={"format": "ultrares-digit-atlas", **record})


def load_atlas(path: str, name: str | None = None) -> tuple[Atlas, dict[str, str]]:
    """Read an atlas: ``(Atlas, metadata)``; shapes checked (``patches [K, 3, p, p]`` uint8,
    ``mean_rgb [K, 3]``, ``counts [K]``) after the header was checked against the file size."""
    name = name or os.path.basename(path)
    fix = "delete it (decoding then uses centroid colours) or refit the codebook with DiGIT Fit Codebook"
    t, meta = read_safetensors(path, name)
    missing = {"patches", "mean_rgb", "counts"} - set(t)
    if missing:
        raise WeightFileError(f"{name}: not a DiGIT atlas (missing {sorted(missing)}); {fix}")
    p, m, c = t["patches"], t["mean_rgb"], t["counts"]
    k = p.shape[0] if p.ndim else 0
    if (
        p.ndim != 4
        or p.shape[1] != 3
        or p.shape[2] != p.shape[3]
        or p.dtype != torch.uint8
        or tuple(m.shape) != (k, 3)
        or tuple(c.shape) != (k,)
        or not torch.isfinite(m.float()).all()
    ):
        raise WeightFileError(
            f"{name}: atlas tensors have shapes patches {tuple(p.shape)} {p.dtype}, mean_rgb {tuple(m.shape)}, "
            f"counts {tuple(c.shape)}; expected [K, 3, p, p] uint8, [K, 3], [K]; {fix}"
        )
    return Atlas(p.float() / 255.0, m.float(), c.long()), meta


def record_interpolation(meta: dict[str, str] | None) -> str:
    """The convention a codebook record names (:data:`DEFAULT_INTERPOLATION` without one)."""
    return (meta or {}).get("dinov2_interpolation") or DEFAULT_INTERPOLATION


def check_codebook_matches(model: Dinov2, codebook_interpolation: str, codebook: str, encoder: str) -> None:
    """Refuse an encoder whose position-embedding interpolation is not the one the codebook's
    features were computed with (message names both)."""
    enc = cfg_interpolation_key(model.cfg)
    if enc != codebook_interpolation:
        raise ValueError(
            f"codebook '{codebook}' was fitted on features with the {describe_interpolation(codebook_interpolation)} "
            f"position-embedding interpolation, but encoder '{encoder}' is loaded with "
            f"{describe_interpolation(enc)}: its tokens would not match the codebook. Load the encoder with the "
            f"codebook's convention (interpolation 'digit' for DiGIT codebooks such as km_8k.npy), or fit a codebook "
            "with this encoder (DiGIT Fit Codebook)."
        )


def atlas_path(codebook_path: str) -> str:
    """The atlas that belongs to a codebook: ``name.npy`` -> ``name.atlas.safetensors``."""
    return os.path.splitext(codebook_path)[0] + ".atlas.safetensors"


def grid_side(image_size: int) -> int:
    """Tokens per side for an ``image_size`` input (``image_size / 16``)."""
    if image_size % 16 or image_size < 16:
        raise ValueError(f"image_size={image_size} must be a positive multiple of 16 (256 in DiGIT)")
    return image_size // 16


def tokens_from_features(
    features: torch.Tensor, centroids: torch.Tensor, chunk_size: int | None = None
) -> torch.Tensor:
    """``[B, N, D]`` features (``N`` a square) -> ``[B, sqrt N, sqrt N]`` int64 token ids."""
    b, n, d = features.shape
    if centroids.shape[1] != d:
        raise ValueError(f"codebook dimension {centroids.shape[1]} != encoder feature dimension {d}")
    side = math.isqrt(n)
    ids, _ = assign(features.reshape(b * n, d), centroids.to(features.device), chunk_size)
    return ids.view(b, side, side)


# ----------------------------------------------------------------------------- what the nodes pass around


DECODE_MODES = ("nearest_patch", "mean_color", "centroid_pca")
"""How :func:`decode_image` draws tokens: the atlas' nearest patch or cluster mean colour, or the
centroid's PCA colour (no atlas needed)."""


@dataclass
class DigitCodebook:
    """A loaded or fitted codebook: ``centroids`` ``[K, D]`` float32 (CPU), its optional :class:`Atlas`,
    the centroids' PCA ``palette`` ``[K, 3]`` in ``[0, 1]`` and the ``interpolation`` convention of the
    features it was fitted on (from the atlas record)."""

    name: str
    centroids: torch.Tensor
    atlas: Atlas | None
    palette: torch.Tensor
    interpolation: str = DEFAULT_INTERPOLATION

    @property
    def k(self) -> int:
        return self.centroids.shape[0]

    @property
    def dim(self) -> int:
        return self.centroids.shape[1]


@dataclass
class DigitTokens:
    """Token ids ``[B, h, w]`` int64 (CPU), the name and size ``k`` of their codebook, and the square
    ``image_size`` (pixels) they were made at."""

    ids: torch.Tensor
    codebook: str
    k: int
    image_size: int


def to_rgb(images: torch.Tensor, background: float = 1.0) -> torch.Tensor:
    """Images ``[B, H, W, C]`` (C = 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA; ComfyUI's IMAGE layout) ->
    ``[B, 3, H, W]`` float32 in ``[0, 1]``; alpha is composited over a ``background`` grey level (1 = white)."""
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


def image_size_problem(image_size: int) -> str | None:
    """The message for an ``image_size`` (already an int in 16..1024) that is not a multiple of 16, else None."""
    if image_size % 16:
        return f"image_size={image_size} must be a multiple of 16 between 16 and 1024 (256 gives DiGIT's 16 x 16 tokens)"
    return None


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")


def codebook_file_name(filename: str) -> str | None:
    """The ``.npy`` file name a fitted codebook called ``filename`` is saved as (``.npy`` added when
    missing), or None when ``filename`` is not a plain file name (letters, digits, '.', '_', '-'; no
    folders, no '..')."""
    name = filename[:-4] if filename.endswith(".npy") else filename
    if not _SAFE_NAME.match(name) or ".." in name:
        return None
    return name + ".npy"


def read_file(filename: str, what: str, load: Callable[[str], object]):
    """Run a reader ``load(label)`` with a message label naming the input ``what`` and the file (its
    relative name); any failure becomes a ``ValueError`` with our own text (never a library's, never
    an absolute path)."""
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


def open_codebook(path: str, name: str) -> DigitCodebook:
    """Read the codebook ``.npy`` at ``path`` (shown to the user as ``name``, the ``codebook_name``
    input) with its atlas when one sits next to it (:func:`atlas_path`), checked to have one entry
    per centroid."""
    centroids = read_file(name, "codebook_name", lambda label: load_codebook(path, name=label))
    atlas_file = atlas_path(path)
    atlas, meta = None, {}
    if os.path.exists(atlas_file):
        atlas_name = os.path.splitext(name)[0] + ".atlas.safetensors"
        atlas, meta = read_file(
            atlas_name, "the atlas of codebook_name", lambda label: load_atlas(atlas_file, label)
        )
    if atlas is not None and atlas.patches.shape[0] != centroids.shape[0]:
        raise ValueError(
            f"atlas {os.path.basename(atlas_file)} has {atlas.patches.shape[0]} entries but codebook "
            f"'{name}' has {centroids.shape[0]} centroids: delete the stale atlas or refit"
        )
    return DigitCodebook(name, centroids, atlas, centroid_colors(centroids), record_interpolation(meta))


def check_encoder_fits(model: Dinov2, encoder: str, codebook: DigitCodebook, default_codebook: str) -> None:
    """Refuse an encoder ``model`` (named ``encoder``) whose feature width or position-embedding
    convention is not the codebook's; the message suggests ``default_codebook`` for the embedded encoder."""
    dim = model.cfg.embed_dim
    if dim != codebook.dim:
        raise ValueError(
            f"codebook '{codebook.name}' has dimension {codebook.dim} but encoder '{encoder}' produces "
            f"{dim}-d features: use a codebook fitted with this encoder (e.g. km_8k.npy for DINOv2-B/14-reg4, "
            f"{default_codebook} for the embedded ViT-S/14), or fit one with UltraResDiGITFitCodebook."
        )
    check_codebook_matches(model, codebook.interpolation, codebook.name, encoder)


def check_enough_patches(k: int, n_images: int, image_size: int) -> int:
    """Tokens per side for ``image_size`` after refusing a ``k`` larger than the patches of ``n_images``."""
    grid = grid_side(image_size)
    n = n_images * grid * grid
    if k > n:
        raise ValueError(
            f"k={k} needs at least {k} patches but {n_images} image(s) x {grid * grid} patches = {n}: "
            "lower k, add images or raise image_size"
        )
    return grid


def decode_image(tokens: DigitTokens, codebook: DigitCodebook, mode: str) -> torch.Tensor:
    """Tokens drawn as pixels ``[B, 3, S, S]`` float32 in ``[0, 1]`` (``S`` the tokens' image size), in a
    :data:`DECODE_MODES` mode; refuses tokens of another codebook and atlas modes without an atlas."""
    if tokens.k != codebook.k:
        raise ValueError(
            f"tokens come from codebook '{tokens.codebook}' (K={tokens.k}) but codebook '{codebook.name}' has "
            f"K={codebook.k}: decode with the codebook used for tokenizing"
        )
    cell = tokens.image_size // tokens.ids.shape[-1]
    if mode == "centroid_pca":
        return paint_tokens(tokens.ids, codebook.palette, cell)
    if codebook.atlas is None:
        raise ValueError(
            f"mode '{mode}' needs an atlas but codebook '{codebook.name}' has none "
            f"({os.path.splitext(codebook.name)[0]}.atlas.safetensors): use mode centroid_pca, or fit a codebook "
            "with UltraResDiGITFitCodebook (it writes the atlas)"
        )
    img = decode_tokens(tokens.ids, codebook.atlas, mode)
    if img.shape[-1] != tokens.image_size:
        img = F.interpolate(img, size=(tokens.image_size,) * 2, mode="nearest")
    return img


def fit_codebook(
    features: torch.Tensor,
    images: torch.Tensor,
    k: int,
    n_iter: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, Atlas]:
    """K-means centroids ``[K, D]`` of patch ``features`` ``[B, N, D]`` and their :class:`Atlas` built from
    the prepared ``images`` ``[B, 3, S, S]`` in ``[0, 1]`` that gave them (``N = (S / 16)^2``)."""
    x = features.reshape(-1, features.shape[-1])
    res = kmeans(x, k, n_iter=n_iter, seed=seed, progress=progress)
    grid = math.isqrt(features.shape[1])
    atlas = build_atlas(x, image_patches(images, grid).to(x.device), res.centroids.to(x.device))
    return res.centroids, atlas


def save_fitted(
    path: str, centroids: torch.Tensor, atlas: Atlas, record: dict[str, str], overwrite: bool
) -> None:
    """Write a fitted codebook to ``path`` (``.npy``, its folder made when missing) and its atlas next to it
    (:func:`atlas_path`, replaced when present) with the ``record`` of the features it was fitted on."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_codebook(path, centroids, overwrite=overwrite)
    save_atlas(atlas_path(path), atlas, record, overwrite=True)
