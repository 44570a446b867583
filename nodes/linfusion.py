"""LinFusion as ComfyUI nodes (thin adapters over ``kernels/linfusion.py`` and ``linfusion_format.py``).

- ``UltraResLinFusionLoader``: official-format LinFusion weights from ``models/linfusion`` -> LINFUSION.
- ``UltraResLinFusionApply``: MODEL + LINFUSION -> MODEL whose every ``attn1`` (self-attention) is
  object-patched by a module with ComfyUI's ``CrossAttention.forward`` signature. The replacement
  keeps the original module (and shares its ``to_q``/``to_k``/``to_v``/``to_out``, so LoRA weight
  patches and ``attn1_replace`` patches of other packs still reach the base projections) and runs
  it below ``min_tokens`` tokens, for masked calls, and for attention whose context has another
  width. Everything else of the model is untouched, so LoRA, ControlNet and tiled samplers compose.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import comfy.ops
import torch
from comfy_api.latest import io
from torch import nn

from ..kernels import linfusion as L
from ..kernels import linfusion_format as fmt
from ._compat import guard_multigpu, refuse_multigpu, schema_extras
from ._inputs import CheckedNode, with_defaults
from ._paths import model_file, model_files
from ._sampling import model_family

CATEGORY = "UltraRes/linfusion"
FOLDER = "linfusion"

LinFusionType = io.Custom("LINFUSION")


PRECISIONS = ("auto", "fp32")


@dataclass
class LinFusionWeights:
    """What the loader returns: the file's name, its layer specs and per-layer state dicts."""

    name: str
    specs: list[fmt.LayerSpec]
    layers: list[dict[str, torch.Tensor]]

    @property
    def family(self) -> str:
        return fmt.describe_specs(self.specs)


def require_sd_unet(model) -> None:
    """Refuse anything but an SD-family UNet (Flux, SD3, HDiT and other DiTs) with a message naming it."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = model.get_model_object("diffusion_model")
    if not isinstance(unet, UNetModel):
        family = model_family(model)
        raise ValueError(
            f"model: this is a {family} model (its diffusion model is {type(unet).__name__}, not an SD-family UNet). "
            "LinFusion weights exist only for SD-family UNets (SD1.5, SD2.1, SDXL and their fine-tunes); remove "
            f"Apply LinFusion from the {family} graph or connect an SD1.x/SD2.x/SDXL model."
        )


def linfusion_bytes(layers) -> int:
    """Bytes of the LinFusion layers' weights as stored (what ComfyUI must find room for)."""
    return sum(t.nelement() * t.element_size() for layer in layers for t in layer.state_dict().values())


def _describe_model(model, bases: dict[str, nn.Module]) -> str:
    widths = sorted({m.to_q.weight.shape[1] for m in bases.values()})
    return f"a {model_family(model)} model ({len(bases)} attn1 layers, widths {widths})"


class LinFusionAttn1(nn.Module):
    """Drop-in replacement for one ComfyUI ``CrossAttention`` used as ``attn1``.

    Shares the base module's projections (registered under the same names) and owns the LinFusion
    layer as ``linfusion``. ``forward`` has ``CrossAttention.forward``'s signature.
    """

    def __init__(
        self,
        base: nn.Module,
        layer: L.LinFusionAttention,
        min_tokens: int = 0,
        keep_base_value_output: bool = False,
        compute_fp32: bool = False,
        chunk_size: int = 0,
    ):
        super().__init__()
        self.to_q, self.to_k, self.to_v, self.to_out = base.to_q, base.to_k, base.to_v, base.to_out
        self.linfusion = layer
        object.__setattr__(self, "base", base)  # not a registered child: its parameters are ours already
        self.heads = base.heads
        self.dim_head = getattr(base, "dim_head", None)
        self.attn_precision = getattr(base, "attn_precision", None)
        self.min_tokens = int(min_tokens)
        self.keep_base_value_output = bool(keep_base_value_output)
        self.compute_fp32 = bool(compute_fp32)
        self.chunk_size = int(chunk_size) or None

    def uses_linfusion(self, x: torch.Tensor, context=None, value=None, mask=None) -> bool:
        if mask is not None or x.shape[1] < self.min_tokens:
            return False
        dim = self.linfusion.dim
        return (context is None or context.shape[-1] == dim) and (value is None or value.shape[-1] == dim)

    def forward(self, x, context=None, value=None, mask=None, transformer_options={}):  # noqa: B006 (ComfyUI's signature)
        if not self.uses_linfusion(x, context, value, mask):
            return self.base(
                x, context=context, value=value, mask=mask, transformer_options=transformer_options
            )
        keep = self.keep_base_value_output  # the base model's to_v / to_out instead of LinFusion's
        return self.linfusion(
            x,
            context,
            value,
            v_proj=self.to_v if keep else None,
            out_proj=self.to_out if keep else None,
            chunk_size=self.chunk_size,
            chunk_projections=False,
            compute_dtype=torch.float32 if self.compute_fp32 else x.dtype,
        )


def load_weights(path: str, name: str) -> LinFusionWeights:
    try:
        specs, layers = fmt.load_linfusion(path)
    except fmt.LinFusionFormatError as exc:
        # name files as the user picked them, never by the server's absolute path
        root = path[: len(path) - len(name)] if path.endswith(name) else os.path.dirname(path) + os.sep
        raise ValueError(f"lf_name '{name}': {str(exc).replace(root, 'models/linfusion/')}") from None
    return LinFusionWeights(name, specs, layers)


def patch_model(
    model,
    weights: LinFusionWeights,
    min_tokens: int = 0,
    keep_base_value_output: bool = False,
    chunk_size: int = 0,
    precision: str = "auto",
):
    """A clone of ``model`` with every attn1 object-patched; refuses any mismatch.

    Memory: the clone's ``size`` (what ``ModelPatcher.model_size()`` reports to ComfyUI's VRAM
    planning, fixed when the model was loaded and copied by ``clone()``) grows by the LinFusion
    weights' bytes. The layers are ComfyUI ``manual_cast`` ops (``comfy_cast_weights``), so every
    loader treats them like the model's own layers: moved with a full load, left offloaded and cast
    at use in low-VRAM mode, and streamed by the dynamic-VRAM loader of newer ComfyUI.
    """
    require_sd_unet(model)
    paths = fmt.attn1_paths(model.get_model_object("diffusion_model"))
    if not paths:
        raise ValueError(
            f"model: {model_family(model)} has no attn1 (self-attention) layers; LinFusion patches "
            "SD1.x, SD2.x and SDXL UNets only."
        )
    bases = {}
    for p in paths:
        m = model.get_model_object(f"diffusion_model.{p}")
        if isinstance(m, LinFusionAttn1):
            raise ValueError(
                "model: LinFusion is already applied to this model; connect the model from before "
                "the first UltraResLinFusionApply."
            )
        bases[p] = m
    unet_config = model.model.model_config.unet_config
    res_blocks = unet_config.get("num_res_blocks", 2)
    file_desc, model_desc = weights.family, _describe_model(model, bases)
    mismatch = (
        f"lf_name '{weights.name}' ({file_desc}) does not fit {model_desc}. Use LinFusion weights made for "
        "this model family (LinFusion-1-5 for SD1.x, -2-1 for SD2.x, -XL for SDXL) or distil your own with "
        "`scripts/linfusion_distill.py`."
    )
    mapped = fmt.match_layers(weights.specs, weights.layers, bases, res_blocks, mismatch)

    base_model = model.model
    model_dtype = base_model.manual_cast_dtype or base_model.get_dtype()
    compute_fp32 = precision == "fp32"
    if precision == "auto" and model_family(model) == "SD20" and model_dtype == torch.float16:
        compute_fp32 = True
        logging.warning(
            "UltraRes LinFusion: SD2.x LinFusion weights are numerically unstable in float16 "
            "(as the official repo warns); the LinFusion layers run in float32."
        )
    if model_dtype not in (torch.float16, torch.bfloat16, torch.float32):
        model_dtype = (
            torch.float16
        )  # fp8 / quantized models: store fp16, cast to the activations' dtype at use
    layer_dtype = torch.float32 if compute_fp32 else model_dtype
    m = model.clone()
    layers = []
    for target, (spec, sd) in mapped.items():
        layer = fmt.build_layer(
            spec, sd, operations=comfy.ops.manual_cast, dtype=layer_dtype, device=model.offload_device
        )
        layers.append(layer)
        m.add_object_patch(
            f"diffusion_model.{target}",
            LinFusionAttn1(
                bases[target], layer, min_tokens, keep_base_value_output, compute_fp32, chunk_size
            ),
        )
    m.size = model.model_size() + linfusion_bytes(layers)
    return m


class UltraResLinFusionLoader(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UltraResLinFusionLoader",
            **schema_extras(search_aliases=["linfusion", "linear attention", "high resolution"]),
            display_name="LinFusion Loader (UltraRes)",
            category=CATEGORY,
            description=(
                "Loads LinFusion linear-attention weights from models/linfusion: the official release "
                "(Yuanshi/LinFusion-1-5, -2-1, -XL: a folder with config.json + diffusion_pytorch_model.safetensors; "
                "pick either file) or a single .safetensors with the config in its metadata (what "
                "`scripts/linfusion_distill.py` writes)."
            ),
            inputs=[
                io.Combo.Input(
                    "lf_name",
                    options=model_files(FOLDER, (".safetensors", "config.json")),
                    tooltip="LinFusion weights in models/linfusion (.safetensors, or a release folder's config.json).",
                ),
            ],
            outputs=[
                LinFusionType.Output(
                    display_name="linfusion", tooltip="LinFusion layers for UltraResLinFusionApply."
                )
            ],
        )

    @classmethod
    def combo_hints(cls) -> dict[str, str]:
        return {"lf_name": " (put LinFusion weights into ComfyUI/models/linfusion/)"}

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        lf_name = cls.checked(inputs).lf_name
        return io.NodeOutput(load_weights(model_file(FOLDER, "lf_name", lf_name), lf_name))


MULTIGPU_REASON = (
    "its layers are object patches holding this model's own attention modules, and the per-device clones "
    "ComfyUI makes at every sampling run (match_multigpu_clones) would share those modules across devices"
)


class UltraResLinFusionApply(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UltraResLinFusionApply",
            **schema_extras(
                search_aliases=[
                    "linfusion",
                    "linear attention",
                    "high resolution",
                    "4k",
                    "efficient attention",
                ]
            ),
            display_name="Apply LinFusion (UltraRes)",
            category=CATEGORY,
            description=(
                "Replaces every self-attention (attn1) of an SD1.x/SD2.x/SDXL UNet by LinFusion's linear attention: "
                "cost linear in the number of latent pixels instead of quadratic, which makes 2K-16K images "
                "feasible. Cross-attention, LoRA on other layers, ControlNet and tiled samplers are unaffected. "
                "Refuses weights made for another model family."
            ),
            inputs=[
                io.Model.Input("model", tooltip="An SD1.x, SD2.x or SDXL model."),
                LinFusionType.Input(
                    "linfusion", tooltip="Weights from LinFusion Loader, made for this model family."
                ),
                io.Int.Input(
                    "min_tokens",
                    default=0,
                    min=0,
                    max=1 << 24,
                    step=64,
                    tooltip="Layers seeing fewer tokens (latent pixels) than this keep the original softmax "
                    "attention, where linear attention saves little (e.g. 4096 = a 64x64 latent). "
                    "0 = LinFusion everywhere (as distilled).",
                ),
                io.Boolean.Input(
                    "keep_base_value_output",
                    default=False,
                    tooltip="Use the model's own value and output projections (to_v, to_out) instead of "
                    "LinFusion's: keeps more of a fine-tune's self-attention. Off = the official "
                    "behaviour (all four projections from the LinFusion file).",
                ),
                io.Int.Input(
                    "chunk_size",
                    default=0,
                    min=0,
                    max=1 << 24,
                    step=1024,
                    tooltip="Tokens per chunk in the linear attention's float32 reductions (bounds memory at "
                    "very large sizes); 0 = no chunking.",
                ),
                io.Combo.Input(
                    "precision",
                    options=list(PRECISIONS),
                    default="auto",
                    tooltip="auto: the model's dtype, except SD2.x in float16, which runs LinFusion in "
                    "float32 (the official weights are unstable in fp16). fp32: always float32.",
                ),
            ],
            outputs=[io.Model.Output(tooltip="The model with LinFusion self-attention.")],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        # direct callers (scripts, tests) may leave out the widgets, as before: they take their schema defaults
        v = cls.checked(with_defaults(cls, inputs))
        model, linfusion = v.model, v.linfusion
        if not isinstance(linfusion, LinFusionWeights):
            raise ValueError("linfusion: connect the output of LinFusion Loader (UltraRes).")
        refuse_multigpu(model, "Apply LinFusion (UltraRes)", MULTIGPU_REASON)
        m = patch_model(model, linfusion, v.min_tokens, v.keep_base_value_output, v.chunk_size, v.precision)
        guard_multigpu(m, "Apply LinFusion (UltraRes)", MULTIGPU_REASON)
        return io.NodeOutput(m)


NODES = [UltraResLinFusionLoader, UltraResLinFusionApply]
