#!/usr/bin/env bash
# Training data of the embedded HDiT models: Microsoft's Fluent 3D emoji (MIT), 3,391 WebP files at
# 256x256, from the npm package @lobehub/fluent-emoji-3d@1.1.0, unpacked into assets/fluent-emoji-3d/
# (git-ignored, never committed). Skips itself when present.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DEST="$ROOT/assets/fluent-emoji-3d"
PKG="@lobehub/fluent-emoji-3d@1.1.0"
[ -f "$DEST/.complete" ] && exit 0
echo "[setup] data: $PKG -> assets/fluent-emoji-3d/"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$PKG" >/dev/null && tar xzf ./*.tgz)
n="$(find "$tmp/package/assets" -name '*.webp' | wc -l)"
if [ "$n" != 3391 ]; then echo "[setup] $PKG: expected 3391 WebP files, found $n" >&2; exit 1; fi
rm -rf "$DEST" && mkdir -p "$DEST"
mv "$tmp/package/assets" "$tmp/package/package.json" "$DEST/"
[ -f "$tmp/package/LICENSE" ] && mv "$tmp/package/LICENSE" "$DEST/"
touch "$DEST/.complete"
