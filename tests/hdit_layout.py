"""Official k-diffusion image_transformer_v2 state-dict layout, written from the published key list
(independent of ultrares.kernels.hdit's own attribute names), for the HDiT tests."""

import torch


def official_keys(
    widths, depths, d_heads, mapping_width, mapping_depth, d_ffs, mapping_d_ff, num_classes, patch, c=3
):
    """k-diffusion image_transformer_v2 state-dict keys -> shapes, written from the published key list
    (independent of the module's own attribute names)."""
    p = patch[0] * patch[1]
    mw = mapping_width
    keys = {
        "patch_in.proj.weight": (widths[0], c * p),
        "time_emb.weight": (mw // 2, 1),
        "time_in_proj.weight": (mw, mw),
        "aug_emb.weight": (mw // 2, 9),
        "aug_in_proj.weight": (mw, mw),
        "mapping.in_norm.scale": (mw,),
        "mapping.out_norm.scale": (mw,),
        "out_norm.scale": (widths[0],),
        "patch_out.proj.weight": (c * p, widths[0]),
    }
    if num_classes:
        keys["class_emb.weight"] = (num_classes + 1, mw)
    for b in range(mapping_depth):
        keys[f"mapping.blocks.{b}.norm.scale"] = (mw,)
        keys[f"mapping.blocks.{b}.up_proj.weight"] = (2 * mapping_d_ff, mw)
        keys[f"mapping.blocks.{b}.down_proj.weight"] = (mw, mapping_d_ff)

    def layer(prefix, w, d_ff, d_head):
        nh = w // d_head
        keys[f"{prefix}.self_attn.norm.linear.weight"] = (w, mw)
        keys[f"{prefix}.self_attn.qkv_proj.weight"] = (3 * w, w)
        keys[f"{prefix}.self_attn.scale"] = (nh,)
        keys[f"{prefix}.self_attn.pos_emb.freqs"] = (nh, d_head // 8)
        keys[f"{prefix}.self_attn.out_proj.weight"] = (w, w)
        keys[f"{prefix}.ff.norm.linear.weight"] = (w, mw)
        keys[f"{prefix}.ff.up_proj.weight"] = (2 * d_ff, w)
        keys[f"{prefix}.ff.down_proj.weight"] = (w, d_ff)

    n = len(widths)
    for i in range(n - 1):
        for j in range(depths[i]):
            layer(f"down_levels.{i}.{j}", widths[i], d_ffs[i], d_heads[i])
            layer(f"up_levels.{i}.{j}", widths[i], d_ffs[i], d_heads[i])
        keys[f"merges.{i}.proj.weight"] = (widths[i + 1], 4 * widths[i])
        keys[f"splits.{i}.proj.weight"] = (4 * widths[i], widths[i + 1])
        keys[f"splits.{i}.fac"] = (1,)
    for j in range(depths[-1]):
        layer(f"mid_level.{j}", widths[-1], d_ffs[-1], d_heads[-1])
    return keys


def random_official_state_dict(keys, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in keys.items():
        if k.endswith("pos_emb.freqs"):
            sd[k] = torch.rand(shape, generator=g) * 30 + 3
        elif k.endswith(".scale") and "self_attn" in k:
            sd[k] = torch.rand(shape, generator=g) * 10 + 5
        elif k.endswith("fac"):
            sd[k] = torch.rand(shape, generator=g)
        else:
            sd[k] = torch.randn(shape, generator=g) * (0.02 if len(shape) == 2 else 1.0) + (
                1.0 if len(shape) == 1 else 0
            )
    return sd


SMALL = {
    "model": {
        "type": "image_transformer_v2",
        "input_channels": 3,
        "input_size": [32, 32],
        "patch_size": [2, 2],
        "depths": [1, 1, 2],
        "widths": [32, 64, 64],
        "self_attns": [
            {"type": "neighborhood", "d_head": 16, "kernel_size": 3},
            {"type": "shifted-window", "d_head": 16, "window_size": 4},
            {"type": "global", "d_head": 32},
        ],
        "mapping_width": 32,
        "mapping_depth": 1,
        "sigma_data": 0.5,
    },
    "dataset": {"num_classes": 5},
}


def small_keys():
    return official_keys([32, 64, 64], [1, 1, 2], [16, 16, 32], 32, 1, [96, 192, 192], 96, 5, (2, 2))


def write_official_safetensors(path, config=SMALL, seed=0):
    """A random official-layout checkpoint in k-diffusion's inference format (fp16, config metadata)."""
    import json

    from safetensors.torch import save_file

    m = config["model"]
    n = len(m["widths"])
    d_heads = [sa.get("d_head", 64) for sa in m["self_attns"]]
    keys = official_keys(
        m["widths"],
        m["depths"],
        d_heads,
        m["mapping_width"],
        m["mapping_depth"],
        m.get("d_ffs", [3 * w for w in m["widths"]]),
        m.get("mapping_d_ff", 3 * m["mapping_width"]),
        config.get("dataset", {}).get("num_classes", 0),
        tuple(m["patch_size"]),
    )
    assert n == len(d_heads)
    sd = {k: v.half() for k, v in random_official_state_dict(keys, seed).items()}
    save_file(sd, str(path), metadata={"config": json.dumps(config)})
    return sd
