"""Test-only port of the official CLEAR code (Huage001/CLEAR), independent of ``kernels/clear.py``.

Ported from the official files, with the text length made a parameter (the originals hard-code 512
in the downsample processor and keep the grid in module globals):

- ``attention_processor.py``: ``init_local_mask_flex.local_mask`` and
  ``init_local_downsample_mask_flex.local_dwonsample_mask`` (the masks, here evaluated densely on
  index grids), ``LocalFlexAttnProcessor`` / ``LocalDownsampleFlexAttnProcessor.__call__`` (scale,
  downsampled keys/values through ``unflatten * spatial_weight`` summed over the two ``df`` axes,
  attention over ``[key, key_downsample]``; the flex kernel replaced by dense masked SDPA, which it
  equals mathematically).
- ``transformer_flux.py``: ``FluxPosEmbed.forward(ids, ntk_factor)`` (diffusers'
  ``get_1d_rotary_pos_embed`` with ``theta * ntk_factor``, ``repeat_interleave_real=True``), and the
  diffusers ``FluxTransformerBlock`` / ``FluxSingleTransformerBlock`` forward with the processor's
  unfused ``to_q/to_k/to_v/to_out.0`` projections.

:func:`flux_forward` runs a ComfyUI Flux diffusion model (``comfy.ldm.flux.model.Flux``) the
official way, taking every non-attention weight from the ComfyUI module and the attention
projections of the image stream from a CLEAR state dict in the official (diffusers) layout. It
reads modules only; it calls no ComfyUI attention or RoPE function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TRAIN_SEQ_LEN = 64**2 + 512


# ------------------------------------------------------------------- attention_processor.py


def official_local_mask(text_length, height, width, window_size):
    def local_mask(b, h, q_idx, kv_idx):
        q_y = (q_idx - text_length) // width
        q_x = (q_idx - text_length) % width
        kv_y = (kv_idx - text_length) // width
        kv_x = (kv_idx - text_length) % width
        return torch.logical_or(
            torch.logical_or(q_idx < text_length, kv_idx < text_length),
            (q_y - kv_y) ** 2 + (q_x - kv_x) ** 2 < window_size**2,
        )

    return local_mask


def official_local_downsample_mask(text_length, height, width, window_size):
    def local_dwonsample_mask(b, h, q_idx, kv_idx):
        q_y = (q_idx - text_length) // width
        q_x = (q_idx - text_length) % width
        kv_y = (kv_idx - text_length) // width
        kv_x = (kv_idx - text_length) % width
        return torch.logical_or(
            torch.logical_and(q_idx < text_length, kv_idx < text_length + height * width),
            torch.logical_and(
                q_idx >= text_length,
                torch.logical_or(
                    torch.logical_or(kv_idx < text_length, kv_idx >= text_length + height * width),
                    (q_y - kv_y) ** 2 + (q_x - kv_x) ** 2 < window_size**2,
                ),
            ),
        )

    return local_dwonsample_mask


def official_dense_mask(text_length, height, width, window_size, down_factor=1):
    """The official mask function evaluated on every (query, key) pair."""
    q_len = text_length + height * width
    kv_len = q_len + ((height // down_factor) * (width // down_factor) if down_factor > 1 else 0)
    fn = (
        official_local_mask(text_length, height, width, window_size)
        if down_factor == 1
        else official_local_downsample_mask(text_length, height, width, window_size)
    )
    return fn(None, None, torch.arange(q_len)[:, None], torch.arange(kv_len)[None, :])


def official_downsample(x, text_length, height, width, down_factor, spatial_weight):
    """``(x[:, :, T:].unflatten(2, (H/df, df, W/df, df)) * spatial_weight).sum(dim=(3, 5)).flatten(2, 3)``."""
    return (
        (
            x[:, :, text_length:].unflatten(
                2, (height // down_factor, down_factor, width // down_factor, down_factor)
            )
            * spatial_weight
        )
        .sum(dim=(3, 5))
        .flatten(2, 3)
    )


def official_scale(head_dim, seq_len, proportional, down):
    if not proportional:
        return math.sqrt(1 / head_dim)
    n = 10 * seq_len if down else seq_len
    return math.sqrt(math.log(n, TRAIN_SEQ_LEN) / head_dim)


def processor_attention(
    query,
    key,
    value,
    text_length,
    height,
    width,
    window_size,
    down_factor=1,
    spatial_weight=None,
    proportional_attention=False,
):
    """The processors' attention on ``[B, heads, T + H*W, D]`` rotary-embedded q, k, v."""
    head_dim = query.shape[-1]
    scale = official_scale(head_dim, key.size(2), proportional_attention, down_factor > 1)
    mask = official_dense_mask(text_length, height, width, window_size, down_factor).to(query.device)
    if down_factor > 1:
        kd = official_downsample(key, text_length, height, width, down_factor, spatial_weight)
        vd = official_downsample(value, text_length, height, width, down_factor, spatial_weight)
        key, value = torch.cat([key, kd], dim=2), torch.cat([value, vd], dim=2)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)


# ------------------------------------------------------------------------ transformer_flux.py


def rotary_cos_sin(ids, axes_dim, theta, ntk_factor=1.0):
    """``FluxPosEmbed.forward``: ``ids [S, n_axes]`` -> (cos, sin) ``[S, sum(axes_dim)]``, float32."""
    cos_out, sin_out = [], []
    pos = ids.double()
    for i, dim in enumerate(axes_dim):
        base = theta * ntk_factor
        freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64)[: dim // 2] / dim))
        freqs = torch.outer(pos[:, i], freqs)
        cos_out.append(freqs.cos().repeat_interleave(2, dim=1).float())
        sin_out.append(freqs.sin().repeat_interleave(2, dim=1).float())
    return torch.cat(cos_out, dim=-1), torch.cat(sin_out, dim=-1)


def apply_rotary_emb(x, cos, sin):
    """diffusers ``apply_rotary_emb`` (``use_real_unbind_dim=-1``) on ``[B, heads, S, D]``."""
    x_real, x_imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)


def _lin(x, sd, name):
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))


def _heads(x, heads):
    b, s, c = x.shape
    return x.view(b, s, heads, c // heads).transpose(1, 2)


def _rms(x, norm):
    """RMSNorm with eps 1e-6 (BFL's); the module's scale is ``scale`` (ComfyUI 0.3.x) or ``weight`` (later)."""
    scale = norm.scale if hasattr(norm, "scale") else norm.weight
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype) * scale


def _mod(lin, vec, n):
    return lin(F.silu(vec))[:, None, :].chunk(n, dim=-1)


def flux_forward(
    net,
    clear_sd,
    x,
    timestep,
    context,
    y,
    guidance,
    window_size,
    down_factor=1,
    proportional_attention=False,
    ntk_factor=1.0,
):
    """The FLUX.1 forward with the official CLEAR processors in every attention.

    ``net``: ComfyUI ``comfy.ldm.flux.model.Flux`` (weights read from its modules); ``clear_sd``: the
    CLEAR file's tensors (diffusers keys, float32); ``x`` ``[B, C, H, W]`` latent (H, W even),
    ``timestep`` ``[B]``, ``context`` ``[B, T, ctx]``, ``y`` ``[B, vec]``, ``guidance`` ``[B]`` or None.
    Returns the velocity ``[B, C, H, W]`` (float32).
    """
    b, c, h, w = x.shape
    ph, pw = h // 2, w // 2
    heads = net.num_heads
    img = x.reshape(b, c, ph, 2, pw, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, ph * pw, c * 4)
    t_len = context.shape[1]

    def temb(t):
        half = 128
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = (1000.0 * t)[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    vec = net.time_in(temb(timestep))
    if guidance is not None and net.params.guidance_embed:
        vec = vec + net.guidance_in(temb(guidance))
    vec = vec + net.vector_in(y)
    hs = net.img_in(img)
    enc = net.txt_in(context)

    img_ids = torch.zeros(ph, pw, 3)
    img_ids[..., 1] = torch.arange(ph)[:, None]
    img_ids[..., 2] = torch.arange(pw)[None, :]
    ids = torch.cat([torch.zeros(t_len, 3), img_ids.reshape(-1, 3)], dim=0)
    cos, sin = rotary_cos_sin(ids, net.params.axes_dim, net.params.theta, ntk_factor)

    def attend(q, k, v, sd, prefix):
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        sw = sd.get(f"{prefix}.attn.processor.spatial_weight")
        out = processor_attention(
            q, k, v, t_len, ph, pw, window_size, down_factor, sw, proportional_attention
        )
        return out.transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[-1])

    for i, blk in enumerate(net.double_blocks):
        p = f"transformer_blocks.{i}"
        i_sh, i_sc, i_g, i_sh2, i_sc2, i_g2 = _mod(blk.img_mod.lin, vec, 6)
        t_sh, t_sc, t_g, t_sh2, t_sc2, t_g2 = _mod(blk.txt_mod.lin, vec, 6)
        n_img = F.layer_norm(hs, (hs.shape[-1],), eps=1e-6) * (1 + i_sc) + i_sh
        n_txt = F.layer_norm(enc, (enc.shape[-1],), eps=1e-6) * (1 + t_sc) + t_sh
        q = _rms(_heads(_lin(n_img, clear_sd, f"{p}.attn.to_q"), heads), blk.img_attn.norm.query_norm)
        k = _rms(_heads(_lin(n_img, clear_sd, f"{p}.attn.to_k"), heads), blk.img_attn.norm.key_norm)
        v = _heads(_lin(n_img, clear_sd, f"{p}.attn.to_v"), heads)
        tq, tk, tv = blk.txt_attn.qkv(n_txt).chunk(3, dim=-1)
        tq = _rms(_heads(tq, heads), blk.txt_attn.norm.query_norm)
        tk = _rms(_heads(tk, heads), blk.txt_attn.norm.key_norm)
        out = attend(
            torch.cat([tq, q], 2), torch.cat([tk, k], 2), torch.cat([_heads(tv, heads), v], 2), clear_sd, p
        )
        txt_out, img_out = out[:, :t_len], out[:, t_len:]
        hs = hs + i_g * _lin(img_out, clear_sd, f"{p}.attn.to_out.0")
        hs = hs + i_g2 * blk.img_mlp(F.layer_norm(hs, (hs.shape[-1],), eps=1e-6) * (1 + i_sc2) + i_sh2)
        enc = enc + t_g * blk.txt_attn.proj(txt_out)
        enc = enc + t_g2 * blk.txt_mlp(F.layer_norm(enc, (enc.shape[-1],), eps=1e-6) * (1 + t_sc2) + t_sh2)

    hs = torch.cat([enc, hs], dim=1)
    hidden = net.hidden_size
    for i, blk in enumerate(net.single_blocks):
        p = f"single_transformer_blocks.{i}"
        sh, sc, g = _mod(blk.modulation.lin, vec, 3)
        normed = F.layer_norm(hs, (hidden,), eps=1e-6) * (1 + sc) + sh
        mlp = F.linear(normed, blk.linear1.weight[3 * hidden :], blk.linear1.bias[3 * hidden :])
        q = _rms(_heads(_lin(normed, clear_sd, f"{p}.attn.to_q"), heads), blk.norm.query_norm)
        k = _rms(_heads(_lin(normed, clear_sd, f"{p}.attn.to_k"), heads), blk.norm.key_norm)
        v = _heads(_lin(normed, clear_sd, f"{p}.attn.to_v"), heads)
        out = attend(q, k, v, clear_sd, p)
        hs = hs + g * blk.linear2(torch.cat([out, F.gelu(mlp, approximate="tanh")], dim=2))

    hs = hs[:, t_len:]
    shift, scale = net.final_layer.adaLN_modulation(vec).chunk(2, dim=1)
    hs = F.layer_norm(hs, (hidden,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    out = net.final_layer.linear(hs)
    return out.reshape(b, ph, pw, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
