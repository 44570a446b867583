"""What every demo tab shares, with no Gradio and no algorithm in it: the booted ComfyUI, one run
at a time with progress and Cancel, the nodes' own input ranges, the model sources and their cache,
and the conversions between PIL images and ComfyUI's IMAGE / LATENT.

The tabs (:mod:`ultrares.demo.tabs`) reach the pack only through node ids -- :func:`run_node`,
:func:`input_range`, :func:`node_defaults`, :func:`node_options` look the class up in ComfyUI's
node registry -- and through ``ultrares.kernels``. Problems the user can fix raise
:class:`UserError` with an actionable message; a cancelled run raises
``comfy.model_management.InterruptProcessingException``. ``report(stage, value, total)`` receives
the progress of every sampling loop (through ComfyUI's global progress-bar hook).

Model sources: the embedded HDiT (``models/hdit``, class-conditional, pixel space) and every file in
ComfyUI's ``checkpoints`` folder (text-conditional, with their VAE).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .runtime import Runtime, boot, progress_hook

LOG = logging.getLogger("ultrares.demo")
Report = Callable[[str, int, int], None]

EMBEDDED_HDIT = "ultrares-emoji64.safetensors"
HDIT_PREFIX = "HDiT: "
CKPT_PREFIX = "checkpoint: "
UNCONDITIONAL = "unconditional"
WEIGHT_EXTS = (".safetensors", ".pth", ".pt", ".ckpt")
# Demo guards, narrower than the nodes' own ranges on purpose: larger images take minutes per step
# on a CPU, and a shared demo should not be asked for thousands of images at once.
MAX_SIDE = 2048
MAX_BATCH = 16


class UserError(ValueError):
    """A problem the user can fix; the message says what to do."""


def _noop(stage: str, value: int, total: int) -> None:
    pass


# ------------------------------------------------------------------------------------ runtime


def runtime() -> Runtime:
    return boot()


def run_node(node_id: str, **inputs):
    """Run one node (the pack's or ComfyUI's) by its id; returns its outputs tuple."""
    return runtime().run_node(node_id, **inputs)


def validate(node_id: str, **inputs) -> None:
    """The node's queue-time check; its message becomes a :class:`UserError`."""
    verdict = runtime().validate(node_id, **inputs)
    if verdict is not True:
        raise UserError(str(verdict))


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
    (a Cancel pressed while nothing was running must not stop it), and each run clears it when it ends
    (a Cancel that came after its last check must not stop later work in this process). A generator handler (one that
    yields each stage's outputs as it finishes) holds the lock while it computes, not while it waits
    to be resumed, so a page that stops reading it cannot block the next run."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stages(*args, **kwargs):
            import comfy.model_management

            it = fn(*args, **kwargs)
            first = True
            try:
                while True:
                    with _RUN_LOCK:
                        if first:
                            comfy.model_management.interrupt_current_processing(False)
                            first = False
                        try:
                            item = next(it)
                        except StopIteration:
                            return
                    yield item
            finally:  # a Cancel that came after the last check must not stop later work in this process
                with _RUN_LOCK:
                    comfy.model_management.interrupt_current_processing(False)

        return stages

    @functools.wraps(fn)
    def run(*args, **kwargs):
        import comfy.model_management

        with _RUN_LOCK:
            comfy.model_management.interrupt_current_processing(False)
            try:
                return fn(*args, **kwargs)
            finally:
                comfy.model_management.interrupt_current_processing(False)

    return run


def last(stages):
    """The final outputs of a generator handler (what a caller that needs no streaming wants)."""
    out = None
    for out in stages:  # noqa: B007
        pass
    return out


def cancel() -> None:
    """Ask the running sampling loop to stop (it raises InterruptProcessingException)."""
    import comfy.model_management

    comfy.model_management.interrupt_current_processing(True)


# ------------------------------------------------------------------------------------ node schemas


def node_options(node_id: str, input_name: str) -> list[str]:
    """The choices a node offers for a combo input (its own file lists)."""
    r = runtime()
    if not r.has(node_id):
        return []
    kind, opts = r.input_spec(node_id, input_name)
    if isinstance(kind, (list, tuple)):
        return [str(o) for o in kind]
    if kind == "COMBO":
        return [str(o) for o in opts.get("options", [])]
    return []


def node_defaults(node_id: str) -> dict:
    """Default values of a node's widget inputs (what a freshly added node shows)."""
    types = runtime().node_class(node_id).INPUT_TYPES()
    out = {}
    for group in ("required", "optional"):
        for name, spec in types.get(group, {}).items():
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if "default" in opts:
                out[name] = opts["default"]
            elif isinstance(spec[0], (list, tuple)) and spec[0]:
                out[name] = spec[0][0]
    return out


@dataclass(frozen=True)
class InputRange:
    """A number input's range as its node declares it (/object_info): the demo's sliders, number
    boxes and checks are built from it, so the node stays the one place a range is typed."""

    kind: str  # "INT" | "FLOAT"
    min: float | None
    max: float | None
    default: float | None
    step: float | None

    def narrowed(self, lo=None, hi=None) -> InputRange:
        """The same range, narrowed by a demo guard (:data:`MAX_SIDE`...); never widened."""
        new_lo = self.min if lo is None or (self.min is not None and lo < self.min) else lo
        new_hi = self.max if hi is None or (self.max is not None and hi > self.max) else hi
        return InputRange(self.kind, new_lo, new_hi, self.default, self.step)


def input_range(node_id: str, name: str) -> InputRange:
    kind, opts = runtime().input_spec(node_id, name)
    if kind not in ("INT", "FLOAT"):
        raise KeyError(f"{node_id}.{name} is a {kind} input, not a number")
    return InputRange(kind, opts.get("min"), opts.get("max"), opts.get("default"), opts.get("step"))


def check(name: str, value, rng: InputRange, multiple: int = 1):
    """``value`` converted to the input's kind and inside its range, else a :class:`UserError`
    naming the input, the value and the allowed range."""
    whole = rng.kind == "INT"
    try:
        v = int(value) if whole else float(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{name} must be a {'whole number' if whole else 'number'}, got {value!r}.") from None
    if not math.isfinite(v) or (rng.min is not None and v < rng.min) or (rng.max is not None and v > rng.max):
        raise UserError(f"{name}={v} is outside {rng.min}..{rng.max}.")
    if whole and multiple > 1 and v % multiple:
        raise UserError(f"{name}={v} must be a multiple of {multiple} (e.g. {v - v % multiple or multiple}).")
    return v


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
    return (
        f"No model to sample with: the embedded HDiT model models/hdit/{EMBEDDED_HDIT} is missing and ComfyUI's "
        "checkpoints folder is empty. Run `make embedded-models` (or `make setup`) to build the embedded model, "
        "or put a Stable Diffusion checkpoint in ComfyUI/models/checkpoints, then restart the demo."
    )


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


def _native_side(model) -> int:
    """The model's native side in pixels, as the Any-Size plan node reads it from the model: the
    square it would generate at natively for a square target."""
    (side, *_) = run_node(
        "UltraResAnySizePlan", target_width=16384, target_height=16384, native_size=0, model=model
    )
    return int(side)


def load(source: str | None) -> Bundle:
    """Load (once) the model behind a source name from :func:`sources`."""
    if not source:
        raise UserError(missing_model_message())
    if source in _CACHE:
        return _CACHE[source]
    if source.startswith(HDIT_PREFIX):
        name = source[len(HDIT_PREFIX) :]
        if name not in hdit_files():
            raise UserError(
                f"HDiT model {name!r} is not in the hdit models folder (ComfyUI/models/hdit or the pack's "
                f"models/hdit); available: {hdit_files() or 'none'}."
            )
        model, vae, num_classes = run_node("UltraResHDiTLoader", model_name=name, weight_dtype="float32")
        cfg = model.model.hdit_config
        names = list(cfg.raw.get("dataset", {}).get("class_names") or [])
        if len(names) != int(num_classes):
            names = [f"class {i}" for i in range(int(num_classes))]
        bundle = Bundle(source, "hdit", model, vae, class_names=names, native=int(cfg.input_size[0]))
    elif source.startswith(CKPT_PREFIX):
        name = source[len(CKPT_PREFIX) :]
        if name not in checkpoint_files():
            raise UserError(
                f"checkpoint {name!r} is not in ComfyUI's checkpoints folder; available: "
                f"{checkpoint_files() or 'none'}."
            )
        model, clip, vae = run_node("CheckpointLoaderSimple", ckpt_name=name)[:3]
        bundle = Bundle(source, "checkpoint", model, vae, clip=clip, native=_native_side(model))
    else:
        raise UserError(f"unknown model source {source!r}; pick one of {sources()}.")
    _CACHE.clear()  # keep one model in memory
    _CACHE[source] = bundle
    return bundle


_SETS: dict[tuple[str, ...], list[Bundle]] = {}


def load_all(sources: list[str]) -> list[Bundle]:
    """Load (once) several model sources that a pipeline needs in memory together (its stages), in
    order; the last set loaded stays cached beside :func:`load`'s one model."""
    key = tuple(sources)
    if key not in _SETS:
        bundles = [load(s) for s in sources]  # each load keeps only itself cached; the set holds them all
        _SETS.clear()
        _SETS[key] = bundles
    return _SETS[key]


def tile_settings(method: str, tile: int, overlap: int, seed: int) -> dict:
    """UltraResTiledDiffusion's inputs for a run: the node's own defaults (tile batch, reset interval),
    the tab's choices (method label, square tiles in pixels, overlap, seed)."""
    settings = {k: v for k, v in node_defaults("UltraResTiledDiffusion").items() if k != "model"}
    settings.update(
        method=method, tile_width=int(tile), tile_height=int(tile), overlap=int(overlap), seed=int(seed)
    )
    return settings


def model_config(bundle: Bundle) -> dict:
    """An HDiT source's whole config (the file's metadata: model, dataset, relay sections); {} otherwise."""
    cfg = getattr(bundle.model.model, "hdit_config", None) if bundle.kind == "hdit" else None
    return dict(cfg.raw) if cfg is not None else {}


def labels_of(source: str | None) -> list[str]:
    """Class names of an HDiT source ([] for checkpoints, nothing, or a file that does not load)."""
    if not source or not source.startswith(HDIT_PREFIX):
        return []
    try:
        return load(source).labels
    except ValueError as exc:
        LOG.warning("UltraRes demo: %s", exc)
        return []


def conditioning(bundle: Bundle, label: str | None, prompt: str = "", negative: str = ""):
    """(positive, negative) CONDITIONING: an HDiT class (or unconditional), or a text prompt."""
    if bundle.kind == "hdit":
        label = label or (bundle.class_names[0] if bundle.class_names else UNCONDITIONAL)
        if label == UNCONDITIONAL or not bundle.class_names:
            return run_node("UltraResHDiTClass", class_id=0, unconditional=True)
        if label not in bundle.class_names:
            raise UserError(f"class {label!r} is not one of this model's classes: {bundle.labels}.")
        return run_node("UltraResHDiTClass", class_id=bundle.class_names.index(label), unconditional=False)
    (pos,) = run_node("CLIPTextEncode", text=prompt or "", clip=bundle.clip)
    (neg,) = run_node("CLIPTextEncode", text=negative or "", clip=bundle.clip)
    return pos, neg


def source_kind(source: str | None) -> str:
    """ "hdit" or "checkpoint": the kind of model a source name from :func:`sources` loads."""
    return "hdit" if source and source.startswith(HDIT_PREFIX) else "checkpoint"


def empty_latent_node(kind: str) -> str:
    """The node that starts a latent for a kind of model (pixel space for HDiT)."""
    return "EmptyChromaRadianceLatentImage" if kind == "hdit" else "EmptyLatentImage"


def size_range(kind: str, name: str) -> InputRange:
    """The width/height range of the kind's empty-latent node, capped at :data:`MAX_SIDE`."""
    return input_range(empty_latent_node(kind), name).narrowed(hi=MAX_SIDE)


def empty_latent(bundle: Bundle, width: int, height: int, batch: int = 1) -> dict:
    return run_node(
        empty_latent_node(bundle.kind), width=int(width), height=int(height), batch_size=int(batch)
    )[0]


def decode(bundle: Bundle, latent: dict) -> torch.Tensor:
    return run_node("VAEDecode", samples=latent, vae=bundle.vae)[0]


def encode(bundle: Bundle, image: torch.Tensor) -> dict:
    return run_node("VAEEncode", pixels=image, vae=bundle.vae)[0]


def sample(
    bundle: Bundle,
    model,
    positive,
    negative,
    latent: dict,
    steps: int,
    seed: int,
    cfg: float,
    sampler: str = "dpmpp_2m",
    scheduler: str = "karras",
    denoise: float = 1.0,
) -> dict:
    return run_node(
        "KSampler",
        model=model,
        seed=int(seed),
        steps=int(steps),
        cfg=float(cfg),
        sampler_name=sampler,
        scheduler=scheduler,
        positive=positive,
        negative=negative,
        latent_image=latent,
        denoise=float(denoise),
    )[0]


# ------------------------------------------------------------------------------------ images


def to_pil(images: torch.Tensor) -> Image.Image:
    """ComfyUI IMAGE [B, H, W, C] in [0, 1] -> one PIL image (a row of the batch)."""
    arr = (images.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return Image.fromarray(np.concatenate(list(arr[..., :3]), axis=1))


def from_pil(image, what: str = "image", background=(255, 255, 255)) -> torch.Tensor:
    """PIL / numpy image (any mode; alpha over ``background``, RGB 0..255, white by default) -> ComfyUI
    IMAGE [1, H, W, 3] float32 in [0, 1]."""
    if image is None:
        raise UserError(f"{what}: upload an image first (or click one of the examples).")
    if isinstance(image, (str, Path)):
        image = Image.open(image)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, (*(int(c) for c in background), 255))
        image = Image.alpha_composite(canvas, image)
    image = image.convert("RGB")
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]


def enlarge(image: Image.Image, min_side: int = 256) -> Image.Image:
    """Nearest-neighbour enlargement for viewing small images (pixels stay visible)."""
    factor = max(1, math.ceil(min_side / max(1, min(image.size))))
    return (
        image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    )


def fit_to(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """ComfyUI's ImageScale (area resampling, centre crop) to width x height."""
    if tuple(image.shape[1:3]) == (height, width):
        return image
    return run_node(
        "ImageScale", image=image, upscale_method="area", width=int(width), height=int(height), crop="center"
    )[0]


def latent_view(latent: dict) -> Image.Image:
    """A noise latent shown as an image: its first three channels, each mapped +-2 std to [0, 1]."""
    z = latent["samples"][0, :3].float()
    if z.shape[0] < 3:
        z = z[:1].expand(3, *z.shape[1:])
    z = (z - z.mean()) / (4 * z.std().clamp_min(1e-8)) + 0.5
    return to_pil(z.permute(1, 2, 0)[None])
