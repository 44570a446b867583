"""LinFusion: normalised, non-causal linear attention for the self-attention layers of an SD UNet.

LinFusion (arXiv 2409.02097) replaces every ``attn1`` (self-attention) of a Stable Diffusion
UNet by a linear attention distilled from the original. For tokens ``x`` ``[B, N, C]``::

    q = to_q(x + to_q_(x))      k = to_k(ctx + to_k_(ctx))      v = to_v(value)
    to_q_ / to_k_ = Sequential(Linear(C, m), LayerNorm(m), LeakyReLU, Linear(m, C))
    q, k, v split into ``heads`` heads of ``d = C / heads`` channels
    phi(t) = elu(t) + 1                                   (positive feature map)
    z_i  = phi(q_i) . mean_j phi(k_j) + 1e-4
    kv   = sum_j phi(k_j) v_j^T / N                        (the 1/N keeps fp16 in range)
    out  = to_out(phi(q_i) kv / z_i)

which is ``phi(q_i) . sum_j phi(k_j) v_j^T / (phi(q_i) . sum_j phi(k_j) + N * 1e-4)``: time and
memory are O(N d^2) instead of softmax's O(N^2 d). For self-attention ``ctx = value = x``.

Parameter names match the official release (``to_q``, ``to_k``, ``to_v`` without bias,
``to_out.0`` with bias, ``to_q_.{0,1,3}`` and ``to_k_.{0,1,3}``), so an official state dict loads
with ``load_state_dict``. The reductions (``sum_j phi(k_j)`` and ``sum_j phi(k_j) v_j^T``) always
run in float32, whatever the input dtype, and can be chunked over tokens to bound memory.

Fast path: :func:`linear_attention` with ``impl="auto"`` runs a ``torch.compile``-d version of the
same core on CUDA (the feature map, the float32 casts and the normaliser fuse into the reductions'
prologues/epilogues instead of materialising ``[B, N, C]`` float32 copies), and the eager
reference on the CPU, where compiling costs minutes and gains nothing measurable (see
``docs/notes/gpu.md``). ``ULTRARES_LINFUSION_IMPL=reference|compiled`` overrides the choice; a
compile failure (no Triton, old driver...) logs one warning and falls back to the reference.

Nothing here imports ComfyUI: ``operations`` (an object with ``Linear`` and ``LayerNorm``
classes, like ComfyUI's ``comfy.ops`` namespaces) lets an adapter choose the layer classes.
"""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

EPS = 1e-4
"""The normaliser's epsilon, added to ``phi(q) . mean(phi(k))`` (official value)."""

TORCH_OPS = SimpleNamespace(Linear=nn.Linear, LayerNorm=nn.LayerNorm)


def feature_map(t: torch.Tensor) -> torch.Tensor:
    """LinFusion's positive feature map ``elu(t) + 1``; any shape and float dtype, values > 0."""
    return F.elu(t) + 1.0


IMPLS = ("auto", "reference", "compiled")
_compiled_core = None
_compile_failed = False


def _core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Unchunked core, written for ``torch.compile`` (same maths and float32 accumulation as the
    reference path)."""
    b, nq, c = q.shape
    nk, cv = k.shape[1], v.shape[-1]
    d, e = c // heads, cv // heads
    kf = feature_map(k.float().reshape(b, nk, heads, d))  # [B, Nk, h, d]
    vf = v.float().reshape(b, nk, heads, e)
    kv = torch.einsum("bnhd,bnhe->bhde", kf, vf) / nk
    k_mean = kf.sum(dim=1) / nk  # [B, h, d]
    qf = feature_map(q.float().reshape(b, nq, heads, d))
    num = torch.einsum("bnhd,bhde->bnhe", qf, kv)
    den = torch.einsum("bnhd,bhd->bnh", qf, k_mean).unsqueeze(-1) + EPS
    return (num / den).reshape(b, nq, cv).to(q.dtype)


def resolve_impl(impl: str, device: torch.device | str) -> str:
    """Which implementation ``impl`` means on ``device``: ``"compiled"`` or ``"reference"``."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, not {impl!r}")
    if impl == "auto":
        impl = os.environ.get("ULTRARES_LINFUSION_IMPL", "auto")
        if impl not in IMPLS:
            raise ValueError(f"ULTRARES_LINFUSION_IMPL must be one of {IMPLS}, not {impl!r}")
    if impl == "auto":
        impl = "compiled" if torch.device(device).type == "cuda" and not _compile_failed else "reference"
    return impl


def _run_compiled(q, k, v, heads):
    global _compiled_core, _compile_failed
    if _compiled_core is None:
        _compiled_core = torch.compile(_core, dynamic=True)
    try:
        return _compiled_core(q, k, v, heads)
    except Exception as exc:  # noqa: BLE001 -- any compiler/runtime failure: the reference is always correct
        _compile_failed = True
        logging.warning(
            "UltraRes LinFusion: the compiled attention failed (%s: %s); using the reference "
            "implementation from now on.",
            type(exc).__name__,
            str(exc).splitlines()[0][:200],
        )
        return None


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    chunk_size: int | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """The LinFusion attention core on already projected features.

    Args:
        q: ``[B, Nq, C]`` queries after ``to_q`` (before the feature map), any float dtype.
        k: ``[B, Nk, C]`` keys after ``to_k`` (before the feature map), same dtype.
        v: ``[B, Nk, Cv]`` values after ``to_v``, same dtype; ``Cv`` divisible by ``heads``.
        heads: number of heads; ``C`` and ``Cv`` must be divisible by it.
        chunk_size: if given, process at most this many tokens at a time (both for the key
            reduction and for the queries), so no ``[B, N, C]`` float32 temporary is created
            (always the reference implementation).
        impl: ``"auto"`` (compiled on CUDA, reference elsewhere), ``"reference"`` or ``"compiled"``.

    Returns:
        ``[B, Nq, Cv]`` in ``q``'s dtype: ``phi(q_i) kv / (phi(q_i) . mean phi(k) + 1e-4)``
        with ``kv = sum_j phi(k_j) v_j^T / Nk``, per head. Reductions are float32.
    """
    if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
        raise ValueError(
            f"q, k, v must be [B, N, C]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[-1] % heads or v.shape[-1] % heads:
        raise ValueError(f"channels {q.shape[-1]} / {v.shape[-1]} are not divisible by heads={heads}")
    n_keys = k.shape[1]
    chunked = bool(chunk_size) and max(n_keys, q.shape[1]) > int(chunk_size)
    if not chunked and resolve_impl(impl, q.device) == "compiled":
        out = _run_compiled(q, k, v, heads)
        if out is not None:
            return out
    step = n_keys if not chunk_size else max(1, int(chunk_size))
    k_sum = None
    kv = None
    for start in range(0, n_keys, step):
        kc = feature_map(rearrange(k[:, start : start + step].float(), "b n (h d) -> b h n d", h=heads))
        vc = rearrange(v[:, start : start + step].float(), "b n (h e) -> b h n e", h=heads)
        part_kv = torch.einsum("bhnd,bhne->bhde", kc, vc)
        part_sum = kc.sum(dim=2)
        kv = part_kv if kv is None else kv + part_kv
        k_sum = part_sum if k_sum is None else k_sum + part_sum
    kv = kv / n_keys  # [B, h, d, e]
    k_mean = k_sum / n_keys  # [B, h, d]
    return _attend(q, kv, k_mean, heads, chunk_size)


def _attend(q: torch.Tensor, kv: torch.Tensor, k_mean: torch.Tensor, heads: int, chunk_size: int | None):
    """``phi(q) kv / (phi(q) . k_mean + eps)`` for ``q`` ``[B, N, C]``; kv/k_mean float32."""
    n_query = q.shape[1]
    step = n_query if not chunk_size else max(1, int(chunk_size))
    outs = []
    for start in range(0, n_query, step):
        qc = feature_map(rearrange(q[:, start : start + step].float(), "b n (h d) -> b h n d", h=heads))
        num = torch.einsum("bhnd,bhde->bhne", qc, kv)
        den = torch.einsum("bhnd,bhd->bhn", qc, k_mean).unsqueeze(-1) + EPS
        outs.append(rearrange(num / den, "b h n e -> b n (h e)").to(q.dtype))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


class LowRankBranch(nn.Sequential):
    """``Linear(C, m) -> LayerNorm(m) -> LeakyReLU -> Linear(m, C)``; indices 0, 1, 3 hold weights."""

    def __init__(self, dim: int, mid_dim: int, operations=TORCH_OPS, dtype=None, device=None):
        super().__init__(
            operations.Linear(dim, mid_dim, dtype=dtype, device=device),
            operations.LayerNorm(mid_dim, dtype=dtype, device=device),
            nn.LeakyReLU(),
            operations.Linear(mid_dim, dim, dtype=dtype, device=device),
        )


class LinFusionAttention(nn.Module):
    """One LinFusion self-attention layer (official parameter names).

    Args:
        dim: channels ``C`` of the tokens (``dim_n`` in the official config).
        heads: number of heads (SD1.5: 8; SD2.x/SDXL: ``C / 64``).
        mid_dim: hidden width ``m`` of ``to_q_``/``to_k_`` (``projection_mid_dim``; ``None`` = C).
        operations: namespace with ``Linear`` and ``LayerNorm`` classes (default ``torch.nn``).
    """

    def __init__(
        self, dim: int, heads: int, mid_dim: int | None = None, operations=TORCH_OPS, dtype=None, device=None
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        self.dim = dim
        self.heads = heads
        self.mid_dim = dim if mid_dim is None else int(mid_dim)
        kw = {"dtype": dtype, "device": device}
        self.to_q = operations.Linear(dim, dim, bias=False, **kw)
        self.to_k = operations.Linear(dim, dim, bias=False, **kw)
        self.to_v = operations.Linear(dim, dim, bias=False, **kw)
        self.to_out = nn.ModuleList([operations.Linear(dim, dim, **kw), nn.Dropout(0.0)])
        self.to_q_ = LowRankBranch(dim, self.mid_dim, operations, **kw)
        self.to_k_ = LowRankBranch(dim, self.mid_dim, operations, **kw)

    def project_q(self, x: torch.Tensor) -> torch.Tensor:
        """``to_q(x + to_q_(x))``: ``[B, N, C]`` -> ``[B, N, C]``, module dtype."""
        return self.to_q(x + self.to_q_(x))

    def project_k(self, x: torch.Tensor) -> torch.Tensor:
        """``to_k(x + to_k_(x))``: ``[B, N, C]`` -> ``[B, N, C]``, module dtype."""
        return self.to_k(x + self.to_k_(x))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        *,
        v_proj: nn.Module | None = None,
        out_proj: nn.Module | None = None,
        chunk_size: int | None = None,
        chunk_projections: bool = True,
        compute_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Apply the layer.

        Args:
            x: ``[B, N, C]`` tokens (queries), float.
            context: ``[B, Nk, C]`` tokens the keys come from; default ``x`` (self-attention).
            value: ``[B, Nk, C]`` tokens the values come from; default ``context``.
            v_proj / out_proj: use these modules instead of ``to_v`` / ``to_out[0]`` (to keep a
                fine-tuned base model's value and output projections).
            chunk_size: tokens per chunk of the float32 reductions (see :func:`linear_attention`).
            chunk_projections: with ``chunk_size`` set and self-attention only (no ``context`` or
                ``value``), also chunk the projections so peak memory is ``O(chunk * C)`` above the
                input and output; False projects all tokens at once and chunks the reductions only.
            compute_dtype: ``None``: nothing is cast (the layer classes, or autocast, decide).
                Given: LinFusion's own projections get their inputs in this dtype (e.g. float32
                for SD2.x weights in an fp16 model), ``v_proj`` / ``out_proj`` get theirs in
                ``x``'s dtype, and the result is cast to ``x``'s dtype (a drop-in attention).

        Returns: ``[B, N, C]``: in ``x``'s dtype when ``compute_dtype`` is given, else in the dtype
        the output projection produces.
        """
        cast = compute_dtype is not None

        def own(t: torch.Tensor) -> torch.Tensor:  # an input of one of LinFusion's own layers
            return t.to(compute_dtype) if cast else t

        def project_v(t: torch.Tensor) -> torch.Tensor:
            return self.to_v(own(t)) if v_proj is None else v_proj(t)

        def project_out(core: torch.Tensor) -> torch.Tensor:
            if out_proj is None:
                out = self.to_out[0](core)
            else:
                out = out_proj(core.to(x.dtype) if cast else core)
            return out.to(x.dtype) if cast else out

        if chunk_size and chunk_projections and context is None and value is None and x.shape[1] > chunk_size:
            return self._forward_chunked(x, own, project_v, project_out, int(chunk_size))
        context = x if context is None else context
        value = context if value is None else value
        q = self.project_q(own(x))
        k = self.project_k(own(context))
        return project_out(linear_attention(q, k, project_v(value), self.heads, chunk_size))

    def _forward_chunked(self, x, own, project_v, project_out, step):
        n_tokens = x.shape[1]
        kv = None
        k_sum = None
        for start in range(0, n_tokens, step):
            xc = x[:, start : start + step]
            kc = feature_map(rearrange(self.project_k(own(xc)).float(), "b n (h d) -> b h n d", h=self.heads))
            vc = rearrange(project_v(xc).float(), "b n (h e) -> b h n e", h=self.heads)
            part_kv = torch.einsum("bhnd,bhne->bhde", kc, vc)
            part_sum = kc.sum(dim=2)
            kv = part_kv if kv is None else kv + part_kv
            k_sum = part_sum if k_sum is None else k_sum + part_sum
        kv = kv / n_tokens
        k_mean = k_sum / n_tokens
        out = None
        for start in range(0, n_tokens, step):
            xc = x[:, start : start + step]
            oc = project_out(_attend(self.project_q(own(xc)), kv, k_mean, self.heads, None))
            if out is None:
                out = oc.new_empty(oc.shape[0], n_tokens, oc.shape[2])
            out[:, start : start + step] = oc
        return out

    @torch.no_grad()
    def init_from_attention(
        self, to_q: nn.Module, to_k: nn.Module, to_v: nn.Module, to_out: nn.Module
    ) -> None:
        """Start from a softmax attention's projections (``to_out`` = its output Linear) and
        zero the last layer of both low-rank branches, so ``q = to_q(x)`` initially.

        A cheaper start for distillation than the official fresh init (which this module's
        constructor gives)."""
        self.to_q.weight.copy_(to_q.weight)
        self.to_k.weight.copy_(to_k.weight)
        self.to_v.weight.copy_(to_v.weight)
        self.to_out[0].weight.copy_(to_out.weight)
        self.to_out[0].bias.copy_(to_out.bias)
        for branch in (self.to_q_, self.to_k_):
            branch[3].weight.zero_()
            branch[3].bias.zero_()
