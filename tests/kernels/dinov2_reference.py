"""Reference helpers for the DINOv2/DiGIT kernel tests: random official-layout weights, the
Hugging Face layout written from its module tree, a direct ViT evaluation and Keys bicubic weights."""

import math

import torch
from ultrares.kernels.dinov2 import Dinov2, Dinov2Config


def random_official_sd(cfg: Dinov2Config, seed: int = 0) -> dict[str, torch.Tensor]:
    """Official-layout state dict with every tensor random (norms and layer scales included)."""
    g = torch.Generator().manual_seed(seed)
    model = Dinov2(cfg)
    return {
        k: torch.randn(v.shape, generator=g) * (0.5 if v.ndim > 1 else 0.2) + (1.0 if "gamma" in k else 0.0)
        for k, v in model.state_dict().items()
    }


def to_hf_layout(sd: dict[str, torch.Tensor], prefix: str = "dinov2.") -> dict[str, torch.Tensor]:
    """Official -> Hugging Face Dinov2Model names (written from the HF module tree)."""
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if k == "cls_token":
            out["embeddings.cls_token"] = v
        elif k == "mask_token":
            out["embeddings.mask_token"] = v
        elif k == "pos_embed":
            out["embeddings.position_embeddings"] = v
        elif k == "register_tokens":
            out["embeddings.register_tokens"] = v
        elif k.startswith("patch_embed.proj."):
            out["embeddings.patch_embeddings.projection." + parts[-1]] = v
        elif k.startswith("norm."):
            out["layernorm." + parts[-1]] = v
        else:
            n, rest = parts[1], ".".join(parts[2:])
            base = f"encoder.layer.{n}."
            if rest.startswith("attn.qkv."):
                q, kk, vv = v.chunk(3, dim=0)
                for name, t in (("query", q), ("key", kk), ("value", vv)):
                    out[base + f"attention.attention.{name}.{parts[-1]}"] = t
            elif rest.startswith("attn.proj."):
                out[base + "attention.output.dense." + parts[-1]] = v
            elif rest.startswith("ls"):
                out[base + f"layer_scale{rest[2]}.lambda1"] = v
            else:
                out[base + rest] = v
    return {prefix + k: v for k, v in out.items()}


def reference_forward(sd, cfg, x, upto: int, resample=None):
    """Direct evaluation: tokens after block ``upto`` (0-based) then the final LayerNorm.
    Per-head softmax attention written out, exact GELU, pre-norm residuals with layer scale."""
    p, d, h = cfg.patch_size, cfg.embed_dim, cfg.num_heads
    b, _, H, W = x.shape
    rows, cols = H // p, W // p
    patches = x.unfold(2, p, p).unfold(3, p, p)  # b c rows cols p p
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(b, rows * cols, 3 * p * p)
    tok = patches @ sd["patch_embed.proj.weight"].reshape(d, -1).t() + sd["patch_embed.proj.bias"]
    pos = sd["pos_embed"]
    if (rows, cols) != (cfg.pos_grid, cfg.pos_grid):  # written-out resampling of the patch grid
        assert resample is not None, "pass resample=(row matrix, column matrix) for another grid"
        grid = pos[0, 1:].double().reshape(cfg.pos_grid, cfg.pos_grid, d)
        grid = torch.einsum("rm,mnd,cn->rcd", resample[0], grid, resample[1]).reshape(1, rows * cols, d)
        pos = torch.cat([pos[:, :1], grid.to(pos.dtype)], 1)
    tok = torch.cat([sd["cls_token"].expand(b, 1, d), tok], 1) + pos
    if cfg.num_register_tokens:
        tok = torch.cat([tok[:, :1], sd["register_tokens"].expand(b, -1, d), tok[:, 1:]], 1)

    def ln(t, pre):
        mu = t.mean(-1, keepdim=True)
        var = ((t - mu) ** 2).mean(-1, keepdim=True)
        return (t - mu) / torch.sqrt(var + cfg.eps) * sd[pre + ".weight"] + sd[pre + ".bias"]

    for i in range(upto + 1):
        pre = f"blocks.{i}."
        y = ln(tok, pre + "norm1")
        qkv = y @ sd[pre + "attn.qkv.weight"].t() + sd[pre + "attn.qkv.bias"]
        q, k, v = qkv.split(d, -1)
        heads = []
        e = d // h
        for j in range(h):
            qs, ks, vs = (t[..., j * e : (j + 1) * e] for t in (q, k, v))
            a = torch.softmax(qs @ ks.transpose(1, 2) / math.sqrt(e), -1)
            heads.append(a @ vs)
        att = torch.cat(heads, -1) @ sd[pre + "attn.proj.weight"].t() + sd[pre + "attn.proj.bias"]
        tok = tok + att * sd.get(pre + "ls1.gamma", torch.ones(d))
        y = ln(tok, pre + "norm2")
        y = y @ sd[pre + "mlp.fc1.weight"].t() + sd[pre + "mlp.fc1.bias"]
        y = 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))
        y = y @ sd[pre + "mlp.fc2.weight"].t() + sd[pre + "mlp.fc2.bias"]
        tok = tok + y * sd.get(pre + "ls2.gamma", torch.ones(d))
    return ln(tok, "norm")


def keys_bicubic_matrix(src: torch.Tensor, m: int, a: float = -0.75) -> torch.Tensor:
    """[n, m] weights of Keys' cubic convolution (a = -0.75) sampling a length-m signal at the
    source positions ``src``, with edge samples repeated beyond the borders."""

    def w(t):
        t = t.abs()
        return torch.where(
            t <= 1,
            (a + 2) * t**3 - (a + 3) * t**2 + 1,
            torch.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, torch.zeros_like(t)),
        )

    mat = torch.zeros(src.numel(), m, dtype=torch.float64)
    for i, s in enumerate(src.double()):
        base = math.floor(s)
        for j in range(base - 1, base + 3):
            mat[i, min(max(j, 0), m - 1)] += w(s - j)
    return mat


def aa_bicubic_matrix(n_out: int, m: int, a: float = -0.5) -> torch.Tensor:
    """[n_out, m] weights of antialiased bicubic resampling (the PIL-style filter torch uses for
    ``antialias=True``: Keys a = -0.5, support stretched by the down-scale factor, window cut at
    the borders and renormalised)."""

    def w(t):
        t = abs(t)
        if t <= 1:
            return (a + 2) * t**3 - (a + 3) * t**2 + 1
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0

    scale = m / n_out
    support = 2 * scale if scale >= 1 else 2.0
    inv = 1 / scale if scale >= 1 else 1.0
    mat = torch.zeros(n_out, m, dtype=torch.float64)
    for i in range(n_out):
        centre = scale * (i + 0.5)
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), m)
        ws = [w((j - centre + 0.5) * inv) for j in range(lo, hi)]
        for j, v in zip(range(lo, hi), ws):
            mat[i, j] = v / sum(ws)
    return mat


def convention_resample(convention: str, n: int, m: int, registers: int) -> torch.Tensor:
    """[n, m] weights that resample a length-m position-embedding axis to n positions, written
    from each convention's formula (not from our kernel):

    - ``"digit"`` (DiGIT's DINOv2 copy, every model) and ``"hub"`` without registers:
      ``F.interpolate(scale_factor=(n + 0.1) / m, mode="bicubic")`` -> output floor(m * s) = n
      samples at ``src = (dst + 0.5) / s - 0.5`` with Keys' cubic (a = -0.75), no antialiasing;
    - ``"hub"`` with registers: ``F.interpolate(size=n, mode="bicubic", antialias=True)`` -> the
      PIL-style antialiased filter (a = -0.5, support stretched by m / n)."""
    if convention == "hub" and registers:
        return aa_bicubic_matrix(n, m)
    assert convention in ("digit", "hub")
    s = (n + 0.1) / m
    assert math.floor(m * s) == n
    return keys_bicubic_matrix((torch.arange(n) + 0.5) / s - 0.5, m)


def brute_force_tokens(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """[B, N, D] -> [B, N] ids: the nearest centroid by squared L2, in float64."""
    d = ((features.double()[:, :, None, :] - centroids.double()[None, None]) ** 2).sum(-1)
    return d.argmin(-1)
