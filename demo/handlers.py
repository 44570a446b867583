"""What each demo tab does, as plain functions over the pack's node classes (no Gradio here).

Every handler takes plain values (names, numbers, PIL images), runs ComfyUI nodes through
:class:`ultrares.demo.runtime.Runtime` -- the pack's nodes and ComfyUI's core nodes, exactly as a
graph would connect them -- and returns PIL images and text. Problems the user can fix raise
:class:`UserError` with an actionable message; a cancelled run raises
``comfy.model_management.InterruptProcessingException``. ``report(stage, value, total)`` receives
the progress of every sampling loop (through ComfyUI's global progress-bar hook).

Model sources: the embedded HDiT (``models/hdit``, class-conditional, pixel space) and every file in
ComfyUI's ``checkpoints`` folder (text-conditional, with their VAE).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .runtime import Runtime, boot, progress_hook

Report = Callable[[str, int, int], None]

EMBEDDED_HDIT = "ultrares-emoji64.safetensors"
HDIT_PREFIX = "HDiT: "
CKPT_PREFIX = "checkpoint: "
UNCONDITIONAL = "unconditional"
WEIGHT_EXTS = (".safetensors", ".pth", ".pt", ".ckpt")
MAX_SIDE = 2048  # demo guard: larger images take minutes per step on a CPU


class UserError(ValueError):
    """A problem the user can fix; the message says what to do."""


def _noop(stage: str, value: int, total: int) -> None:
    pass


# ------------------------------------------------------------------------------------ runtime


def runtime() -> Runtime:
    return boot()


@contextlib.contextmanager
def tracked(report: Report | None, stage: str):
    """Route ComfyUI's progress bars to ``report`` for this stage (and honour Cancel)."""
    import comfy.utils

    report = report or _noop
    report(stage, 0, 1)
    comfy.utils.set_progress_bar_global_hook(progress_hook(lambda v, t: report(stage, v, t)))
    try:
        yield
    finally:
        comfy.utils.set_progress_bar_global_hook(None)


_RUN_LOCK = threading.Lock()


def exclusive(fn):
    """One run at a time in this process, whatever the web server does: a cancelled run's thread
    finishes its current step before the next run starts. The next run then clears the Cancel flag
    (a Cancel pressed while nothing was running must not stop it)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        import comfy.model_management

        with _RUN_LOCK:
            comfy.model_management.interrupt_current_processing(False)
            return fn(*args, **kwargs)

    return run


def cancel() -> None:
    """Ask the running sampling loop to stop (it raises InterruptProcessingException)."""
    import comfy.model_management

    comfy.model_management.interrupt_current_processing(True)


def node_options(node_id: str, input_name: str) -> list[str]:
    """The choices a node offers for a combo input (its own file lists)."""
    r = runtime()
    if not r.has(node_id):
        return []
    kind, _ = r.input_spec(node_id, input_name)
    if isinstance(kind, (list, tuple)):
        return [str(o) for o in kind]
    if kind == "COMBO":
        return [str(o) for o in r.input_spec(node_id, input_name)[1].get("options", [])]
    return []


def node_defaults(node_id: str) -> dict:
    """Default values of a node's widget inputs (what a freshly added node shows)."""
    r = runtime()
    types = r.node_class(node_id).INPUT_TYPES()
    out = {}
    for group in ("required", "optional"):
        for name, spec in types.get(group, {}).items():
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if "default" in opts:
                out[name] = opts["default"]
            elif isinstance(spec[0], (list, tuple)) and spec[0]:
                out[name] = spec[0][0]
    return out


# ------------------------------------------------------------------------------------ model sources


def hdit_files() -> list[str]:
    files = node_options("UltraResHDiTLoader", "model_name")
    weights = [f for f in files if f.endswith(WEIGHT_EXTS)]
    stems = {Path(f).stem for f in weights}
    # a bare config .json counts only when no weights file of the same name is listed
    return weights + [f for f in files if f.endswith(".json") and Path(f).stem not in stems]


def checkpoint_files() -> list[str]:
    return node_options("CheckpointLoaderSimple", "ckpt_name")


def sources() -> list[str]:
    """Model choices for the generation tabs: embedded HDiT first, then ComfyUI's checkpoints."""
    hdit = hdit_files()
    hdit.sort(key=lambda f: (f != EMBEDDED_HDIT, f))
    return [HDIT_PREFIX + f for f in hdit] + [CKPT_PREFIX + f for f in checkpoint_files()]


def default_source() -> str | None:
    found = sources()
    return found[0] if found else None


def missing_model_message() -> str:
    return (f"No model to sample with: the embedded HDiT model models/hdit/{EMBEDDED_HDIT} is missing and ComfyUI's "
            "checkpoints folder is empty. Run `make embedded-hdit` (or `make setup`) to build the embedded model, "
            "or put a Stable Diffusion checkpoint in ComfyUI/models/checkpoints, then restart the demo.")


@dataclass
class Bundle:
    """A loaded model with what the tabs need to condition, start, decode and encode it."""

    source: str
    kind: str  # "hdit" | "checkpoint"
    model: object
    vae: object
    clip: object = None
    class_names: list[str] = field(default_factory=list)
    native: int = 512  # native side in pixels

    @property
    def labels(self) -> list[str]:
        """Choices for the conditioning dropdown (HDiT classes), empty for text models."""
        return (list(self.class_names) + [UNCONDITIONAL]) if self.kind == "hdit" else []


_CACHE: dict[str, Bundle] = {}


def load(source: str | None) -> Bundle:
    """Load (once) the model behind a source name from :func:`sources`."""
    if not source:
        raise UserError(missing_model_message())
    if source in _CACHE:
        return _CACHE[source]
    r = runtime()
    if source.startswith(HDIT_PREFIX):
        name = source[len(HDIT_PREFIX):]
        if name not in hdit_files():
            raise UserError(f"HDiT model {name!r} is not in the hdit models folder (ComfyUI/models/hdit or the pack's "
                            f"models/hdit); available: {hdit_files() or 'none'}.")
        model, vae, num_classes = r.run_node("UltraResHDiTLoader", model_name=name, weight_dtype="float32")
        cfg = model.model.hdit_config
        names = list(cfg.raw.get("dataset", {}).get("class_names") or [])
        if len(names) != int(num_classes):
            names = [f"class {i}" for i in range(int(num_classes))]
        bundle = Bundle(source, "hdit", model, vae, class_names=names, native=int(cfg.input_size[0]))
    elif source.startswith(CKPT_PREFIX):
        name = source[len(CKPT_PREFIX):]
        if name not in checkpoint_files():
            raise UserError(f"checkpoint {name!r} is not in ComfyUI's checkpoints folder; available: "
                            f"{checkpoint_files() or 'none'}.")
        model, clip, vae = r.run_node("CheckpointLoaderSimple", ckpt_name=name)[:3]
        td = _module_of("UltraResTiledDiffusion")
        pixels, _ = td.native_pixels(model) if hasattr(td, "native_pixels") else (512 * 512, "")
        bundle = Bundle(source, "checkpoint", model, vae, clip=clip, native=int(round(math.sqrt(pixels))))
    else:
        raise UserError(f"unknown model source {source!r}; pick one of {sources()}.")
    _CACHE.clear()  # keep one model in memory
    _CACHE[source] = bundle
    return bundle


def remember(bundle: Bundle) -> None:
    """Offer a model that is already in memory (built by another program) under ``bundle.source``."""
    _CACHE.clear()
    _CACHE[bundle.source] = bundle


def _module_of(node_id: str):
    import sys

    return sys.modules[runtime().node_class(node_id).__module__]


def conditioning(bundle: Bundle, label: str | None, prompt: str = "", negative: str = ""):
    """(positive, negative) CONDITIONING: an HDiT class (or unconditional), or a text prompt."""
    r = runtime()
    if bundle.kind == "hdit":
        label = label or (bundle.class_names[0] if bundle.class_names else UNCONDITIONAL)
        if label == UNCONDITIONAL or not bundle.class_names:
            return r.run_node("UltraResHDiTClass", class_id=0, unconditional=True)
        if label not in bundle.class_names:
            raise UserError(f"class {label!r} is not one of this model's classes: {bundle.labels}.")
        return r.run_node("UltraResHDiTClass", class_id=bundle.class_names.index(label), unconditional=False)
    (pos,) = r.run_node("CLIPTextEncode", text=prompt or "", clip=bundle.clip)
    (neg,) = r.run_node("CLIPTextEncode", text=negative or "", clip=bundle.clip)
    return pos, neg


def empty_latent(bundle: Bundle, width: int, height: int, batch: int = 1) -> dict:
    r = runtime()
    node = "EmptyChromaRadianceLatentImage" if bundle.kind == "hdit" else "EmptyLatentImage"
    return r.run_node(node, width=int(width), height=int(height), batch_size=int(batch))[0]


def decode(bundle: Bundle, latent: dict) -> torch.Tensor:
    return runtime().run_node("VAEDecode", samples=latent, vae=bundle.vae)[0]


def encode(bundle: Bundle, image: torch.Tensor) -> dict:
    return runtime().run_node("VAEEncode", pixels=image, vae=bundle.vae)[0]


def sample(bundle: Bundle, model, positive, negative, latent: dict, steps: int, seed: int, cfg: float,
           sampler: str = "dpmpp_2m", scheduler: str = "karras", denoise: float = 1.0) -> dict:
    return runtime().run_node("KSampler", model=model, seed=int(seed), steps=int(steps), cfg=float(cfg),
                              sampler_name=sampler, scheduler=scheduler, positive=positive, negative=negative,
                              latent_image=latent, denoise=float(denoise))[0]


# ------------------------------------------------------------------------------------ images


def to_pil(images: torch.Tensor) -> Image.Image:
    """ComfyUI IMAGE [B, H, W, C] in [0, 1] -> one PIL image (a row of the batch)."""
    arr = (images.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return Image.fromarray(np.concatenate(list(arr[..., :3]), axis=1))


def from_pil(image, what: str = "image") -> torch.Tensor:
    """PIL / numpy image (any mode; alpha over white) -> ComfyUI IMAGE [1, H, W, 3] float32 in [0, 1]."""
    if image is None:
        raise UserError(f"{what}: upload an image first (or click one of the examples).")
    if isinstance(image, (str, Path)):
        image = Image.open(image)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    image = image.convert("RGB")
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]


def enlarge(image: Image.Image, min_side: int = 256) -> Image.Image:
    """Nearest-neighbour enlargement for viewing small images (pixels stay visible)."""
    factor = max(1, math.ceil(min_side / max(1, min(image.size))))
    return image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def fit_to(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """ComfyUI's ImageScale (area resampling, centre crop) to width x height."""
    if tuple(image.shape[1:3]) == (height, width):
        return image
    return runtime().run_node("ImageScale", image=image, upscale_method="area", width=int(width), height=int(height),
                              crop="center")[0]


def latent_view(latent: dict) -> Image.Image:
    """A noise latent shown as an image: its first three channels, each mapped +-2 std to [0, 1]."""
    z = latent["samples"][0, :3].float()
    if z.shape[0] < 3:
        z = z[:1].expand(3, *z.shape[1:])
    z = (z - z.mean()) / (4 * z.std().clamp_min(1e-8)) + 0.5
    return to_pil(z.permute(1, 2, 0)[None])


# ------------------------------------------------------------------------------------ checks


def _check_int(name: str, value, lo: int, hi: int, multiple: int = 1) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a whole number, got {value!r}.") from None
    if not lo <= v <= hi:
        raise UserError(f"{name}={v} is outside {lo}..{hi}.")
    if v % multiple:
        raise UserError(f"{name}={v} must be a multiple of {multiple} (e.g. {v - v % multiple or multiple}).")
    return v


# ------------------------------------------------------------------------------------ tab: HDiT


@exclusive
def generate(source: str | None, label: str | None = None, steps: int = 20, seed: int = 0, cfg: float = 3.0,
             batch: int = 4, sampler: str = "dpmpp_2m", scheduler: str = "karras", prompt: str = "",
             report: Report | None = None) -> tuple[Image.Image, str]:
    """Sample ``batch`` images at the model's native size; returns (row of images, description)."""
    steps = _check_int("steps", steps, 1, 200)
    batch = _check_int("batch", batch, 1, 16)
    bundle = load(source)
    pos, neg = conditioning(bundle, label, prompt)
    latent = empty_latent(bundle, bundle.native, bundle.native, batch)
    t0 = time.perf_counter()
    with tracked(report, f"sampling {steps} steps"):
        out = sample(bundle, bundle.model, pos, neg, latent, steps, seed, cfg, sampler, scheduler)
    images = decode(bundle, out)
    what = label if bundle.kind == "hdit" else repr(prompt)
    info = (f"{batch} x {bundle.native}x{bundle.native} px, {what}, {steps} steps {sampler}/{scheduler}, cfg {cfg}, "
            f"seed {seed}: {time.perf_counter() - t0:.1f} s on {runtime().device}.")
    return enlarge(to_pil(images)), info


# ------------------------------------------------------------------------------------ tab: FSTD


def tiled_methods() -> list[str]:
    return node_options("UltraResTiledDiffusion", "method")


def tile_plan(method: str, width: int, height: int, tile: int, overlap: int, step: int, seed: int,
              reset_interval: int, ratio: int):
    """The tiles UltraResTiledDiffusion evaluates at ``step`` (its planner, in latent pixels)."""
    from ultrares.kernels.tiling import TilePlanner

    methods = getattr(_module_of("UltraResTiledDiffusion"), "METHOD_CHOICES", {})
    key = methods.get(method, method)
    h, w, t = height // ratio, width // ratio, max(1, tile // ratio)
    ov = min(overlap // ratio, max(0, min(t, h, w) - 1))
    return TilePlanner(key, h, w, t, t, overlap=ov, reset_interval=reset_interval, seed=seed).plan(int(step))


def draw_tiles(image: Image.Image, plan, ratio: int) -> Image.Image:
    """Outline each tile of a plan (latent boxes, ``ratio`` image pixels per latent pixel) on the
    image; strips no tile covers are shaded red."""
    base = image.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    if plan.uncovered is not None:
        mask = plan.uncovered.cpu().numpy().astype(np.uint8) * 90
        red = Image.new("RGBA", (mask.shape[1], mask.shape[0]), (255, 0, 0, 255))
        red.putalpha(Image.fromarray(mask))
        layer.alpha_composite(red.resize(base.size, Image.NEAREST))
    colours = [(0, 160, 255, 255), (255, 140, 0, 255), (0, 200, 90, 255), (200, 0, 200, 255)]
    dy, dx = plan.roll
    for i, tl in enumerate(plan.tiles):
        y, x = (tl.y - dy) * ratio, (tl.x - dx) * ratio  # SpotDiffusion tiles live in the rolled latent
        draw.rectangle([x, y, x + tl.w * ratio - 1, y + tl.h * ratio - 1], outline=colours[i % len(colours)], width=2)
    return Image.alpha_composite(base, layer).convert("RGB")


@exclusive
def any_size(source: str | None, label: str | None = None, width: int = 192, height: int = 128,
             method: str = "FSTD", tile: int = 0, overlap: int = 16, steps: int = 20, seed: int = 0,
             cfg: float = 3.0, show_step: int = 1, compare: bool = False, prompt: str = "",
             report: Report | None = None) -> tuple[Image.Image, Image.Image, Image.Image | None, str]:
    """Sample at any width x height with UltraResTiledDiffusion (tiles at the model's native size
    unless ``tile`` is set). Returns (image, the tile grid of ``show_step`` drawn on it, the untiled
    image when ``compare``, description)."""
    bundle = load(source)
    td = _module_of("UltraResTiledDiffusion")  # pixels per latent pixel, as the node computes it
    ratio = td.latent_downscale_ratio(bundle.model) if hasattr(td, "latent_downscale_ratio") else (
        1 if bundle.kind == "hdit" else 8)
    multiple = 16 if bundle.kind == "hdit" else 8
    width = _check_int("width", width, 16, MAX_SIDE, multiple)
    height = _check_int("height", height, 16, MAX_SIDE, multiple)
    steps = _check_int("steps", steps, 1, 200)
    tile = int(tile) or bundle.native
    if method not in tiled_methods():
        raise UserError(f"method {method!r} is not one of {tiled_methods()}.")
    show_step = _check_int("show step", show_step, 0, steps - 1)
    settings = dict(method=method, tile_width=tile, tile_height=tile, overlap=int(overlap), tile_batch_size=4,
                    reset_interval=4, seed=int(seed))
    verdict = runtime().validate("UltraResTiledDiffusion", **settings)
    if verdict is not True:
        raise UserError(str(verdict))
    (tiled,) = runtime().run_node("UltraResTiledDiffusion", model=bundle.model, **settings)
    pos, neg = conditioning(bundle, label, prompt)
    latent = empty_latent(bundle, width, height)
    t0 = time.perf_counter()
    with tracked(report, f"{method}: {width}x{height} in {tile}px tiles"):
        out = sample(bundle, tiled, pos, neg, latent, steps, seed, cfg)
    t_tiled = time.perf_counter() - t0
    image = enlarge(to_pil(decode(bundle, out)))
    scale = image.width // width
    plan = tile_plan(method, width, height, tile, int(overlap), show_step, int(seed), 4, ratio)
    grid = draw_tiles(image, plan, ratio * scale)
    info = (f"{width}x{height} px with {method} tiles of {tile} px: {t_tiled:.1f} s. Step {show_step}: "
            f"{len(plan.tiles)} tiles, grid offset {tuple(v * ratio for v in plan.offset)} px, evaluated area "
            f"{plan.tile_area_ratio:.2f}x the image" + (", red = strips filled from the previous step's prediction"
                                                         if plan.uncovered is not None else "") + ".")
    plain = None
    if compare:
        t0 = time.perf_counter()
        with tracked(report, f"untiled: {width}x{height}"):
            plain_out = sample(bundle, bundle.model, pos, neg, latent, steps, seed, cfg)
        plain = enlarge(to_pil(decode(bundle, plain_out)))
        info += f" Untiled (same seed): {time.perf_counter() - t0:.1f} s."
    return image, grid, plain, info


# ------------------------------------------------------------------------------------ tab: Relay


@exclusive
def relay(source: str | None, label: str | None = None, image=None, factor: int = 2, steps: int = 30,
          truncation_sigma: float = 0.9, seed: int = 0, cfg: float = 3.0, s_block: float = 0.15,
          s_noise: float = 0.2, base_steps: int = 20, prompt: str = "",
          report: Report | None = None) -> tuple[Image.Image, Image.Image, str]:
    """Relay upscaling: the uploaded image (fitted to the model's native size), or one generated at
    the native size, up-scaled ``factor`` x by UltraResRelayUpscale. Returns (low-res shown at the
    output size, relay result, description)."""
    bundle = load(source)
    factor = _check_int("factor", factor, 2, 8)
    steps = _check_int("steps", steps, 2, 1000)
    pos, neg = conditioning(bundle, label, prompt)
    r = runtime()
    if image is None:
        latent = empty_latent(bundle, bundle.native, bundle.native)
        with tracked(report, f"stage one: {bundle.native}px from noise"):
            low = sample(bundle, bundle.model, pos, neg, latent, _check_int("base steps", base_steps, 1, 200), seed, cfg)
        where = f"generated at {bundle.native} px"
    else:
        pixels = fit_to(from_pil(image), bundle.native, bundle.native)
        low = encode(bundle, pixels)
        where = f"upload fitted to {bundle.native} px"
    settings = node_defaults("UltraResRelayUpscale")
    settings.update(factor=factor, seed=int(seed), steps=steps, truncation_sigma=float(truncation_sigma), cfg=float(cfg),
                    s_block=float(s_block), s_noise=float(s_noise))
    verdict = r.validate("UltraResRelayUpscale", **settings)
    if verdict is not True:
        raise UserError(str(verdict))
    t0 = time.perf_counter()
    with tracked(report, f"relay stage two: x{factor}"):
        (up,) = r.run_node("UltraResRelayUpscale", model=bundle.model, positive=pos, negative=neg, latent=low, **settings)
    seconds = time.perf_counter() - t0
    low_img, up_img = to_pil(decode(bundle, low)), to_pil(decode(bundle, up))
    low_view = low_img.resize(up_img.size, Image.NEAREST)
    info = (f"{where}, relay x{factor} to {up_img.width}x{up_img.height} px from sigma < {truncation_sigma} "
            f"({steps}-level Karras grid, truncated): {seconds:.1f} s.")
    return enlarge(low_view), enlarge(up_img), info


# ------------------------------------------------------------------------------------ tab: LinFusion


def linfusion_files() -> list[str]:
    return node_options("UltraResLinFusionLoader", "lf_name")


@exclusive
def linfusion_timing(source: str | None, lf_name: str | None, prompt: str = "a photo of a cat", width: int = 512,
                     height: int = 512, steps: int = 10, seed: int = 0, cfg: float = 6.0,
                     report: Report | None = None) -> tuple[Image.Image, Image.Image, str]:
    """The same sampling with the model's softmax self-attention and with LinFusion; returns
    (softmax image, LinFusion image, timing table in Markdown)."""
    if not source or not source.startswith(CKPT_PREFIX):
        raise UserError("LinFusion replaces the self-attention of SD1.x/SD2.x/SDXL UNets: pick a Stable Diffusion "
                        "checkpoint (put one in ComfyUI/models/checkpoints). The embedded HDiT has no UNet.")
    if not lf_name:
        raise UserError("No LinFusion weights: put the official release (Yuanshi/LinFusion-1-5 etc.: config.json + "
                        "diffusion_pytorch_model.safetensors) in ComfyUI/models/linfusion, or distil your own with "
                        "`python -m ultrares.kernels.linfusion_distill`.")
    bundle = load(source)
    width = _check_int("width", width, 64, MAX_SIDE, 8)
    height = _check_int("height", height, 64, MAX_SIDE, 8)
    steps = _check_int("steps", steps, 1, 200)
    r = runtime()
    (weights,) = r.run_node("UltraResLinFusionLoader", lf_name=lf_name)
    (lin_model,) = r.run_node("UltraResLinFusionApply", model=bundle.model, linfusion=weights,
                              **{k: v for k, v in node_defaults("UltraResLinFusionApply").items()
                                 if k not in ("model", "linfusion")})
    pos, neg = conditioning(bundle, None, prompt)
    latent = empty_latent(bundle, width, height)
    times = {}
    images = {}
    for name, model in (("softmax attention", bundle.model), ("LinFusion", lin_model)):
        t0 = time.perf_counter()
        with tracked(report, f"{name}: {steps} steps at {width}x{height}"):
            out = sample(bundle, model, pos, neg, latent, steps, seed, cfg)
        times[name] = time.perf_counter() - t0
        images[name] = to_pil(decode(bundle, out))
    base, lin = times["softmax attention"], times["LinFusion"]
    table = ("| attention | seconds | per step |\n|---|---|---|\n"
             + "".join(f"| {k} | {v:.2f} | {v / steps:.3f} |\n" for k, v in times.items())
             + f"\nLinFusion / softmax time: **{lin / base:.2f}** at {width}x{height} ({(width // 8) * (height // 8)} "
               f"latent tokens) on {r.device}.")
    return images["softmax attention"], images["LinFusion"], table


# ------------------------------------------------------------------------------------ tab: DiGIT


def digit_encoders() -> list[str]:
    return node_options("UltraResDiGITEncoderLoader", "encoder_name")


def digit_codebooks() -> list[str]:
    return node_options("UltraResDiGITCodebookLoader", "codebook_name")


def digit_decode_modes() -> list[str]:
    return node_options("UltraResDiGITDecode", "mode")


_DIGIT_CACHE: dict[tuple[str, str], tuple] = {}


@exclusive
def digit_tokens(image, encoder: str | None = None, codebook: str | None = None, image_size: int = 256,
                 fit: str = "center_crop", mode: str = "nearest_patch",
                 report: Report | None = None) -> tuple[Image.Image, Image.Image, Image.Image, str]:
    """Tokenize an image with DiGIT; returns (image as tokenized, token map, tokens decoded, description)."""
    r = runtime()
    encoder = encoder or (digit_encoders() or [None])[0]
    codebook = codebook or (digit_codebooks() or [None])[0]
    if not encoder or not codebook:
        raise UserError("DiGIT needs a DINOv2 encoder and a codebook in the digit models folder; the embedded ones "
                        "are made by `make setup` (models/digit). Run it, or put dinov2_vitb14_reg4_pretrain.pth and "
                        "km_8k.npy in ComfyUI/models/digit.")
    pixels = from_pil(image, "image")
    image_size = _check_int("image size", image_size, 16, 1024, 16)
    key = (encoder, codebook)
    if key not in _DIGIT_CACHE:
        _DIGIT_CACHE.clear()
        with tracked(report, "loading the encoder and codebook"):
            (enc,) = r.run_node("UltraResDiGITEncoderLoader", encoder_name=encoder)
            (cb,) = r.run_node("UltraResDiGITCodebookLoader", codebook_name=codebook)
        _DIGIT_CACHE[key] = (enc, cb)
    enc, cb = _DIGIT_CACHE[key]
    t0 = time.perf_counter()
    with tracked(report, "tokenizing"):
        tokens, token_map, seen = r.run_node("UltraResDiGITTokenize", encoder=enc, codebook=cb, image=pixels,
                                             image_size=image_size, fit=fit)
        if mode in ("nearest_patch",) and getattr(cb, "atlas", True) is None:
            mode = "centroid_pca"
        (decoded,) = r.run_node("UltraResDiGITDecode", tokens=tokens, codebook=cb, mode=mode)
    ids = tokens.ids
    info = (f"{ids.shape[-2]}x{ids.shape[-1]} tokens from codebook {codebook} (K = {tokens.k}); "
            f"{int(ids.unique().numel())} distinct ids in this image; decoded as {mode}; "
            f"{time.perf_counter() - t0:.1f} s.")
    return enlarge(to_pil(seen)), enlarge(to_pil(token_map)), enlarge(to_pil(decoded)), info


# ------------------------------------------------------------------------------------ tab: inversion


def inversion_schedulers() -> list[str]:
    return node_options("UltraResDDIMInvert", "scheduler")


@exclusive
def invert(source: str | None, label: str | None = None, image=None, steps: int = 50, level: float = 1.0,
           scheduler: str = "simple", seed: int = 0, prompt: str = "",
           report: Report | None = None) -> tuple[Image.Image, Image.Image, Image.Image, str]:
    """DDIM-invert an image (uploaded, fitted to the model's native size; or generated) and
    reconstruct it; returns (input, inverted noise, reconstruction, PSNR text)."""
    from ultrares.kernels.inversion import psnr

    bundle = load(source)
    steps = _check_int("steps", steps, 1, 1000)
    if not 0.0 < float(level) <= 1.0:
        raise UserError(f"level={level} must be in (0, 1]: a fraction of the model's noise schedule.")
    r = runtime()
    pos, neg = conditioning(bundle, label, prompt)
    if image is None:
        latent = empty_latent(bundle, bundle.native, bundle.native)
        with tracked(report, "generating an input"):
            clean = sample(bundle, bundle.model, pos, neg, latent, 20, seed, 1.0 if bundle.kind == "hdit" else 6.0)
        pixels = decode(bundle, clean)
    else:
        pixels = fit_to(from_pil(image), bundle.native, bundle.native)
    latent = encode(bundle, pixels)
    opts = dict(steps=steps, level=float(level), scheduler=scheduler, positive=pos, negative=neg, cfg=1.0)
    verdict = r.validate("UltraResDDIMInvert", steps=steps, level=float(level), scheduler=scheduler, cfg=1.0)
    if verdict is not True:
        raise UserError(str(verdict))
    with tracked(report, f"inverting ({steps} DDIM steps)"):
        (noise,) = r.run_node("UltraResDDIMInvert", model=bundle.model, latent=latent, refine_iters=0, **opts)
    with tracked(report, f"reconstructing ({steps} DDIM steps)"):
        (rec,) = r.run_node("UltraResDDIMGenerate", model=bundle.model, noise=noise, **opts)
    rec_pixels = decode(bundle, rec)
    value = psnr(rec_pixels, pixels)
    text = (f"PSNR(reconstruction, input) = {value:.2f} dB ({steps} steps, level {level}, {scheduler}); "
            f"noise std {float(noise['samples'].std()):.2f}.")
    return enlarge(to_pil(pixels)), enlarge(latent_view(noise)), enlarge(to_pil(rec_pixels)), text


def describe_runtime() -> str:
    r = runtime()
    return json.dumps({"comfyui": str(r.comfy_path), "device": r.device, "ultrares_nodes": len(r.pack_nodes)})
