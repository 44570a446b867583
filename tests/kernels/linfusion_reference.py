"""Reference for the LinFusion kernel tests: the attention formula evaluated directly (O(N^2), float64)."""

import torch
from einops import rearrange
from ultrares.kernels.linfusion import EPS, feature_map


def linear_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Direct O(N^2) evaluation of the formula in float64.

    ``out_i = sum_j A_ij v_j / (sum_j A_ij + Nk * 1e-4)`` with ``A_ij = phi(q_i) . phi(k_j)``.
    Shapes as :func:`ultrares.kernels.linfusion.linear_attention`; returns ``[B, Nq, Cv]`` float64.
    """
    q, k, v = (t.double() for t in (q, k, v))
    qh = feature_map(rearrange(q, "b n (h d) -> b h n d", h=heads))
    kh = feature_map(rearrange(k, "b n (h d) -> b h n d", h=heads))
    vh = rearrange(v, "b n (h e) -> b h n e", h=heads)
    scores = torch.einsum("bhid,bhjd->bhij", qh, kh)  # A_ij, all positive
    out = torch.einsum("bhij,bhje->bhie", scores, vh) / (scores.sum(-1, keepdim=True) + k.shape[1] * EPS)
    return rearrange(out, "b h n e -> b n (h e)")
