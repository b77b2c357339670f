#!/usr/bin/env bash
# Puts the ONNX Runtime shared library that glad-edge loads at run time into .ort/ (git-ignored).
# ort's own download cannot be used (no network beyond package registries), so the library
# comes out of the PyPI wheel. Idempotent: does nothing when the library is already there.
#   scripts/fetch-ort.sh          CPU library (onnxruntime==1.31.1)
#   scripts/fetch-ort.sh --gpu    CUDA + TensorRT providers (onnxruntime-gpu==1.31.1; needs CUDA 13, cuDNN 9, TensorRT 10)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.31.1
PKG=onnxruntime
[ "${1:-}" = "--gpu" ] && PKG=onnxruntime-gpu
DEST=.ort
LIB="$DEST/libonnxruntime.so.$VERSION"
STAMP="$DEST/.package"
if [ -f "$LIB" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$PKG==$VERSION" ]; then
  exit 0
fi
PY=$(command -v python3 || command -v python) || { echo "fetch-ort: python3 with pip is needed to download $PKG==$VERSION from PyPI" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
echo "fetch-ort: downloading $PKG==$VERSION from PyPI" >&2
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  -d "$TMP" "$PKG==$VERSION"
mkdir -p "$DEST"
"$PY" - "$TMP" "$DEST" <<'PYEOF'
import glob, os, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime") and ".so" in base:
            with z.open(name) as src, open(os.path.join(dest, base), "wb") as out:
                out.write(src.read())
PYEOF
echo "$PKG==$VERSION" > "$STAMP"
ls "$LIB" >/dev/null
echo "fetch-ort: $LIB ready" >&2
