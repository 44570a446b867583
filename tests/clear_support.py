"""CLEAR files in the official layout for the tests (tests/comfy/test_clear_nodes.py, the
compatibility matrix, the server test): seeded weights for a FLUX of a given size, chosen from the
diffusers parameter names by the official ``distill.py`` save rule."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

# distill.py ("Save the attn weights"): the parameters whose names contain these are saved
SAVE_RULE = (".attn.to_q.", ".attn.to_k.", ".attn.to_v.", ".attn.to_out.")


def diffusers_attention_names(n_double: int, n_single: int, down_factor: int) -> list[str]:
    """Parameter names of a diffusers FluxTransformer2DModel's attention-related modules (with
    CLEAR processors), the ones distill.py's rule chooses among."""
    names = []
    for prefix, n, projs in (
        (
            "transformer_blocks",
            n_double,
            ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out"),
        ),
        ("single_transformer_blocks", n_single, ("to_q", "to_k", "to_v")),
    ):
        for i in range(n):
            a = f"{prefix}.{i}.attn"
            names += [f"{a}.norm_q.weight", f"{a}.norm_k.weight"]
            if prefix == "transformer_blocks":
                names += [
                    f"{a}.norm_added_q.weight",
                    f"{a}.norm_added_k.weight",
                    f"{prefix}.{i}.ff.net.2.weight",
                ]
            else:
                names += [f"{prefix}.{i}.proj_out.weight", f"{prefix}.{i}.proj_mlp.weight"]
            names += [f"{a}.{p}.{part}" for p in projs for part in ("weight", "bias")]
            if down_factor > 1:
                names.append(f"{a}.processor.spatial_weight")
    return names


def clear_state_dict(hidden=64, n_double=1, n_single=1, down_factor=1, seed=0) -> dict[str, torch.Tensor]:
    """Seeded CLEAR weights in the official layout: distill.py's save rule over the diffusers names."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name in diffusers_attention_names(n_double, n_single, down_factor):
        if not (any(s in name for s in SAVE_RULE) or "spatial_weight" in name):
            continue
        if name.endswith("spatial_weight"):
            t = 1.0 / down_factor**2 + 0.05 * torch.rand(1, 1, 1, down_factor, 1, down_factor, 1, generator=g)
        elif name.endswith("weight"):
            t = torch.randn(hidden, hidden, generator=g) / hidden**0.5
        else:
            t = 0.02 * torch.randn(hidden, generator=g)
        sd[name] = t
    return sd


def write_clear_file(path, down_factor=1, dtype=torch.float32, seed=0, **kw) -> dict[str, torch.Tensor]:
    sd = clear_state_dict(down_factor=down_factor, seed=seed, **kw)
    save_file({k: v.to(dtype).contiguous() for k, v in sd.items()}, str(path))
    return {k: v.to(dtype).float() for k, v in sd.items()}
