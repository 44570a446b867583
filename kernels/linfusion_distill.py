"""Distilling LinFusion layers from an SD-family UNet (any fine-tune), and the distillation CLI.

The objective is the official one (LinFusion ``src/train/distill.py``)::

    loss = MSE(pred_student, target) + 0.5 * MSE(pred_student, pred_teacher)
           + 0.5 * mean_l MSE(attn1_student^l, attn1_teacher^l)

in the model's own prediction space, as the official code does: for an epsilon model ``pred`` is
the predicted noise and ``target = eps``; for a v-prediction model (SD2.x-v) ``pred`` is the
predicted velocity and ``target = v = sqrt(abar) eps - sqrt(1 - abar) x0`` (diffusers'
``get_velocity``), i.e. with ``x_noisy = x0 + sigma eps`` and ``abar = 1 / (1 + sigma^2)``:
``v = (eps - sigma x0) / sqrt(1 + sigma^2)``.

The student is the teacher UNet with every ``attn1`` (self-attention) swapped for a
:class:`~.linfusion.LinFusionAttention`; only those layers train (AdamW, lr 1e-4, wd 0). Each
``attn1`` output is captured with forward hooks in the teacher pass and in the student pass.

The training step is comfy-free: the UNet is any ``nn.Module`` whose self-attention modules are
named ``...attn1`` and expose ``to_q``/``to_k``/``to_v``/``to_out`` and ``heads`` (ComfyUI's and
LDM's ``CrossAttention``), driven through a denoiser callable in the k-diffusion convention
``D(x0 + sigma * eps, sigma, **cond) -> x0_hat``. The CLI that loads a user checkpoint through
ComfyUI is ``scripts/linfusion_distill.py`` (this module never imports ComfyUI).

Usage (see ``--help``)::

    python scripts/linfusion_distill.py --checkpoint my_sd15_finetune.safetensors \
        --out models/linfusion/my_finetune.safetensors [--images DIR_WITH_JPG_AND_TXT] --steps 2000
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .linfusion import LinFusionAttention
from .linfusion_format import LayerSpec, attn1_paths, ldm_to_diffusers
from .schedules import sd_sigmas

Denoiser = Callable[..., torch.Tensor]
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# ---------------------------------------------------------------------------------------------
# finding and swapping attn1


def find_attn1(unet: nn.Module) -> dict[str, nn.Module]:
    """Every self-attention module of ``unet`` (``{path: module}``, paths relative to ``unet``)."""
    modules = dict(unet.named_modules())
    found = {name: modules[name] for name in attn1_paths(unet)}
    if not found:
        raise ValueError("the UNet has no modules named 'attn1' (not an SD-family UNet?)")
    return found


def _parent(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    *parts, last = path.split(".")
    obj = root
    for p in parts:
        obj = getattr(obj, p)
    return obj, last


@contextlib.contextmanager
def swapped(root: nn.Module, replacements: dict[str, nn.Module]) -> Iterator[None]:
    """Temporarily set ``root.<path> = module`` for each entry; always restores the originals."""
    saved = {}
    try:
        for path, module in replacements.items():
            parent, name = _parent(root, path)
            saved[path] = getattr(parent, name)
            setattr(parent, name, module)
        yield
    finally:
        for path, module in saved.items():
            parent, name = _parent(root, path)
            setattr(parent, name, module)


@contextlib.contextmanager
def captured(modules: dict[str, nn.Module], inputs: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Record each module's output (or first positional input) during the block, by path."""
    store: dict[str, torch.Tensor] = {}
    handles = []
    for path, module in modules.items():
        if inputs:
            handles.append(module.register_forward_pre_hook(lambda m, a, p=path: store.__setitem__(p, a[0])))
        else:
            handles.append(module.register_forward_hook(lambda m, a, out, p=path: store.__setitem__(p, out)))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


class StudentAttn1(nn.Module):
    """A LinFusion layer with the ``attn1`` call signature ``(x, context=None, value=None, ...)``.

    The layer trains in its own dtype (float32) whatever dtype the teacher UNet runs in (e.g. an
    fp16 checkpoint on a GPU): inputs are cast to the layer's dtype, the output back to ``x``'s.
    """

    def __init__(self, layer: LinFusionAttention):
        super().__init__()
        self.layer = layer

    def forward(self, x, context=None, value=None, mask=None, transformer_options=None, **kwargs):
        return self.layer(x, context, value, compute_dtype=self.layer.to_q.weight.dtype)


def specs_for(
    unet: nn.Module, num_res_blocks: int | list[int], mid_dim_scale: int | None = None
) -> dict[str, LayerSpec]:
    """Official-format specs for every attn1 of an LDM/ComfyUI ``unet``: ``{ldm_path: spec}``.

    Heads are the teacher's (SD1.5: 8; SD2.x/SDXL: C/64); ``mid_dim_scale`` gives
    ``projection_mid_dim = C / scale`` (the official XL release uses 16; ``None`` = C).
    """
    out = {}
    for path, m in find_attn1(unet).items():
        if hasattr(m, "linfusion") or not hasattr(m, "to_q"):
            raise ValueError(
                f"{path} is not a softmax attention ({type(m).__name__}): distil from the model "
                "without LinFusion applied"
            )
        dim = m.to_q.weight.shape[1]
        if m.to_q.weight.shape[0] != dim or m.to_v.weight.shape[0] != dim:
            raise ValueError(
                f"{path}: attn1 inner width {m.to_q.weight.shape[0]} != {dim}; LinFusion needs square q/k/v"
            )
        mid = None if not mid_dim_scale else dim // int(mid_dim_scale)
        out[path] = LayerSpec(ldm_to_diffusers(path, num_res_blocks), dim, int(m.heads), mid)
    return out


def make_student_layers(
    unet: nn.Module, specs: dict[str, LayerSpec], init: str = "teacher"
) -> dict[str, LinFusionAttention]:
    """Fresh LinFusion layers for ``specs``; ``init="teacher"`` copies the teacher's projections and
    zeroes the low-rank branches' last layers; ``"random"`` is the official fresh init."""
    if init not in ("teacher", "random"):
        raise ValueError(f"init must be 'teacher' or 'random', not {init!r}")
    attn = find_attn1(unet)
    ref = next(unet.parameters())
    layers = {}
    for path, spec in specs.items():
        layer = LinFusionAttention(spec.dim_n, spec.heads, spec.projection_mid_dim).to(
            device=ref.device, dtype=torch.float32
        )
        if init == "teacher":
            m = attn[path]
            layer.init_from_attention(m.to_q, m.to_k, m.to_v, m.to_out[0])
        layers[path] = layer
    return layers


# ---------------------------------------------------------------------------------------------
# the objective


PREDICTIONS = ("eps", "v")


@dataclass
class DistillConfig:
    """Optimiser settings and loss weights; ``prediction`` is the space of the noise and teacher
    losses: ``"eps"`` (epsilon models) or ``"v"`` (v-prediction models such as SD2.x-768-v),
    as the official code uses the model's own prediction type."""

    prediction: str = "eps"
    lr: float = 1e-4
    weight_decay: float = 0.0
    w_noise: float = 1.0
    w_teacher: float = 0.5
    w_feature: float = 0.5
    grad_clip: float | None = 1.0


@dataclass
class Distiller:
    """Holds the frozen teacher, the student layers and the optimiser.

    ``denoiser(x_noisy, sigma, **cond) -> x0_hat`` runs ``unet`` (whatever attn1 modules are
    currently installed in it); ``unet`` is the module whose attn1 paths ``layers`` is keyed by.
    """

    unet: nn.Module
    denoiser: Denoiser
    layers: dict[str, LinFusionAttention]
    sigmas: torch.Tensor = field(default_factory=sd_sigmas)
    config: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self):
        if self.config.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, not {self.config.prediction!r}")
        for p in self.unet.parameters():
            p.requires_grad_(False)
        params = [p for layer in self.layers.values() for p in layer.parameters()]
        for p in params:
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)
        self.students = {path: StudentAttn1(layer) for path, layer in self.layers.items()}
        self.teacher_attn = {path: m for path, m in find_attn1(self.unet).items() if path in self.layers}

    def _pred(self, x_noisy, sigma, cond):
        """The model's prediction in ``config.prediction`` space, from the denoiser's ``x0_hat``:
        ``eps_hat = (x_noisy - x0_hat) / sigma``; ``v_hat = (eps_hat - sigma x0_hat) / sqrt(1 + sigma^2)``."""
        s = sigma.view(-1, *([1] * (x_noisy.ndim - 1))).float()
        x0_hat = self.denoiser(x_noisy, sigma, **cond).float()
        eps_hat = (x_noisy.float() - x0_hat) / s
        if self.config.prediction == "v":
            return (eps_hat - s * x0_hat) / torch.sqrt(1.0 + s * s)
        return eps_hat

    def _target(self, x0, eps, sigma):
        s = sigma.view(-1, *([1] * (x0.ndim - 1))).float()
        if self.config.prediction == "v":
            return (eps.float() - s * x0.float()) / torch.sqrt(1.0 + s * s)
        return eps.float()

    def losses(
        self, x0: torch.Tensor, cond: dict, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """The three loss terms and their weighted sum for one batch (noise and teacher terms in
        ``config.prediction`` space, float32).

        ``x0``: ``[B, C, H, W]`` clean latents (model scale); ``cond``: keyword arguments of the
        denoiser (text context etc.). Noise levels are drawn uniformly from ``sigmas``.
        """
        idx = torch.randint(0, len(self.sigmas), (x0.shape[0],), generator=generator)
        sigma = self.sigmas[idx].to(x0.device, x0.dtype)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        x_noisy = x0 + sigma.view(-1, 1, 1, 1) * eps
        with torch.no_grad(), captured(self.teacher_attn) as t_feats:
            pred_teacher = self._pred(x_noisy, sigma, cond)
        with swapped(self.unet, self.students), captured(self.students) as s_feats:
            pred_student = self._pred(x_noisy, sigma, cond)
        noise = F.mse_loss(pred_student, self._target(x0, eps, sigma))
        teacher = F.mse_loss(pred_student, pred_teacher)
        feature = torch.stack(
            [F.mse_loss(s_feats[p].float(), t_feats[p].float()) for p in self.layers]
        ).mean()
        total = (
            self.config.w_noise * noise + self.config.w_teacher * teacher + self.config.w_feature * feature
        )
        return {"loss": total, "noise": noise, "teacher": teacher, "feature": feature}

    def step(
        self, x0: torch.Tensor, cond: dict, generator: torch.Generator | None = None
    ) -> dict[str, float]:
        """One optimiser step; returns the loss terms as floats."""
        self.optimizer.zero_grad(set_to_none=True)
        terms = self.losses(x0, cond, generator)
        terms["loss"].backward()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], self.config.grad_clip
            )
        self.optimizer.step()
        return {k: float(v.detach()) for k, v in terms.items()}

    def prefit(
        self,
        x0: torch.Tensor,
        cond: dict,
        steps: int,
        inner: int = 4,
        lr: float | None = None,
        generator: torch.Generator | None = None,
    ) -> float:
        """Layer-local warm-up (our addition, not in the official recipe): fit each student layer
        to its teacher attn1 on the inputs that attn1 sees, one teacher pass per ``inner`` local
        Adam steps, each layer's MSE divided by its teacher output's mean square so
        small-magnitude layers count as much as large ones. Much cheaper than the full objective (no student UNet pass, no backward
        through the UNet); the official objective then fine-tunes. Returns the last mean relative MSE."""
        params = [p for layer in self.layers.values() for p in layer.parameters()]
        opt = torch.optim.Adam(params, lr=lr or max(self.config.lr, 1e-3))
        last = float("nan")
        for _ in range(steps):
            idx = torch.randint(0, len(self.sigmas), (x0.shape[0],), generator=generator)
            sigma = self.sigmas[idx].to(x0.device, x0.dtype)
            eps = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
            with (
                torch.no_grad(),
                captured(self.teacher_attn, inputs=True) as t_in,
                captured(self.teacher_attn) as t_out,
            ):
                self.denoiser(x0 + sigma.view(-1, 1, 1, 1) * eps, sigma, **cond)
            for _ in range(inner):
                opt.zero_grad(set_to_none=True)
                loss = torch.stack(
                    [
                        F.mse_loss(layer(t_in[p].float()), t_out[p].float())
                        / t_out[p].float().square().mean().clamp_min(1e-12)
                        for p, layer in self.layers.items()
                    ]
                ).mean()
                loss.backward()
                opt.step()
                last = float(loss.detach())
        return last

    @torch.no_grad()
    def layer_errors(
        self, x0: torch.Tensor, cond: dict, sigma: float | list[float], seed: int = 0
    ) -> dict[str, float]:
        """Per-layer relative error ``|student(x) - teacher(x)| / |teacher(x)|`` of every attn1 on
        the inputs the teacher's attn1 layers see at noise level(s) ``sigma`` (fixed noise per
        ``seed``); with several levels, the per-layer mean."""
        levels = [sigma] if isinstance(sigma, (int, float)) else list(sigma)
        gen = torch.Generator().manual_seed(seed)
        eps = torch.randn(x0.shape, generator=gen).to(x0.device, x0.dtype)
        errors = dict.fromkeys(self.layers, 0.0)
        for level in levels:
            s = torch.full((x0.shape[0],), float(level), device=x0.device, dtype=x0.dtype)
            with captured(self.teacher_attn, inputs=True) as t_in, captured(self.teacher_attn) as t_out:
                self.denoiser(x0 + float(level) * eps, s, **cond)
            for path, layer in self.layers.items():
                got = layer(t_in[path].to(next(layer.parameters()).dtype)).to(t_out[path].dtype)
                errors[path] += float((got - t_out[path]).norm() / t_out[path].norm().clamp_min(1e-12)) / len(
                    levels
                )
        return errors


@torch.no_grad()
def teacher_latents(
    denoiser: Denoiser,
    shape: tuple[int, ...],
    cond: dict,
    sigmas: torch.Tensor,
    steps: int = 8,
    generator: torch.Generator | None = None,
    device=None,
) -> torch.Tensor:
    """Data-free training latents: the teacher's own samples (Euler, ``steps`` steps from pure
    noise at the largest sigma). Returns ``[*shape]`` float32 latents in model scale."""
    levels = torch.cat([sigmas.flip(0)[:: max(1, len(sigmas) // steps)][:steps], sigmas.new_zeros(1)])
    x = torch.randn(shape, generator=generator).to(device) * levels[0]
    for s, s_next in zip(levels[:-1], levels[1:]):
        sig = torch.full((shape[0],), float(s), device=x.device)
        denoised = denoiser(x, sig, **cond)
        x = denoised + (x - denoised) * (s_next / s)
    return x


def image_caption_pairs(folder: str) -> list[tuple[str, str]]:
    """``[(image_path, caption)]`` for a folder of images; the caption is the same-stem ``.txt``
    (empty if there is none). Raises ``ValueError`` if the folder has no images."""
    if not os.path.isdir(folder):
        raise ValueError(f"--images {folder!r} is not a folder")
    pairs = []
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in IMAGE_EXTS:
            txt = os.path.join(folder, stem + ".txt")
            caption = open(txt, encoding="utf-8").read().strip() if os.path.isfile(txt) else ""
            pairs.append((os.path.join(folder, name), caption))
    if not pairs:
        raise ValueError(f"--images {folder!r} holds no images ({', '.join(IMAGE_EXTS)})")
    return pairs


__all__ = [
    "Distiller",
    "DistillConfig",
    "StudentAttn1",
    "captured",
    "find_attn1",
    "image_caption_pairs",
    "make_student_layers",
    "specs_for",
    "swapped",
    "teacher_latents",
]
