"""The samples behind the quality figures of the embedded pair (``make quality`` reads them).

    .venv/bin/python scripts/quality_samples.py --out runs/quality_gpu --device cuda   # ~5 min on an H200

Writes to ``--out``: ``s64.pt`` (``{"images": uint8 [N, 3, 64, 64], "classes": int64 [N]}``: stage one,
classes drawn with the training-set class frequencies), ``relay256.tar.<k>`` (JPEG q95, stage two of those
samples in the same order) and ``noise256.tar.<k>`` (JPEG q95, the relay model from pure noise), split in
15 MiB parts, plus ``meta.json`` and a ``quality.log`` of the timings. Seeded: the same files on the same
device and torch. Stage one: DPM-Solver++(2M), 30 steps, cfg 2 (60 evaluations per image); stage two: the
model's own relay settings over the 40-level grid truncated at sigma 0.9 (31 evaluations); from noise:
the full 40-level grid (79 evaluations). ``--budget`` stops the from-noise set early (seconds)."""

import argparse
import io
import json
import os
import tarfile
import time

import torch
from PIL import Image
from ultrares.kernels import emoji_data, hdit
from ultrares.kernels import hdit_format as HF
from ultrares.kernels import relay as R
from ultrares.kernels import schedules as S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "models", "hdit")
OUT, N, DEV, BUDGET = "runs/quality_gpu", 1000, "cuda", float("inf")
T0 = time.time()
LOG: list[str] = []


def log(m):
    line = f"{time.time() - T0:7.1f}s {m}"
    LOG.append(line)
    print(line, flush=True)


def to_u8(x):
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def denoiser(path):
    m, cfg = HF.load_checkpoint(path)
    m = m.to(DEV).float().eval()
    return hdit.Denoiser(m, cfg.sigma_data), cfg


def amp(den):
    def f(x, s, **kw):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=DEV == "cuda"):
            return den(x, s, **kw).float()

    return f


def save_jpegs(name, x_u8, parts_mb=15):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i, im in enumerate(x_u8):
            b = io.BytesIO()
            Image.fromarray(im.permute(1, 2, 0).numpy()).save(b, "JPEG", quality=95)
            ti = tarfile.TarInfo(f"{name}/{i:05d}.jpg")
            ti.size = b.tell()
            b.seek(0)
            tar.addfile(ti, b)
    data = buf.getvalue()
    step = parts_mb * 2**20
    for k in range(0, len(data), step):
        with open(os.path.join(OUT, f"{name}.tar.{k // step}"), "wb") as f:
            f.write(data[k : k + step])
    log(f"{name}: {len(x_u8)} JPEGs, {len(data) / 2**20:.1f} MiB")


@torch.no_grad()
def main():
    os.makedirs(OUT, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    d1, c1 = denoiser(os.path.join(MODELS, "ultrares-emoji64.safetensors"))
    d2, c2 = denoiser(os.path.join(MODELS, "ultrares-emoji-relay256.safetensors"))
    rc = c2.relay  # the trained relay settings, parsed once when the file loaded
    data = emoji_data.load_fluent_dataset(
        os.path.join(ROOT, "assets", "cache"), 64, root=os.path.join(ROOT, emoji_data.FLUENT_DIR)
    )
    freq = torch.bincount(data["labels"][~data["holdout"]], minlength=c1.num_classes).double()
    g = torch.Generator().manual_seed(1234)
    classes = torch.multinomial(freq, N, replacement=True, generator=g)
    noise = torch.randn(N, 3, 64, 64, generator=g)
    sig1 = S.karras_sigmas(30, c1.sigma_min, c1.sigma_max, 7.0, convention="k-diffusion", device=DEV)
    outs = []
    for k in range(0, N, 500):
        outs.append(
            S.sample_dpmpp_2m(
                amp(d1),
                noise[k : k + 500].to(DEV),
                sig1,
                class_cond=classes[k : k + 500].to(DEV),
                cfg_scale=2.0,
                uncond_class=c1.num_classes,
            )
            .float()
            .cpu()
        )
    s64 = torch.cat(outs)
    torch.save({"images": to_u8(s64), "classes": classes}, os.path.join(OUT, "s64.pt"))
    log("stage one done")
    # stage two (relay) from the 64 px samples, and the same model from pure noise
    sig2 = R.relay_sigmas(rc.steps, 0.002, 80.0, rc.rho, rc.truncation_sigma)
    full = torch.cat(
        [
            S.karras_sigmas(rc.steps, 0.002, 80.0, rc.rho, convention="edm"),
            torch.zeros(1, dtype=torch.float64),
        ]
    )
    relay_out, noise_out = [], []
    B = 250
    for k in range(0, N, B):
        up = R.upsample_nearest(s64[k : k + B].to(DEV), 4)
        x = R.relay_start(up, float(sig2[0]), rc.settings.patch, rc.settings.s_block, seed=10_000 + k)
        relay_out.append(to_u8(R.relay_sample(amp(d2), x, sig2, rc.settings, seed=20_000 + k)))
        log(f"relay {k + B}")
    save_jpegs("relay256", torch.cat(relay_out))
    for k in range(0, N, B):
        if time.time() - T0 > BUDGET:
            log(f"budget reached: noise-256 stops at {k}")
            break
        x = float(full[0]) * torch.randn(
            min(B, N - k), 3, 256, 256, generator=torch.Generator().manual_seed(30_000 + k)
        ).to(DEV)
        noise_out.append(to_u8(R.relay_sample(amp(d2), x, full, rc.settings, seed=40_000 + k)))
        log(f"noise {k + B}")
    if noise_out:
        save_jpegs("noise256", torch.cat(noise_out))
    json.dump(
        {
            "N": N,
            "stage1": {"sampler": "dpmpp_2m", "steps": 30, "cfg": 2.0, "evals_per_image": 60},
            "relay": {"sigmas": sig2.tolist()},
            "noise": {"sigmas": full.tolist()},
            "seconds": time.time() - T0,
        },
        open(os.path.join(OUT, "meta.json"), "w"),
        indent=1,
    )
    with open(os.path.join(OUT, "quality.log"), "w") as f:
        f.write("\n".join(LOG) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--n", type=int, default=N, help="stage-one samples (and relay results)")
    ap.add_argument("--device", default=DEV)
    ap.add_argument(
        "--budget", type=float, default=BUDGET, help="seconds after which the from-noise set stops"
    )
    a = ap.parse_args()
    OUT, N, DEV, BUDGET = a.out, a.n, a.device, a.budget
    main()
