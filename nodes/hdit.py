"""HDiT (k-diffusion image_transformer_v2) checkpoints as ComfyUI models.

- ``UltraResHDiTLoader``: a file from the ``hdit`` models folder (the pack's own ``models/hdit``
  holds the embedded Twemoji model) -> MODEL (EDM preconditioning with the file's sigma_data and
  sigma range, pixel-space latent: 3 channels in [-1, 1], one latent pixel per image pixel) and the
  matching pixel-space VAE (ComfyUI's own ``pixel_space`` conversion VAE, so stock VAEDecode and
  VAEEncode turn the latent into an IMAGE and back).
- ``UltraResHDiTClass``: class id -> positive CONDITIONING and the unconditional CONDITIONING
  (the model's extra embedding row) for the negative input, so CFG works with stock KSampler.

The latent comes from the stock ``EmptyChromaRadianceLatentImage`` (a zero [B, 3, H, W] latent).
"""

from __future__ import annotations

import math

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.supported_models_base
import folder_paths
import torch
from comfy_api.latest import io

from ..kernels import hdit as H
from ..kernels import hdit_format
from ._common import check_inputs
from ._compat import schema_extras
from ._inputs import CheckedNode, links_and_nulls

CATEGORY = "UltraRes/hdit"
COND_KEY = "ultrares_hdit_class"  # conditioning dict entry read by HDiTComfyModel.extra_conds


class HDiTPixelLatent(comfy.latent_formats.ChromaRadiance):
    """Pixel-space latent: 3 channels, values in [-1, 1], no scaling, 1 latent px per image px."""

    spacial_downscale_ratio = 1


class HDiTModelConfig(comfy.supported_models_base.BASE):
    unet_config = {"disable_unet_model_creation": True}
    unet_extra_config = {}
    latent_format = HDiTPixelLatent
    supported_inference_dtypes = [torch.float32, torch.bfloat16, torch.float16]
    memory_usage_factor = 0.05  # replaced per model by memory_usage_factor_for()

    def __init__(self, cfg: hdit_format.HDiTConfig, dtype: torch.dtype = torch.float32):
        self.sampling_settings = {
            "sigma_min": cfg.sigma_min,
            "sigma_max": cfg.sigma_max,
            "sigma_data": cfg.sigma_data,
        }
        super().__init__({"disable_unet_model_creation": True})
        self.memory_usage_factor = memory_usage_factor_for(cfg, dtype)
        # native side in pixels (pixel space: the training input_size), read by Any-Size Plan
        # (nodes/tiled_diffusion.native_pixels); a non-square input_size gives the side of the same area
        h, w = cfg.input_size
        self.native_size = round(math.sqrt(h * w))


def memory_usage_factor_for(cfg: hdit_format.HDiTConfig, dtype: torch.dtype) -> float:
    """ComfyUI's ``BaseModel.memory_required`` is ``area * per_area * memory_usage_factor`` MiB with
    ``per_area = dtype_size * 0.01`` when it believes flash/xformers attention is on (NVIDIA, ...)
    and ``0.15`` otherwise. HDiT's attention always runs through torch SDPA (never ComfyUI's
    attention backends), so its real peak does not depend on that switch: pick the factor that makes
    the estimate equal the calibrated peak (:func:`hdit_format.activation_bytes_per_pixel`) in the branch
    ComfyUI will take. (The former constant 1.0 planned ~40-80 GB for a 1024x1024 CFG batch.)"""
    mm = comfy.model_management
    per_area_mib = (
        mm.dtype_size(dtype) * 0.01
        if (mm.xformers_enabled() or mm.pytorch_attention_flash_attention())
        else 0.15
    )
    return hdit_format.activation_bytes_per_pixel(cfg) / (per_area_mib * 1024 * 1024)


class HDiTAdapter(torch.nn.Module):
    """ComfyUI's ``diffusion_model`` call -> HDiT inner model (:meth:`kernels.hdit.HDiT.forward_any_size`:
    any size from its minimum up, class ids with UNCOND for the unconditional row).

    ComfyUI passes ``c_in * x`` and ``t = ln(sigma) / 4`` (ModelSamplingContinuousEDM.timestep);
    HDiT takes raw sigma, so ``sigma = exp(4 t)``.
    """

    def __init__(self, inner: H.HDiT):
        super().__init__()
        self.inner = inner

    @property
    def dtype(self):
        return next(self.inner.parameters()).dtype

    def class_problem(self, ids) -> str | None:
        problem = self.inner.class_problem(ids)
        return problem and f"UltraResHDiTClass: {problem}"

    def forward(self, x, timesteps, context=None, control=None, transformer_options=None, **kwargs):
        sigma = torch.exp(4 * timesteps.float()).to(x.dtype)
        class_cond = kwargs.get(COND_KEY)
        if class_cond is not None and (problem := self.class_problem(class_cond)):
            raise ValueError(problem)
        return self.inner.forward_any_size(x, sigma, class_cond)


class HDiTComfyModel(comfy.model_base.BaseModel):
    """BaseModel with EDM model sampling around an HDiT; class ids come from the conditioning."""

    def __init__(
        self, model_config: HDiTModelConfig, inner: H.HDiT, cfg: hdit_format.HDiTConfig, device=None
    ):
        super().__init__(model_config, comfy.model_base.ModelType.EDM, device=device)
        self.diffusion_model = HDiTAdapter(inner)
        self.hdit_config = cfg

    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)
        out.pop("c_crossattn", None)  # HDiT has no text conditioning; the tensor slot is a placeholder
        # checked here, when sampling starts (ComfyUI encodes the conds before the first step), so a
        # bad class id or a too-small image fails at once with a message in ids and pixels
        noise = kwargs.get("noise")
        if (
            torch.is_tensor(noise)
            and noise.ndim == 4
            and (problem := self.diffusion_model.inner.size_problem(*noise.shape[-2:]))
        ):
            raise ValueError(problem)
        cls = kwargs.get(COND_KEY)
        if cls is not None and (problem := self.diffusion_model.class_problem(cls)):
            raise ValueError(problem)
        if cls is not None:
            out[COND_KEY] = comfy.conds.CONDRegular(torch.as_tensor(cls, dtype=torch.long).reshape(-1))
        return out


def build_comfy_model(inner: H.HDiT, cfg: hdit_format.HDiTConfig, dtype: torch.dtype = torch.float32):
    """Wrap an inner HDiT in a ModelPatcher that ComfyUI's samplers use like any MODEL."""
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    base = HDiTComfyModel(HDiTModelConfig(cfg, dtype), inner.to(dtype), cfg, device=offload_device)
    base.eval()
    return comfy.model_patcher.ModelPatcher(base, load_device=load_device, offload_device=offload_device)


def pixel_space_vae():
    """ComfyUI's own pixel-space conversion VAE (what VAELoader's ``pixel_space`` entry builds)."""
    vae = comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)})
    vae.throw_exception_if_invalid()
    return vae


def _model_files() -> list[str]:
    return folder_paths.get_filename_list("hdit")  # registered by nodes/_paths.py (+ the pack's models/hdit)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_hdit_file(path: str, dtype: str = "float32", name: str | None = None):
    """``(MODEL, HDiTConfig)`` from an HDiT file; ``name`` (default: the base name) is how messages
    call the file, the node passes its name relative to the models folder (never an absolute path)."""
    try:
        inner, cfg = hdit_format.open_checkpoint(path, name=name)
    except hdit_format.HDiTLoadError as e:
        raise ValueError(f"UltraResHDiTLoader: {e}") from None
    return build_comfy_model(inner, cfg, DTYPES[dtype]), cfg


class UltraResHDiTLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UltraResHDiTLoader",
            **schema_extras(
                search_aliases=["hdit", "hourglass diffusion transformer", "pixel space", "high resolution"]
            ),
            display_name="Load HDiT Model (UltraRes)",
            category=CATEGORY,
            description="Load an Hourglass Diffusion Transformer (k-diffusion image_transformer_v2) from the hdit "
            "models folder: the inference format (.safetensors with the config in its metadata), a "
            "training checkpoint (.pth with model_ema), or a config .json with the weights beside it. "
            "It samples in pixel space with stock KSampler and any sampler/scheduler; start from "
            "EmptyChromaRadianceLatentImage and decode with the VAE output. The shipped "
            "ultrares-emoji64 model makes 64x64 emoji (Twemoji, CC-BY-4.0). Neighborhood attention "
            "runs in plain PyTorch (no NATTEN needed).",
            inputs=[
                io.Combo.Input(
                    "model_name",
                    options=_model_files(),
                    tooltip="File in models/hdit (or the pack's embedded models/hdit).",
                ),
                io.Combo.Input(
                    "weight_dtype",
                    options=list(DTYPES),
                    default="float32",
                    tooltip="Dtype to run the weights in; float32 is best on CPU, bfloat16 on GPUs.",
                ),
            ],
            outputs=[
                io.Model.Output(tooltip="The HDiT as a ComfyUI model (EDM, pixel-space latent)."),
                io.Vae.Output(
                    tooltip="Pixel-space conversion VAE: VAEDecode turns the sampled latent into an "
                    "IMAGE, VAEEncode an IMAGE into a latent for img2img."
                ),
                io.Int.Output(
                    display_name="num_classes",
                    tooltip="Number of classes of the model (0 = unconditional model).",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, model_name=None, weight_dtype="float32", input_types=None):
        named = {"model_name": model_name, "weight_dtype": weight_dtype}
        if problem := links_and_nulls(cls, named, input_types):
            return problem
        v = check_inputs(
            cls,
            model_name=model_name,
            weight_dtype=weight_dtype,
            combo_hints={"model_name": " (put HDiT checkpoints into ComfyUI/models/hdit/)"},
        )
        return v if isinstance(v, str) else True

    @classmethod
    def execute(cls, model_name, weight_dtype="float32"):
        if not (
            isinstance(weight_dtype, str) and weight_dtype in DTYPES
        ):  # queue time refuses it too; this covers direct (API/demo) calls
            raise ValueError(
                f"UltraResHDiTLoader: weight_dtype={weight_dtype!r} is not one of: {', '.join(DTYPES)}"
            )
        path = folder_paths.get_full_path("hdit", model_name) if isinstance(model_name, str) else None
        if path is None:
            raise ValueError(
                f"UltraResHDiTLoader: {model_name!r} is not in the hdit models folder; put the file in "
                f"ComfyUI/models/hdit/ and refresh."
            )
        model, cfg = load_hdit_file(path, weight_dtype, model_name)
        return io.NodeOutput(model, pixel_space_vae(), cfg.num_classes)


class UltraResHDiTClass(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UltraResHDiTClass",
            **schema_extras(search_aliases=["hdit", "class label", "class conditioning"]),
            display_name="HDiT Class (UltraRes)",
            category=CATEGORY,
            description="Class conditioning for a class-conditional HDiT: 'positive' asks for class_id, "
            "'negative' is the unconditional embedding, so KSampler's cfg does classifier-free "
            "guidance. Embedded emoji model classes: 0 Smileys & Emotion, 1 People & Body, 2 Animals "
            "& Nature, 3 Food & Drink, 4 Travel & Places, 5 Activities, 6 Objects, 7 Symbols, 8 Flags.",
            inputs=[
                io.Int.Input(
                    "class_id",
                    default=0,
                    min=0,
                    max=1_000_000,
                    tooltip="Class index (0-based, below the model's num_classes).",
                ),
                io.Boolean.Input(
                    "unconditional",
                    default=False,
                    tooltip="Ignore class_id: positive is unconditional too (plain sampling; use cfg 1).",
                ),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="The class (or unconditional)."),
                io.Conditioning.Output(
                    display_name="negative", tooltip="Unconditional: the model's extra class row."
                ),
            ],
        )

    @classmethod
    def checked(cls, inputs):
        # the model's class count is only known when sampling starts (checked there, in pixels/ids)
        try:
            return super().checked(inputs)
        except ValueError as exc:  # run time (API/demo calls): the node's name leads, as in sampling's checks
            raise ValueError(f"UltraResHDiTClass: {exc}") from None

    @classmethod
    def execute(cls, **inputs):
        v = cls.checked(inputs)
        class_id, unconditional = v.class_id, v.unconditional
        placeholder = torch.zeros(1, 1, 1)
        pos_id = H.UNCOND if unconditional else int(class_id)
        pos = [[placeholder, {COND_KEY: torch.tensor([pos_id])}]]
        neg = [[placeholder.clone(), {COND_KEY: torch.tensor([H.UNCOND])}]]
        return io.NodeOutput(pos, neg)


NODES = [UltraResHDiTLoader, UltraResHDiTClass]
