"""Quality figure for an HDiT trained on the Twemoji set: nearest-neighbour distances in pixel space.

For every held-out emoji (every 20th file, never trained on) one sample of the same class is drawn, so
samples and held-out images have the same class mix. Reported (RMSE per pixel, RGB in [0, 1], 64x64):
  - samples -> training set: mean distance of each sample to its nearest training image;
  - held-out -> training set: the same for real emoji the model never saw (the reference: a perfect
    model that does not copy would score about this);
  - the share of samples closer to the training set than the median held-out emoji is.
Lower distance is closer to the data; far below the held-out figure would mean copying.

    .venv/bin/python scripts/hdit_quality.py models/hdit/ultrares-emoji64.safetensors --steps 30 --cfg 2.5
"""

from __future__ import annotations

import argparse
import json

import torch
from ultrares.kernels import hdit as H
from ultrares.kernels import hdit_format, schedules
from ultrares.kernels import hdit_train as T


def nn_rmse(a: torch.Tensor, b: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """For each row of ``a [n, d]`` the RMSE to its nearest row of ``b [m, d]`` (float, [0, 1] units)."""
    out = []
    for i in range(0, a.shape[0], chunk):
        d2 = torch.cdist(a[i:i + chunk], b).pow(2) / a.shape[1]
        out.append(d2.min(dim=1).values.sqrt())
    return torch.cat(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--cfg", type=float, default=2.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, cfg = hdit_format.load_checkpoint(args.weights)
    den = H.Denoiser(model, cfg.sigma_data)
    data = T.load_emoji_dataset(size=cfg.input_size[0])
    imgs = data["images"].float().div(255).flatten(1)
    train, held = imgs[~data["holdout"]], imgs[data["holdout"]]
    labels = data["labels"][data["holdout"]]
    g = torch.Generator().manual_seed(args.seed)
    sig = schedules.karras_sigmas(args.steps, cfg.sigma_min, cfg.sigma_max, convention="k-diffusion")
    samples = []
    with torch.no_grad():
        for i in range(0, len(labels), args.batch):
            c = labels[i:i + args.batch]
            noise = torch.randn(len(c), 3, *cfg.input_size, generator=g)
            x = schedules.sample_dpmpp_2m(den, noise, sig, c, cfg_scale=args.cfg, uncond_class=cfg.num_classes)
            samples.append(((x.clamp(-1, 1) + 1) / 2).flatten(1))
    samples = torch.cat(samples)
    res = {
        "weights": args.weights,
        "n": len(labels),
        "steps": args.steps,
        "cfg": args.cfg,
        "sampler": "DPM-Solver++(2M), Karras sigmas",
    }
    d_s, d_h = nn_rmse(samples, train), nn_rmse(held, train)
    res.update({
        "samples_to_train_nn_rmse": round(float(d_s.mean()), 4),
        "heldout_to_train_nn_rmse": round(float(d_h.mean()), 4),
        "samples_below_heldout_median": round(float((d_s < d_h.median()).float().mean()), 3),
    })
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
