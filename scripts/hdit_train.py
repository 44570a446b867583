"""Train an HDiT with k-diffusion's recipe (the comfy-free trainer in ``kernels/hdit_train.py``).

    .venv/bin/python scripts/hdit_train.py --config models/hdit/ultrares-emoji64.json \
        --out runs/hdit_emoji64 --steps 20000 --max-minutes 75 --resume \
        --export models/hdit/ultrares-emoji64.safetensors

Checkpoints go to ``<out>/checkpoint.pth`` (resumable with ``--resume``); ``--export`` writes the EMA
weights in the inference format every ``--export-every`` steps and at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

from ultrares.kernels.hdit_train import (
    DEFAULT_CONFIG,
    DEVICES,
    PRECISIONS,
    resolve_device,
    resolve_precision,
    train,
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="k-diffusion config JSON (default: the embedded emoji64 config)")
    ap.add_argument("--out", required=True, help="run directory (checkpoint.pth, log)")
    ap.add_argument("--steps", type=int, default=20000, help="total optimizer steps")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pth if present")
    ap.add_argument(
        "--max-minutes", type=float, default=None, help="stop (and save) after this many minutes of this run"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--export-every", type=int, default=500)
    ap.add_argument(
        "--log-every", type=int, default=25, help="log the mean loss and gradient norm every N steps"
    )
    ap.add_argument("--export", default=None, help="inference-format .safetensors path for the EMA weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default="assets/cache")
    ap.add_argument("--device", choices=DEVICES, default="auto", help="auto: cuda, else mps, else cpu")
    ap.add_argument(
        "--mixed-precision",
        choices=PRECISIONS,
        default="auto",
        help="bf16 autocast; auto: bf16 on CUDA, float32 elsewhere",
    )
    args = ap.parse_args(argv)
    for name in ("steps", "batch_size", "ckpt_every", "export_every", "log_every"):
        v = getattr(args, name)
        if v < (0 if name == "steps" else 1):
            ap.error(f"--{name.replace('_', '-')} must be >= {0 if name == 'steps' else 1}; got {v}")
    if args.max_minutes is not None and not (math.isfinite(args.max_minutes) and args.max_minutes > 0):
        ap.error(f"--max-minutes must be a number > 0; got {args.max_minutes}")
    try:
        resolve_precision(args.mixed_precision, resolve_device(args.device))
    except ValueError as e:
        ap.error(str(e))
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
        log_every=args.log_every,
        seed=args.seed,
        cache_dir=args.cache_dir,
        log=log,
        device=args.device,
        mixed_precision=args.mixed_precision,
    )
    log(f"done: {json.dumps(res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
