#!/usr/bin/env bash
# Puts the ONNX Runtime shared library that glad-edge loads at run time into .ort/ (git-ignored).
# ort's own download cannot be used (no network beyond package registries), so the library
# comes out of the PyPI wheel for this machine's architecture (`uname -m`). Idempotent: does
# nothing when the library is already there.
#   scripts/fetch-ort.sh               CPU library (onnxruntime==1.31.1; x86_64 or aarch64)
#   scripts/fetch-ort.sh --gpu         CUDA + TensorRT providers (onnxruntime-gpu==1.31.1; x86_64 only;
#                                      needs CUDA 13, cuDNN 9, TensorRT 10)
#   scripts/fetch-ort.sh --print-wheel [--gpu]
#                                      prints the package and platform tags it would download, downloads nothing
# Environment: FETCH_ORT_ARCH overrides `uname -m` (tests); FETCH_ORT_DRY_RUN=1 is --print-wheel.
# On a Jetson (aarch64 + CUDA) PyPI has no onnxruntime-gpu: use JetPack's ONNX Runtime build
# through `runtime.library` (README, "Jetson and JetPack 6").
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.31.1
PKG=onnxruntime
DRY=${FETCH_ORT_DRY_RUN:-0}
for arg in "$@"; do
  case "$arg" in
    --gpu) PKG=onnxruntime-gpu ;;
    --print-wheel) DRY=1 ;;
    *) echo "fetch-ort: unknown argument $arg (use --gpu, --print-wheel)" >&2; exit 64 ;;
  esac
done
ARCH=${FETCH_ORT_ARCH:-$(uname -m)}
case "$ARCH" in
  x86_64 | amd64) ARCH=x86_64 ;;
  aarch64 | arm64) ARCH=aarch64 ;;
  *) echo "fetch-ort: no ONNX Runtime wheel for architecture $ARCH (PyPI has x86_64 and aarch64); set runtime.library to your own build" >&2; exit 1 ;;
esac
if [ "$PKG" = onnxruntime-gpu ] && [ "$ARCH" = aarch64 ]; then
  cat >&2 <<MSG
fetch-ort: PyPI has no onnxruntime-gpu wheels for aarch64 (microsoft/onnxruntime#20503).
On a Jetson, use JetPack's ONNX Runtime build (>= ${VERSION%.*}, built with --build_shared_lib --use_cuda
--use_tensorrt, or a Jetson AI Lab wheel's libonnxruntime.so) and point runtime.library (or ORT_DYLIB_PATH)
at it; README.md, "Jetson and JetPack 6", says what to install. For the CPU library run fetch-ort.sh without --gpu.
MSG
  exit 2
fi
# pip matches each manylinux tag exactly: the 1.31.1 wheels are manylinux_2_28; the older tags
# are listed so a rebuild under another tag is still found (x86_64 only: aarch64 wheels start at 2_28).
PLATFORMS="manylinux_2_28_$ARCH"
[ "$ARCH" = x86_64 ] && PLATFORMS="$PLATFORMS manylinux_2_27_x86_64 manylinux_2_17_x86_64"
if [ "$DRY" = 1 ]; then
  echo "package=$PKG==$VERSION"
  echo "arch=$ARCH"
  echo "platforms=$PLATFORMS"
  exit 0
fi
DEST=.ort
LIB="$DEST/libonnxruntime.so.$VERSION"
STAMP="$DEST/.package"
if [ -f "$LIB" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$PKG==$VERSION" ]; then
  exit 0
fi
PY=$(command -v python3 || command -v python) || { echo "fetch-ort: python3 with pip is needed to download $PKG==$VERSION from PyPI" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
echo "fetch-ort: downloading $PKG==$VERSION ($ARCH) from PyPI" >&2
PLATFORM_ARGS=()
for p in $PLATFORMS; do PLATFORM_ARGS+=(--platform "$p"); done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
  "${PLATFORM_ARGS[@]}" -d "$TMP" "$PKG==$VERSION"
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
