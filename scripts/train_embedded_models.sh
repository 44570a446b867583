#!/usr/bin/env bash
# Trains the two embedded HDiT models on the Fluent 3D emoji (kernels/emoji_data.py; `make setup`
# installs the data), with k-diffusion's recipe (kernels/hdit_train.py):
#   models/hdit/ultrares-emoji64.safetensors        stage one: 64x64, class-conditional (9 Unicode groups)
#   models/hdit/ultrares-emoji-relay256.safetensors stage two: 64 -> 256, trained with the relay (blurring)
#                                                   objective; its relay settings live in the config
# Configs: models/hdit/<name>.json. Resumable and deterministic per seed: re-running continues
# runs/<name>/checkpoint.pth (model, EMA, optimizer and every RNG state) until STEPS_* optimizer
# steps are done. The shipped weights: an H200, bf16, 5.5 minutes each, both at once
# (stage one 3,814 steps at batch 256, stage two 3,129 steps at batch 64).
#   STEPS64 / STEPS256   total optimizer steps (defaults: the shipped counts)
#   BATCH64 / BATCH256   batch sizes (defaults 256 / 64, as shipped; smaller on a CPU changes the recipe)
#   MAX_MINUTES          optional wall-clock cap per model for this run (checkpoint saved; re-run to continue)
#   ONLY                 64 or 256: train just one of the two
#   THREADS              torch threads on the CPU (1 is fastest when the cores are shared)
#   DEVICE               auto (default: cuda, else mps, else cpu), cpu, cuda or mps
#   MIXED_PRECISION      auto (default: bf16 autocast on CUDA, float32 elsewhere), bf16 or no
# On CUDA both models train at the same time on the one GPU; elsewhere one after the other.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
EXTRA=()
if [[ -n "${MAX_MINUTES:-}" ]]; then EXTRA+=(--max-minutes "$MAX_MINUTES"); fi
train() {  # name steps batch
  mkdir -p "runs/$1"
  "$PY" scripts/hdit_train.py \
    --config "models/hdit/$1.json" --out "runs/$1" --steps "$2" --batch-size "$3" --seed 0 \
    --threads "${THREADS:-1}" --resume --ckpt-every 250 --export-every 500 \
    --device "${DEVICE:-auto}" --mixed-precision "${MIXED_PRECISION:-auto}" \
    --export "models/hdit/$1.safetensors" "${EXTRA[@]}" 2>&1 | tee -a "runs/$1/train.log"
}
one=(ultrares-emoji64 "${STEPS64:-3814}" "${BATCH64:-256}")
two=(ultrares-emoji-relay256 "${STEPS256:-3129}" "${BATCH256:-64}")
cuda=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))')
case "${ONLY:-}" in
  64) train "${one[@]}" ;;
  256) train "${two[@]}" ;;
  *) if [[ "$cuda" == 1 && "${DEVICE:-auto}" != cpu ]]; then
       train "${one[@]}" & train "${two[@]}" & wait
     else
       train "${one[@]}"; train "${two[@]}"
     fi ;;
esac
