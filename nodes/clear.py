"""CLEAR as ComfyUI nodes (thin adapters over ``kernels/clear.py`` and ``kernels/clear_format.py``).

- ``UltraResCLEARLoader``: an official CLEAR file from ``models/clear`` -> CLEAR (header checked,
  tensors read later by Apply, after the layout is checked against the model).
- ``UltraResCLEARApply``: MODEL + CLEAR -> a MODEL clone where
  * the image-stream attention projections are replaced through ComfyUI's weight patching
    (``("set", ...)`` patches on the fused keys, with ComfyUI's row-range offsets on
    ``single_blocks.N.linear1`` so its MLP rows stay as they are): LoRAs added after Apply CLEAR
    stack on top; the model manager, low-VRAM and dynamic loading handle them like any patch;
  * a ``DIFFUSION_MODEL`` wrapper records each call's token grid (latent size / patch size) and
    text length and installs, for that call only, ComfyUI's ``optimized_attention_override``
    (chaining any override already present), which runs the CLEAR attention in FLUX's double and
    single blocks and hands every other attention call through unchanged;
  * with an NTK factor != 1 the RoPE embedder is object-patched by a copy with ``theta * factor``.
"""

from __future__ import annotations

import copy
import logging
import os

import comfy.model_base
import comfy.patcher_extension
import torch
from comfy_api.latest import io

from ..kernels import clear as K
from ..kernels import clear_format as fmt
from ._inputs import CheckedNode
from ._paths import model_file, model_files
from ._sampling import model_family

CATEGORY = "UltraRes/clear"
FOLDER = "clear"
WRAPPER_KEY = "ultrares_clear"
VAE_FACTOR = 8  # FLUX.1 latent -> pixels

ClearType = io.Custom("CLEAR")


def require_flux1(model):
    """The FLUX.1 diffusion model of ``model``; ``ValueError`` naming the family for anything else."""
    from comfy.ldm.flux.model import Flux

    net = model.get_model_object("diffusion_model")
    base = model.model
    ok = type(base) is comfy.model_base.Flux and isinstance(net, Flux)
    params = getattr(net, "params", None)
    if ok and (getattr(params, "global_modulation", False) or getattr(params, "mlp_silu_act", False)):
        ok = False
    if not ok:
        family = model_family(model)
        raise ValueError(
            f"model: this is a {family} model ({type(base).__name__} with a {type(net).__name__}); CLEAR "
            "weights exist only for FLUX.1 (dev, schnell, Krea, Kontext and their fine-tunes). Connect a FLUX.1 "
            "model or remove Apply CLEAR from this graph."
        )
    return net


class ClearRunner:
    """The ``DIFFUSION_MODEL`` wrapper: one per patched model; its settings never change after
    construction (only a log-once flag does)."""

    def __init__(self, window: int, down_factor: int, spatial: dict, proportional: bool):
        self.window, self.down_factor = int(window), int(down_factor)
        self.spatial = spatial  # ("double"|"single", index) -> [df, df] float32
        self.proportional = bool(proportional)
        self._warned = False

    def grid(self, net, x: torch.Tensor) -> tuple[int, int]:
        ps = int(getattr(net, "patch_size", 2))
        h, w = -(-x.shape[-2] // ps), -(-x.shape[-1] // ps)
        df = self.down_factor
        if df > 1 and (h % df or w % df):
            unit = ps * df  # latent pixels per multiple
            good_h, good_w = K.nearest_divisible(h, df) * ps, K.nearest_divisible(w, df) * ps
            raise ValueError(
                f"UltraResCLEARApply: the latent (or tile) is {x.shape[-1] * VAE_FACTOR}x{x.shape[-2] * VAE_FACTOR} px "
                f"({w}x{h} tokens), but CLEAR down factor {df} needs token sides divisible by {df}, i.e. image "
                f"sides in multiples of {unit * VAE_FACTOR} px. Use {good_w * VAE_FACTOR}x{good_h * VAE_FACTOR} px "
                f"(the nearest size that works) for the latent's width/height or the tile size."
            )
        return h, w

    def __call__(self, executor, *args, **kwargs):
        net = executor.class_obj
        x, context = args[0], (args[2] if len(args) > 2 else kwargs.get("context"))
        in_kwargs = "transformer_options" in kwargs
        options = kwargs["transformer_options"] if in_kwargs else (args[7] if len(args) > 7 else None)
        if options is None or context is None:
            return executor(*args, **kwargs)
        h, w = self.grid(net, x)
        options = dict(options)
        prev = options.get("optimized_attention_override")
        call = (int(context.shape[1]), h, w)
        options["optimized_attention_override"] = lambda func, *a, **kw: self.attend(
            call, prev, func, *a, **kw
        )
        if in_kwargs:
            kwargs["transformer_options"] = options
        else:
            args = (*args[:7], options, *args[8:])
        return executor(*args, **kwargs)

    def attend(self, call, prev, func, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        kind, index = options.get("block_type"), options.get("block_index")
        plain = len(args) < 4 or not kwargs.get("skip_reshape") or kwargs.get("skip_output_reshape")
        q = args[0] if args else None
        txt, h, w = call
        if plain or kind not in ("double", "single") or q.ndim != 4 or q.shape[2] < txt + h * w:
            return prev(func, *args, **kwargs) if prev is not None else func(*args, **kwargs)
        if kwargs.get("mask") is not None:
            if not self._warned:
                logging.warning("UltraRes CLEAR: an attention mask is set; those calls keep full attention.")
                self._warned = True
            return prev(func, *args, **kwargs) if prev is not None else func(*args, **kwargs)
        q, k, v, heads = args[:4]
        b, _, seq, d = q.shape
        layout = K.Layout.from_seq(seq, txt, h, w)
        sw = self.spatial.get((kind, int(index))) if self.down_factor > 1 else None
        if self.down_factor > 1 and sw is None:
            raise ValueError(f"UltraResCLEARApply: no spatial_weight for {kind} block {index}")
        scale = K.attention_scale(d, seq, self.proportional, self.down_factor > 1)
        out = K.clear_attention(
            q, k, v, layout, self.window, self.down_factor, sw, scale=scale, heads_last=True
        )
        return out.reshape(b, seq, heads * d)


def patch_model(
    model, clear: fmt.ClearFile, window: int = 0, proportional: bool = True, ntk_factor: float = 1.0
):
    """A clone of ``model`` running CLEAR; refuses non-FLUX.1 models and files of another size."""
    net = require_flux1(model)
    if WRAPPER_KEY in model.wrappers.get(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, {}):
        raise ValueError(
            "model: CLEAR is already applied to this model; connect the model from before Apply CLEAR."
        )
    hidden = int(net.hidden_size)
    n_double, n_single = len(net.double_blocks), len(net.single_blocks)
    try:
        clear.check_model(hidden, n_double, n_single, f"this FLUX.1 model ({model_family(model)})")
        tensors = clear.load()
    except fmt.ClearFormatError as exc:
        raise ValueError(f"clear: {exc}") from None
    m = model.clone()
    patches = {}
    for key, offset, tensor in fmt.fused_patches(tensors, n_double, n_single, hidden):
        full = f"diffusion_model.{key}"
        patches[full if offset is None else (full, offset)] = ("set", (tensor,))
    added = m.add_patches(patches, 1.0, 1.0)
    if len(added) != len(patches):
        raise ValueError(
            "model: some FLUX attention weights were not found; is this a standard FLUX.1 checkpoint?"
        )
    spatial = fmt.spatial_weights(tensors, n_double, n_single)
    runner = ClearRunner(window or clear.window, clear.down_factor, spatial, proportional)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, runner)
    if ntk_factor != 1.0:
        original = model.get_model_object("diffusion_model.pe_embedder")  # not a loaded clone's patch
        embedder = copy.copy(original)
        embedder.theta = K.ntk_theta(original.theta, ntk_factor)
        m.add_object_patch("diffusion_model.pe_embedder", embedder)
    return m


def load_file(clear_name: str) -> fmt.ClearFile:
    path = model_file(FOLDER, "clear_name", clear_name)
    try:
        return fmt.read_clear(path, name=clear_name)
    except fmt.ClearFormatError as exc:
        raise ValueError(f"clear_name: {str(exc).replace(os.path.dirname(path) + os.sep, '')}") from None


class UltraResCLEARLoader(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UltraResCLEARLoader",
            display_name="CLEAR Loader (UltraRes)",
            category=CATEGORY,
            description=(
                "Loads CLEAR weights (Huage001/CLEAR: clear_local_32, _16, _8, _16_down_4, _8_down_4) from "
                "models/clear. The window and down factor come from the file name or its metadata; the file's "
                "keys and shapes are checked here and against the model in Apply CLEAR."
            ),
            inputs=[
                io.Combo.Input(
                    "clear_name",
                    options=model_files(FOLDER, (".safetensors",)),
                    tooltip="A CLEAR .safetensors in models/clear (keep the official name: it carries the window "
                    "and the down factor).",
                ),
            ],
            outputs=[
                ClearType.Output(display_name="clear", tooltip="CLEAR weights and settings for Apply CLEAR.")
            ],
        )

    @classmethod
    def combo_hints(cls) -> dict[str, str]:
        return {"clear_name": " (put CLEAR files into ComfyUI/models/clear/)"}

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return io.NodeOutput(load_file(cls.checked(inputs).clear_name))


class UltraResCLEARApply(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UltraResCLEARApply",
            display_name="Apply CLEAR (UltraRes)",
            category=CATEGORY,
            description=(
                "Linear-cost attention for FLUX.1: every image token attends to the text and to the image tokens "
                "within a circular window (plus 4x-downsampled tokens in the down variants), with CLEAR's "
                "distilled projections. Makes 2K-8K FLUX generation affordable; use it for the high-resolution "
                "stages (upscale, re-noise, denoise). Refuses other model families."
            ),
            inputs=[
                io.Model.Input(
                    "model", tooltip="A FLUX.1 model (dev, schnell, Krea, Kontext or a fine-tune)."
                ),
                ClearType.Input("clear", tooltip="Weights from CLEAR Loader."),
                io.Int.Input(
                    "window",
                    default=0,
                    min=0,
                    max=1024,
                    optional=True,
                    tooltip="Window radius in tokens (16 px each): image tokens closer than this attend to each "
                    "other. 0 = the file's window (what it was distilled with).",
                ),
                io.Boolean.Input(
                    "proportional_attention",
                    default=True,
                    optional=True,
                    tooltip="Scale attention logits by sqrt(log_4608(tokens)) as the official high-resolution "
                    "notebook does; off = the plain 1/sqrt(head_dim) (the official 1024 px setting).",
                ),
                io.Float.Input(
                    "ntk_factor",
                    default=10.0,
                    min=1.0,
                    max=100.0,
                    step=0.5,
                    optional=True,
                    tooltip="Multiplies RoPE's theta (NTK-style position scaling); the official high-resolution "
                    "notebook uses 10, 1 = FLUX's own positions.",
                ),
            ],
            outputs=[io.Model.Output(tooltip="The model with CLEAR attention.")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        v = cls.checked(inputs)
        if not isinstance(v.clear, fmt.ClearFile):
            raise ValueError("clear: connect the output of CLEAR Loader (UltraRes).")
        return io.NodeOutput(patch_model(v.model, v.clear, v.window, v.proportional_attention, v.ntk_factor))


NODES = [UltraResCLEARLoader, UltraResCLEARApply]
