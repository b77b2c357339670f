#!/usr/bin/env bash
# The GPU device check (issue 15): on a machine with an NVIDIA GPU, builds glad (or takes the
# binary packed here), exports the full-size synthetic bundle (SD v1.4 UNet + VAE, DINO
# ViT-B/8, 512 px, seeded random weights: scripts/export_bundle.py synthetic-sd14) and prints
# one table: per provider (CPU, CUDA, TensorRT fp32 / fp16 where available) ms per image at
# 512 px with K = 25 and ADP on, the UNet step time (one CFG-pair call), where ADP stopped, and
# the max difference of the anomaly maps against the CPU provider.
#
#   scripts/device-check.sh --pack       HERE (a machine with the package registries): fills
#                                        .device/ with what the GPU machine lacks, in pieces
#   scripts/device-check.sh --receive    THERE, once per piece: keeps the piece that came with this call
#   scripts/device-check.sh              THERE: the check (prints the table, writes $OUT/device-check.md)
#   scripts/device-check.sh --cpu-only [--bundle onnx/tiny]
#                                        anywhere: the non-GPU parts (CPU row only), e.g. on the tiny bundle
# Options: --bundle DIR (skip the export, use DIR), --images N (per GPU row, default 3; the first
# is a warm-up and not counted), --cpu-images N (default 1: a 512 px image takes minutes on a
# CPU with ADP on), --steps K (25), --threads N (16), --skip-cpu.
#
# How the CUDA provider gets to the GPU machine. The machine this workplace lends (x86-64, CUDA 13
# driver, torch 2.11 + CUDA 13 runtime, cuBLAS and cuDNN 9 as pip nvidia-* packages, onnx,
# onnxscript, onnxruntime 1.30 CPU, no TensorRT, no Rust, no diffusers, no network) needs:
#   - libonnxruntime.so.1.31.1 from onnxruntime-gpu (its 1.30 CPU package is older than the
#     api-31 glad needs), libonnxruntime_providers_shared.so, _tensorrt.so (small), and
#     libonnxruntime_providers_cuda.so: 284 MB, whose CUDA fatbins are already compressed
#     (measured: the wheel's deflate keeps 81% of it, xz -6 67%, so about 190 MB to carry);
#   - the glad binary (built here, stripped, xz), and the diffusers wheel (+ importlib_metadata)
#     for the export.
# Each device call carries at most 64 MiB of working tree, and this repository's tracked files
# already take about 45 MB of that, so --pack cuts everything into pieces of PIECE_MB (default
# 16) MiB: about 14 pieces, one per call, back to back within one warm lease (a machine goes
# back 30 s after a call; ignored files stay while it is warm). --receive moves each piece out of
# the carried path into .device/recv/, which no call replaces. If the lease ends half-way, the
# pieces are lost and the transfer starts again. Where that does not fit the device time, the
# CUDA/TensorRT rows say "unavailable" and the CPU row still runs; on a GPU machine of your own,
# `pip install onnxruntime-gpu==1.31.1` (or scripts/fetch-ort.sh --gpu) and ORT_GPU_DIR=<folder
# with the libraries> replace all of this.
# TensorRT needs libnvinfer.so.10 (TensorRT 10), absent on the lent machine: its rows say why.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEV=.device
PIECE_MB=${PIECE_MB:-16}
ORT_VERSION=1.31.1
MODE=check
CPU_ONLY=0
SKIP_CPU=0
BUNDLE=""
IMAGES=3
CPU_IMAGES=1
STEPS=25
THREADS=${THREADS:-16}
while [ $# -gt 0 ]; do
  case "$1" in
    --pack) MODE=pack ;;
    --receive) MODE=receive ;;
    --cpu-only) CPU_ONLY=1 ;;
    --skip-cpu) SKIP_CPU=1 ;;
    --bundle) BUNDLE=$2; shift ;;
    --images) IMAGES=$2; shift ;;
    --cpu-images) CPU_IMAGES=$2; shift ;;
    --steps) STEPS=$2; shift ;;
    --threads) THREADS=$2; shift ;;
    -h | --help) sed -n '2,40p' "$0"; exit 0 ;;
    *) echo "device-check: unknown argument $1" >&2; exit 64 ;;
  esac
  shift
done
say() { echo "device-check: $*" >&2; }
T0=$(date +%s)
elapsed() { echo $(($(date +%s) - T0)); }

# ---------------------------------------------------------------------------- pack (here)
if [ "$MODE" = pack ]; then
  rm -rf "$DEV/stage" "$DEV/pieces"
  mkdir -p "$DEV/stage/files" "$DEV/pieces" "$DEV/wheels"
  say "building glad (release) and stripping it"
  cargo build --release --bin glad
  strip -o "$DEV/stage/files/glad" target/release/glad
  say "downloading onnxruntime-gpu==$ORT_VERSION, diffusers, importlib_metadata (no deps)"
  TMP=$(mktemp -d)
  trap 'rm -rf "$TMP"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 -d "$TMP" "onnxruntime-gpu==$ORT_VERSION"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$DEV/wheels" diffusers==0.42.1 importlib_metadata
  python3 - "$TMP" "$DEV/stage/files" <<'PYEOF'
import glob, os, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0]) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime") and ".so" in base:
            with z.open(name) as src, open(os.path.join(dest, base), "wb") as out:
                out.write(src.read())
PYEOF
  cp "$DEV"/wheels/*.whl "$DEV/stage/files/"
  (cd "$DEV/stage/files" && sha256sum -- * > ../SHA256SUMS)
  say "compressing (xz -6: the CUDA fatbins shrink only to about 67%) and cutting into $PIECE_MB MiB pieces"
  tar -C "$DEV/stage" -cf - files SHA256SUMS | xz -6 -T0 | split -b "${PIECE_MB}M" -d -a 2 - "$DEV/pieces/"
  N=$(ls "$DEV/pieces" | wc -l)
  say "$N pieces in $DEV/pieces ($(du -sh "$DEV/pieces" | cut -f1)); the tracked tree is $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) bytes of the 64 MiB per call"
  echo "Device calls, back to back in one warm lease (each within 30 s of the last):"
  for p in $(ls "$DEV/pieces"); do
    echo "  run(command=\"scripts/device-check.sh --receive\", carry=[\"$DEV/pieces/$p\"])"
  done
  echo "  run(command=\"set -o pipefail; scripts/device-check.sh 2>&1 | tee \$OUT/log\", timeout_s=540)"
  exit 0
fi

# ---------------------------------------------------------------------------- receive (there)
if [ "$MODE" = receive ]; then
  mkdir -p "$DEV/recv"
  got=0
  for p in "$DEV"/pieces/*; do
    [ -f "$p" ] || continue
    cp "$p" "$DEV/recv/$(basename "$p")"
    got=$((got + 1))
  done
  say "received $got piece(s); $DEV/recv holds $(ls "$DEV/recv" | wc -l): $(ls "$DEV/recv" | tr '\n' ' ')"
  exit 0
fi

# ---------------------------------------------------------------------------- check
OUTDIR=${OUT:-$ROOT/out/device-check}
mkdir -p "$OUTDIR"
WORK=$ROOT/out/device-check-work
mkdir -p "$WORK"

# 1. The carried files, when there are any: reassemble and verify.
if [ -d "$DEV/recv" ] && [ ! -f "$DEV/unpacked/SHA256SUMS" ]; then
  say "reassembling $(ls "$DEV/recv" | wc -l) pieces"
  rm -rf "$DEV/unpacked"
  mkdir -p "$DEV/unpacked"
  if cat "$DEV"/recv/* | xz -dc | tar -C "$DEV/unpacked" -xf - && (cd "$DEV/unpacked/files" && sha256sum -c --quiet ../SHA256SUMS); then
    say "carried files complete and verified"
  else
    say "carried files incomplete or corrupt (a piece is missing?): GPU rows will be unavailable"
    rm -rf "$DEV/unpacked"
  fi
fi
CARRIED=$ROOT/$DEV/unpacked/files

# 2. glad: built here if there is cargo, else the carried binary.
if command -v cargo > /dev/null; then
  say "building glad"
  cargo build --release --bin glad >&2
  GLAD=$ROOT/target/release/glad
elif [ -x "$CARRIED/glad" ]; then
  GLAD=$CARRIED/glad
elif [ -x "$ROOT/target/release/glad" ]; then
  GLAD=$ROOT/target/release/glad
else
  say "no cargo and no carried glad binary (scripts/device-check.sh --pack)"
  exit 1
fi
say "glad: $GLAD ($(elapsed) s)"

# 3. ONNX Runtime: the GPU build (its CPU provider serves the CPU row too), else .ort/ (CPU only).
ORT_GPU_DIR=${ORT_GPU_DIR:-$CARRIED}
GPU_LIB=""
if [ -f "$ORT_GPU_DIR/libonnxruntime.so.$ORT_VERSION" ] && [ -f "$ORT_GPU_DIR/libonnxruntime_providers_cuda.so" ]; then
  GPU_LIB=$ORT_GPU_DIR/libonnxruntime.so.$ORT_VERSION
fi
CPU_LIB=${GPU_LIB:-$ROOT/.ort/libonnxruntime.so.$ORT_VERSION}
[ -f "$CPU_LIB" ] || [ -f "$ORT_GPU_DIR/libonnxruntime.so.$ORT_VERSION" ] || { say "no ONNX Runtime $ORT_VERSION library (run scripts/fetch-ort.sh, or --pack/--receive)"; exit 1; }
[ -f "$CPU_LIB" ] || CPU_LIB=$ORT_GPU_DIR/libonnxruntime.so.$ORT_VERSION
# CUDA 13, cuBLAS, cuDNN 9, cuFFT, cuRAND from the pip nvidia-* packages beside torch.
NV=$(python3 -c 'import nvidia, os; print(list(nvidia.__path__)[0])' 2> /dev/null || true)
if [ -n "$NV" ]; then
  LIBS=$(find "$NV" -maxdepth 3 -type d -name lib | tr '\n' ':')
  export LD_LIBRARY_PATH="${LIBS}${ORT_GPU_DIR}:${LD_LIBRARY_PATH:-}"
fi
HAVE_GPU=0
command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1 && HAVE_GPU=1
[ "$CPU_ONLY" = 1 ] && HAVE_GPU=0
HAVE_TRT=0
ldconfig -p 2> /dev/null | grep -q 'libnvinfer.so.10' && HAVE_TRT=1
IFS=: read -ra LIBDIRS <<< "${LD_LIBRARY_PATH:-}"
for d in "${LIBDIRS[@]}"; do
  compgen -G "$d/libnvinfer.so.10*" > /dev/null && HAVE_TRT=1
done

# 4. The bundle: exported once per warm machine (about 4.2 GB).
if [ -z "$BUNDLE" ]; then
  [ "$CPU_ONLY" = 1 ] && BUNDLE=onnx/tiny
fi
if [ -z "$BUNDLE" ]; then
  BUNDLE=$WORK/synthetic-sd14
  if [ ! -f "$BUNDLE/bundle.yaml" ]; then
    if ! python3 -c 'import diffusers' 2> /dev/null; then
      ls "$CARRIED"/*.whl > /dev/null 2>&1 || { say "diffusers is missing and no wheels were carried"; exit 1; }
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$CARRIED"/*.whl
      export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    say "exporting the synthetic SD v1.4 + ViT-B/8 bundle to $BUNDLE ($(elapsed) s)"
    PYTHONUNBUFFERED=1 python3 scripts/export_bundle.py synthetic-sd14 --out "$BUNDLE" --threads "$THREADS" --verify-batches 1 >&2
  fi
fi
RES=$(python3 -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["resolution"])' "$BUNDLE/bundle.yaml" 2> /dev/null ||
  grep -m1 '^resolution:' "$BUNDLE/bundle.yaml" | awk '{print $2}')
say "bundle $BUNDLE at $RES px ($(elapsed) s)"

# 5. Images: the bundled textures (glad resizes them to the bundle resolution).
mapfile -t ALL < <(ls data/textures/brick/test/stain/*.png data/textures/grass/test/scratch/*.png data/textures/gravel/test/hole/*.png | head -8)

# 6. One glad run per provider row.
row() { # name provider fp16 images
  local name=$1 provider=$2 fp16=$3 n=$4 lib=$5
  local dir=$WORK/$name cfg=$WORK/$name.yaml
  rm -rf "$dir"
  mkdir -p "$dir"
  cat > "$cfg" << YAML
runtime:
  library: $lib
  threads: $THREADS
  execution:
    provider: $provider
    policy: require
    io_binding: auto
    tensorrt: { fp16: $fp16, cache_dir: $WORK/trt-cache, max_batch: 1 }
YAML
  say "row $name: $n image(s) ($(elapsed) s)"
  "$GLAD" info --bundle "$BUNDLE" --config "$cfg" > "$dir/info.txt" 2>&1 || true
  if "$GLAD" inspect "${ALL[@]:0:$n}" --bundle "$BUNDLE" --config "$cfg" --steps "$STEPS" --batch 1 --seed 0 \
    --save-map --sequential --out "$dir" > "$dir/inspect.jsonl" 2> "$dir/stderr.txt"; then
    echo ok > "$dir/status"
  else
    echo "failed: $(grep -v '^\s*$' "$dir/stderr.txt" | tail -1 | cut -c1-160)" > "$dir/status"
  fi
}
ROWS=()
if [ "$SKIP_CPU" = 0 ]; then row cpu cpu false "$CPU_IMAGES" "$CPU_LIB"; ROWS+=(cpu); fi
if [ "$HAVE_GPU" = 1 ] && [ -n "$GPU_LIB" ]; then
  row cuda cuda false "$IMAGES" "$GPU_LIB"; ROWS+=(cuda)
  if [ "$HAVE_TRT" = 1 ]; then
    row tensorrt-fp32 tensorrt false "$IMAGES" "$GPU_LIB"; ROWS+=(tensorrt-fp32)
    row tensorrt-fp16 tensorrt true "$IMAGES" "$GPU_LIB"; ROWS+=(tensorrt-fp16)
  fi
fi

# 7. The table.
python3 - "$WORK" "$OUTDIR/device-check.md" "$STEPS" "$RES" "$HAVE_GPU" "$GPU_LIB" "$HAVE_TRT" "${ROWS[@]}" << 'PYEOF'
import json, os, sys
import numpy as np
work, md, steps, res, have_gpu, gpu_lib, have_trt, *rows = sys.argv[1:]
steps = int(steps)

def load(name):
    d = os.path.join(work, name)
    status = open(os.path.join(d, "status")).read().strip() if os.path.exists(os.path.join(d, "status")) else "not run"
    recs = []
    if os.path.exists(os.path.join(d, "inspect.jsonl")):
        recs = [json.loads(l) for l in open(os.path.join(d, "inspect.jsonl")) if l.strip().startswith("{")]
    info = open(os.path.join(d, "info.txt")).read() if os.path.exists(os.path.join(d, "info.txt")) else ""
    unet = [l for l in info.splitlines() if l.startswith("model") and " unet " in f" {l} "]
    return status, recs, (unet[0].split(" on ", 1)[1] if unet and " on " in unet[0] else "?")

cpu_maps = {}
if "cpu" in rows:
    _, recs, _ = load("cpu")
    cpu_maps = {r["path"]: np.load(r["map"]) for r in recs if r.get("ok") and "map" in r}
lines = [f"| provider | UNet on | images timed | ms/image | UNet step ms (CFG pair) | ADP stop step | max abs map diff vs CPU |",
         "|---|---|---|---|---|---|---|"]
for name in rows:
    status, recs, unet = load(name)
    ok = [r for r in recs if r.get("ok")]
    if status != "ok" or not ok:
        lines.append(f"| {name} | {unet} | 0 | {status} | | | |")
        continue
    timed = ok[1:] if len(ok) > 1 and name != "cpu" else ok  # first GPU image: warm-up (engine build, autotune)
    ms = np.mean([r["times_ms"]["engine_ms"] for r in timed])
    step = np.mean([r["times_ms"]["unet_ms"] for r in timed]) / steps
    adp = ",".join(str(r.get("adp_step", "-")) for r in ok)
    diffs = [float(np.max(np.abs(np.load(r["map"]) - cpu_maps[r["path"]]))) for r in ok if r["path"] in cpu_maps and "map" in r]
    diff = "reference" if name == "cpu" else (f"{max(diffs):.2e} ({len(diffs)} images)" if diffs else "no common image")
    lines.append(f"| {name} | {unet} | {len(timed)} | {ms:.0f} | {step:.1f} | {adp} | {diff} |")
notes = []
if have_gpu != "1":
    notes.append("no NVIDIA GPU (or --cpu-only): CUDA and TensorRT rows not run")
elif not gpu_lib:
    notes.append("CUDA/TensorRT unavailable: libonnxruntime_providers_cuda.so did not reach this machine (--pack/--receive, or ORT_GPU_DIR)")
elif have_trt != "1":
    notes.append("TensorRT unavailable: no libnvinfer.so.10 (TensorRT 10) on this machine")
text = f"glad device check: {res} px, K = {steps}, ADP on (bundle tau), batch 1\n\n" + "\n".join(lines) + "\n"
if notes:
    text += "\n" + "\n".join("- " + n for n in notes) + "\n"
print(text)
open(md, "w").write(text)
PYEOF
say "done in $(elapsed) s; table in $OUTDIR/device-check.md"
