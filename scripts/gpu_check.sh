#!/usr/bin/env bash
# The one prepared GPU run (issue "GPU figures"): CUDA tests, the bench's smoke mode, then `make
# bench-gpu`'s full mode on the default ComfyUI (dynamic VRAM on, as users get it), the model-management
# sections again with --disable-dynamic-vram, and on the floor ComfyUI if time is left. Sections run in
# order of value; each writes its results before the next starts, so a run cut short still returns
# what it measured. Every JSON records the device, driver, torch and ComfyUI versions.
#
#   scripts/gpu_check.sh OUT_DIR            # on the GPU machine (budget: GPU_CHECK_BUDGET_S, default 540 s)
#   scripts/gpu_check.sh OUT_DIR --smoke    # rehearsal on the CPU: the same steps at tiny sizes
#
# Python: $PY, else .venv/bin/python, else python3. ComfyUI: the trees `make setup` unpacked
# (.comfyui/<version>/ComfyUI), or COMFYUI_PATH.
set -uo pipefail
OUT="${1:?usage: scripts/gpu_check.sh OUT_DIR [--smoke]}"
MODE="${2:-}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
SUMMARY="$OUT/sections.txt"
BUDGET="${GPU_CHECK_BUDGET_S:-540}"
START=$(date +%s)
: > "$SUMMARY"
left() { echo $((BUDGET - ($(date +%s) - START))); }

# section NAME NEEDED_S COMMAND...: run COMMAND (bounded by what is left) unless less than NEEDED_S is left.
section() {
  local name="$1" need="$2" rc t0
  shift 2
  if [ "$(left)" -lt "$need" ]; then
    echo "$name skipped: $(left) s left, ~$need s needed" | tee -a "$SUMMARY"
    return 0
  fi
  t0=$(date +%s)
  echo "=== $name ($(date -u +%H:%M:%S), $(left) s left): $*" >> "$LOG"
  timeout "$(left)" "$@" >> "$LOG" 2>&1
  rc=$?
  echo "$name rc=$rc in $(($(date +%s) - t0)) s" | tee -a "$SUMMARY"
}

if [ "$MODE" = "--smoke" ]; then
  DEVICE=(--smoke --device cpu)
  BENCH_BUDGET=120
else
  DEVICE=()
  BENCH_BUDGET=300
fi
BENCH=(bench/bench_gpu.py "${DEVICE[@]}")
export PYTHONUNBUFFERED=1

"$PY" - "$OUT/env.json" <<'PYEOF' >> "$LOG" 2>&1
import json, platform, subprocess, sys
import torch
env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
       "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.machine()}
try:
    env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                        "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
except OSError:
    env["nvidia_smi"] = None
json.dump(env, open(sys.argv[1], "w"), indent=1)
print(env)
PYEOF

# 1. the CUDA tests (fp16 and bf16 cases; on the CPU they are collected and skipped)
section cuda_tests 60 "$PY" -m pytest -q -m cuda tests/cuda -p no:cacheprovider --junitxml "$OUT/cuda_tests.xml"
# 2. the bench end to end at tiny sizes (catches a typo before the long run)
section bench_smoke 60 "$PY" bench/bench_gpu.py --smoke --out "$OUT/gpu_smoke.json" --budget-s 60
# 3. the full bench on the default ComfyUI, dynamic VRAM as users get it
section bench_default 120 "$PY" "${BENCH[@]}" --out "$OUT/gpu.json" --budget-s "$BENCH_BUDGET"
# 4. the model-management sections with dynamic VRAM off
section bench_no_dynamic_vram 90 "$PY" "${BENCH[@]}" --only unet,tiling --comfy-arg=--disable-dynamic-vram \
  --out "$OUT/gpu_no_dynamic_vram.json" --budget-s 80
# 5. the same on the floor ComfyUI, if its tree is here and time is left
if [ -d .comfyui/0.3.75/ComfyUI ]; then
  section bench_floor 90 env COMFYUI_VERSION=0.3.75 "$PY" "${BENCH[@]}" --only unet,tiling \
    --out "$OUT/gpu_floor.json" --budget-s 80
fi
echo "done in $(($(date +%s) - START)) s; results in $OUT" | tee -a "$SUMMARY"
