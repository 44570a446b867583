"""Reading and writing LinFusion weights in the official release layout, and module-name mapping.

The official release (``Yuanshi/LinFusion-1-5``, ``-2-1``, ``-XL``) is a diffusers-style folder::

    config.json                          {"_class_name": "LinFusion", "modules_list": [
                                            {"module_name": "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
                                             "dim_n": 320, "heads": 8, "projection_mid_dim": null}, ...]}
    diffusion_pytorch_model.safetensors  "{i}.to_q.weight", "{i}.to_k.weight", "{i}.to_v.weight",
                                         "{i}.to_out.0.weight", "{i}.to_out.0.bias",
                                         "{i}.to_q_.{0,1,3}.{weight,bias}", "{i}.to_k_.{0,1,3}.{weight,bias}"

where ``i`` indexes ``modules_list``. We read that folder (or either of its two files) and a single
``.safetensors`` whose metadata holds the same config as JSON under the key ``"config"``; we write
the single-file form (or the folder form). Safetensors only: nothing here unpickles.

Module names are diffusers UNet paths; :func:`diffusers_to_ldm` maps them to the original
(ComfyUI/LDM) UNet paths: ``down_blocks.i.attentions.j`` -> ``input_blocks.{1+(R+1)i+j}.1``,
``mid_block.attentions.0`` -> ``middle_block.1``, ``up_blocks.i.attentions.j`` ->
``output_blocks.{(R+1)i+j}.1`` (R = res blocks per level; 2 for SD1.5/2.1/SDXL, giving 3i+j+1 and
3i+j), then ``.transformer_blocks.t.attn1`` is kept.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .linfusion import TORCH_OPS, LinFusionAttention

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
METADATA_KEY = "config"
CLASS_NAME = "LinFusion"


class LinFusionFormatError(ValueError):
    """A LinFusion file or folder is missing, unreadable or inconsistent (message says which)."""


@dataclass(frozen=True)
class LayerSpec:
    """One entry of ``modules_list``: the diffusers path of an attn1 and its sizes."""

    module_name: str
    dim_n: int
    heads: int
    projection_mid_dim: int | None = None

    @property
    def mid_dim(self) -> int:
        return self.dim_n if self.projection_mid_dim is None else int(self.projection_mid_dim)


def describe_specs(specs: list[LayerSpec]) -> str:
    """A human label for a LinFusion file's layout (SD1.x / SD2.x / SDXL / custom, layer count,
    widths), for error messages."""
    widths = sorted({s.dim_n for s in specs})
    if not any(s.module_name.startswith("down_blocks.0.") for s in specs):
        kind = "SDXL layout (no attention in the first down block)"
    elif all(s.heads == 8 for s in specs):
        kind = "SD1.x layout (8 heads)"
    elif all(s.heads * 64 == s.dim_n for s in specs):
        kind = "SD2.x layout (heads = width/64)"
    else:
        kind = f"custom layout (heads {sorted({s.heads for s in specs})})"
    return f"{kind}, {len(specs)} attn1 layers, widths {widths}"


def param_shapes(spec: LayerSpec) -> dict[str, tuple[int, ...]]:
    """Every state-dict key (without the ``{i}.`` prefix) of one layer and its shape."""
    c, m = spec.dim_n, spec.mid_dim
    shapes = {
        "to_q.weight": (c, c),
        "to_k.weight": (c, c),
        "to_v.weight": (c, c),
        "to_out.0.weight": (c, c),
        "to_out.0.bias": (c,),
    }
    for branch in ("to_q_", "to_k_"):
        shapes[f"{branch}.0.weight"] = (m, c)
        shapes[f"{branch}.0.bias"] = (m,)
        shapes[f"{branch}.1.weight"] = (m,)
        shapes[f"{branch}.1.bias"] = (m,)
        shapes[f"{branch}.3.weight"] = (c, m)
        shapes[f"{branch}.3.bias"] = (c,)
    return shapes


# ---------------------------------------------------------------------------------------------
# names


_DOWN = re.compile(r"^down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$")
_MID = re.compile(r"^mid_block\.attentions\.0\.(.+)$")
_UP = re.compile(r"^up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$")
_IN_L = re.compile(r"^input_blocks\.(\d+)\.1\.(.+)$")
_MID_L = re.compile(r"^middle_block\.1\.(.+)$")
_OUT_L = re.compile(r"^output_blocks\.(\d+)\.1\.(.+)$")


def _res_blocks(num_res_blocks: int | list[int], levels: int | None) -> list[int]:
    if isinstance(num_res_blocks, int):
        return [num_res_blocks] * (levels or 8)
    return list(num_res_blocks)


def diffusers_to_ldm(module_name: str, num_res_blocks: int | list[int] = 2) -> str:
    """Map a diffusers UNet module path to the LDM/ComfyUI one (``diffusion_model`` relative).

    Args:
        module_name: e.g. ``"up_blocks.1.attentions.2.transformer_blocks.0.attn1"``.
        num_res_blocks: res blocks per level (an int, or one per level as in ComfyUI's
            ``unet_config["num_res_blocks"]``); 2 for SD1.5, SD2.x and SDXL.

    Returns: e.g. ``"output_blocks.5.1.transformer_blocks.0.attn1"``.
    """
    res = _res_blocks(num_res_blocks, None)
    if m := _DOWN.match(module_name):
        level, j, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{1 + sum(r + 1 for r in res[:level]) + j}.1.{rest}"
    if m := _MID.match(module_name):
        return f"middle_block.1.{m[1]}"
    if m := _UP.match(module_name):
        level, j, rest = int(m[1]), int(m[2]), m[3]
        rev = list(reversed(res)) if not isinstance(num_res_blocks, int) else res
        return f"output_blocks.{sum(r + 1 for r in rev[:level]) + j}.1.{rest}"
    raise LinFusionFormatError(
        f"module_name {module_name!r} is not a diffusers UNet attention path "
        "(expected down_blocks.I.attentions.J..., mid_block.attentions.0... or up_blocks.I.attentions.J...)"
    )


def ldm_to_diffusers(path: str, num_res_blocks: int | list[int] = 2) -> str:
    """Inverse of :func:`diffusers_to_ldm` (``num_res_blocks`` as there)."""
    res = _res_blocks(num_res_blocks, None)
    if m := _IN_L.match(path):
        idx, rest = int(m[1]), m[2]
        start = 1
        for level, r in enumerate(res):
            if start <= idx < start + r:
                return f"down_blocks.{level}.attentions.{idx - start}.{rest}"
            start += r + 1
    elif m := _MID_L.match(path):
        return f"mid_block.attentions.0.{m[1]}"
    elif m := _OUT_L.match(path):
        idx, rest = int(m[1]), m[2]
        rev = list(reversed(res)) if not isinstance(num_res_blocks, int) else res
        start = 0
        for level, r in enumerate(rev):
            if start <= idx < start + r + 1:
                return f"up_blocks.{level}.attentions.{idx - start}.{rest}"
            start += r + 1
    raise LinFusionFormatError(f"UNet path {path!r} is not an attention path of an SD-family UNet")


# ---------------------------------------------------------------------------------------------
# reading


def _parse_config(config: dict, where: str) -> list[LayerSpec]:
    modules = config.get("modules_list") if isinstance(config, dict) else None
    if not isinstance(modules, list) or not modules:
        raise LinFusionFormatError(f"{where}: the config has no 'modules_list' (is this a LinFusion file?)")
    specs = []
    for i, entry in enumerate(modules):
        try:
            spec = LayerSpec(
                module_name=str(entry["module_name"]),
                dim_n=int(entry["dim_n"]),
                heads=int(entry["heads"]),
                projection_mid_dim=None
                if entry.get("projection_mid_dim") is None
                else int(entry["projection_mid_dim"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LinFusionFormatError(
                f"{where}: modules_list[{i}] is malformed ({exc!r}): {entry!r}"
            ) from None
        if spec.dim_n <= 0 or spec.heads <= 0 or spec.dim_n % spec.heads:
            raise LinFusionFormatError(
                f"{where}: modules_list[{i}] has dim_n={spec.dim_n} not divisible by heads={spec.heads}"
            )
        specs.append(spec)
    return specs


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise LinFusionFormatError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno})"
        ) from None


def _read_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError):
        raise LinFusionFormatError(
            f"{path}: cannot be read as safetensors (its header or data is damaged, or it is another format); "
            "the file is corrupt or incomplete: download it again"
        ) from None
    return tensors, metadata


def resolve_files(path: str) -> tuple[str, str | None]:
    """``(weights_file, config_json_or_None)`` for a folder, its config.json, its weights, or a
    single file. Raises :class:`LinFusionFormatError` if something is missing."""
    if not os.path.exists(path):
        raise LinFusionFormatError(f"LinFusion path {path!r} does not exist")
    if os.path.isdir(path):
        weights, config = os.path.join(path, WEIGHTS_NAME), os.path.join(path, CONFIG_NAME)
        if not os.path.isfile(weights):
            raise LinFusionFormatError(f"{path}: folder has no {WEIGHTS_NAME}")
        return weights, config if os.path.isfile(config) else None
    if path.endswith(".json"):
        weights = os.path.join(os.path.dirname(path), WEIGHTS_NAME)
        if not os.path.isfile(weights):
            raise LinFusionFormatError(f"{path}: no {WEIGHTS_NAME} next to this config")
        return weights, path
    sibling = os.path.join(os.path.dirname(path), CONFIG_NAME)
    return path, sibling if os.path.isfile(sibling) else None


def attn1_specs(unet: torch.nn.Module, num_res_blocks, mid_dim_scale: int | None = None) -> list[LayerSpec]:
    """One :class:`LayerSpec` per ``attn1`` of an ldm-layout UNet, in module order, with the official
    module names; ``mid_dim_scale`` sets ``projection_mid_dim = dim // mid_dim_scale`` (None: none)."""
    specs = []
    for name, m in unet.named_modules():
        if name.rsplit(".", 1)[-1] == "attn1":
            dim = m.to_q.weight.shape[1]
            specs.append(
                LayerSpec(
                    ldm_to_diffusers(name, num_res_blocks),
                    dim,
                    int(m.heads),
                    None if not mid_dim_scale else dim // mid_dim_scale,
                )
            )
    return specs


def attn1_paths(unet: torch.nn.Module) -> list[str]:
    """The paths (relative to ``unet``) of every self-attention module: those named ``...attn1``."""
    return [name for name, _ in unet.named_modules() if name.rsplit(".", 1)[-1] == "attn1"]


def match_layers(
    specs: list[LayerSpec],
    layers: list[dict[str, torch.Tensor]],
    bases: dict[str, torch.nn.Module],
    num_res_blocks: int | list[int],
    mismatch: str,
) -> dict[str, tuple[LayerSpec, dict[str, torch.Tensor]]]:
    """Each layer of a LinFusion file matched to the attn1 module it replaces.

    Args:
        specs, layers: what :func:`load_linfusion` returns (diffusers module names).
        bases: the model's attn1 modules by LDM path (:func:`attn1_paths`), each with ``to_q`` and ``heads``.
        num_res_blocks: the UNet's residual blocks per level (for :func:`diffusers_to_ldm`).
        mismatch: the start of every error (which file, which model, what to do).
    Returns:
        ``{ldm path: (spec, state dict)}`` covering every path of ``bases``.
    Raises:
        ValueError: ``"<mismatch> (<which layer and why>)"`` when a layer has no attn1 of the model, a
        width or head count differs, or an attn1 of the model has no layer in the file.
    """
    mapped = {}
    for spec, sd in zip(specs, layers):
        try:
            target = diffusers_to_ldm(spec.module_name, num_res_blocks)
        except LinFusionFormatError as exc:
            raise ValueError(f"{mismatch} ({exc})") from None
        if target not in bases:
            raise ValueError(
                f"{mismatch} (the file's {spec.module_name} -> {target} is not an attn1 of the model)"
            )
        base = bases[target]
        width, heads = base.to_q.weight.shape[1], int(base.heads)
        if spec.dim_n != width or base.to_q.weight.shape[0] != width:
            raise ValueError(f"{mismatch} ({target}: file width {spec.dim_n}, model width {width})")
        if spec.heads != heads:
            raise ValueError(f"{mismatch} ({target}: file has {spec.heads} heads, model has {heads})")
        mapped[target] = (spec, sd)
    missing = [p for p in bases if p not in mapped]
    if missing:
        raise ValueError(
            f"{mismatch} (the file does not cover {len(missing)} attn1 layers of the model, e.g. {missing[0]})"
        )
    return mapped


def load_linfusion(path: str) -> tuple[list[LayerSpec], list[dict[str, torch.Tensor]]]:
    """Read an official-format LinFusion folder or file.

    Returns ``(specs, layer_state_dicts)``: one :class:`LayerSpec` and one state dict (keys
    without the ``{i}.`` prefix, tensors as stored) per entry of ``modules_list``. Every key
    and shape is checked against the config; problems raise :class:`LinFusionFormatError`.
    """
    weights_path, config_path = resolve_files(path)
    tensors, metadata = _read_safetensors(weights_path)
    if METADATA_KEY in metadata:
        try:
            config = json.loads(metadata[METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise LinFusionFormatError(
                f"{weights_path}: metadata '{METADATA_KEY}' is not valid JSON ({exc})"
            ) from None
    elif config_path is not None:
        config = _read_json(config_path)
    else:
        raise LinFusionFormatError(
            f"{weights_path}: no LinFusion config (neither '{METADATA_KEY}' in the safetensors metadata nor a "
            f"{CONFIG_NAME} next to it). Put the official config.json in the same folder."
        )
    specs = _parse_config(config, weights_path)
    layers: list[dict[str, torch.Tensor]] = [{} for _ in specs]
    for key, tensor in tensors.items():
        head, _, rest = key.partition(".")
        if not head.isdigit() or int(head) >= len(specs):
            raise LinFusionFormatError(
                f"{weights_path}: unexpected key {key!r} (config lists {len(specs)} layers)"
            )
        layers[int(head)][rest] = tensor
    for i, (spec, sd) in enumerate(zip(specs, layers)):
        expected = param_shapes(spec)
        missing = sorted(set(expected) - set(sd))
        extra = sorted(set(sd) - set(expected))
        if missing or extra:
            raise LinFusionFormatError(
                f"{weights_path}: layer {i} ({spec.module_name}) has missing keys {missing[:6]} / unexpected keys {extra[:6]}"
            )
        for name, shape in expected.items():
            if tuple(sd[name].shape) != shape:
                raise LinFusionFormatError(
                    f"{weights_path}: layer {i} ({spec.module_name}) key {name!r} has shape "
                    f"{tuple(sd[name].shape)}, config (dim_n={spec.dim_n}, mid={spec.mid_dim}) needs {shape}"
                )
    return specs, layers


def build_layer(
    spec: LayerSpec,
    state_dict: dict[str, torch.Tensor] | None = None,
    operations=TORCH_OPS,
    dtype: torch.dtype | None = None,
    device=None,
) -> LinFusionAttention:
    """A :class:`LinFusionAttention` for ``spec``, loaded from ``state_dict`` if given."""
    layer = LinFusionAttention(
        spec.dim_n, spec.heads, spec.projection_mid_dim, operations=operations, dtype=dtype, device=device
    )
    if state_dict is not None:
        layer.load_state_dict({k: v.to(dtype) if dtype is not None else v for k, v in state_dict.items()})
    return layer


# ---------------------------------------------------------------------------------------------
# writing


def config_dict(specs: list[LayerSpec]) -> dict:
    """The official ``config.json`` content for ``specs``."""
    return {"_class_name": CLASS_NAME, "modules_list": [asdict(s) for s in specs]}


def save_linfusion(
    path: str,
    specs: list[LayerSpec],
    layers: list[dict[str, torch.Tensor]] | list[torch.nn.Module],
    dtype: torch.dtype | None = torch.float16,
) -> str:
    """Write LinFusion weights in the official layout; returns the weights file written.

    ``path`` ending in ``.safetensors``: one file, config JSON in metadata ``"config"``.
    Otherwise ``path`` is a folder that gets ``config.json`` + ``diffusion_pytorch_model.safetensors``.
    ``layers``: per spec, a state dict or a module with that state dict. ``dtype``: storage
    dtype (the official release is float16); ``None`` keeps each tensor's dtype.
    """
    if len(layers) != len(specs):
        raise ValueError(f"{len(specs)} specs but {len(layers)} layers")
    tensors = {}
    for i, (spec, layer) in enumerate(zip(specs, layers)):
        sd = layer.state_dict() if isinstance(layer, torch.nn.Module) else layer
        expected = param_shapes(spec)
        if set(sd) != set(expected):
            raise ValueError(
                f"layer {i}: keys {sorted(sd)} do not match the LinFusion layout {sorted(expected)}"
            )
        for name in expected:
            t = sd[name].detach().to("cpu")
            tensors[f"{i}.{name}"] = (t if dtype is None else t.to(dtype)).contiguous()
    config = json.dumps(config_dict(specs))
    if path.endswith(".safetensors"):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        save_file(tensors, path, metadata={METADATA_KEY: config, "format": "pt"})
        return path
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_NAME), "w", encoding="utf-8") as f:
        f.write(json.dumps(config_dict(specs), indent=2))
    weights = os.path.join(path, WEIGHTS_NAME)
    save_file(tensors, weights, metadata={"format": "pt"})
    return weights
