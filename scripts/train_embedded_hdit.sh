#!/usr/bin/env bash
# Trains models/hdit/ultrares-emoji64.safetensors, the embedded HDiT (Twemoji, 64x64, 9 classes), with
# k-diffusion's recipe. Config: models/hdit/ultrares-emoji64.json. Resumable: re-running continues
# runs/hdit_emoji64/checkpoint.pth until STEPS optimizer steps are done (CPU: ~1.5 s/step with 1 thread
# on a busy 2-core machine). The shipped weights came from the first version of the trainer (its
# cosine-interpolated sigma sampler had the resolution shifts at the wrong ends, no stratified u, no
# gradient clipping, one lr for all parameters), so a run now trains a similar, not identical, model.
#   STEPS           total optimizer steps (default 8251: the count the shipped weights were trained for)
#   MAX_MINUTES     optional wall-clock cap for this run (the checkpoint is saved; re-run to continue)
#   THREADS         torch threads (1 is fastest when the cores are shared)
#   DEVICE          auto (default: cuda, else mps, else cpu), cpu, cuda or mps
#   MIXED_PRECISION auto (default: bf16 autocast on CUDA, float32 elsewhere), bf16 or no
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-8251}
THREADS=${THREADS:-1}
RUN=${RUN:-runs/hdit_emoji64}
EXTRA=()
if [[ -n "${MAX_MINUTES:-}" ]]; then EXTRA+=(--max-minutes "$MAX_MINUTES"); fi
mkdir -p "$RUN"
exec "$PY" -m ultrares.kernels.hdit_train \
  --config models/hdit/ultrares-emoji64.json \
  --out "$RUN" --steps "$STEPS" --batch-size 32 --seed 0 --threads "$THREADS" --resume \
  --ckpt-every 100 --export-every 250 \
  --device "${DEVICE:-auto}" --mixed-precision "${MIXED_PRECISION:-auto}" \
  --export models/hdit/ultrares-emoji64.safetensors "${EXTRA[@]}"
