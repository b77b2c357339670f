#!/usr/bin/env bash
# Makes the committed latent texture bundles onnx/ldm64 and onnx/ldm64-{brick,grass,gravel} from
# data/textures, the way GLAD is made: a latent diffusion model pretrained by others (here by
# scripts/train_ldm.py on the normal train images of all classes), then per class ATP
# fine-tuning of its UNet by `train`, a patch bank, parameters tuned on validation data and a
# calibration. The test sets are used only by the last step (`eval`), which reports.
#
#   scripts/texture_bundles.sh pretrain    # torch (scripts/requirements-export.txt); resumable
#   scripts/texture_bundles.sh pretrain-broad   # onnx/ldm64-base: BASE continued on a broad image set; resumable
#   scripts/texture_bundles.sh class NAME  # train + bank + tune + calibrate one class
#   scripts/texture_bundles.sh tune NAME   # bank + tune + calibrate an already trained class
#   scripts/texture_bundles.sh eval NAME   # test-set table: tuned defaults, bank, reconstruction, union, baseline
#
# Environment: PY (python with torch), GLAD and TRAIN (binaries; default target/release),
# WORK (checkpoints; default .work/ldm64), THREADS (default 1), STEPS (ATP steps, default 300),
# HORIZON (train's --horizon; default 300, the largest denoise_step of the tune grid; GLAD's is 1000),
# BASE (the base bundle; default onnx/ldm64, class bundles go beside it as BASE-NAME),
# ANOMALIES (tune's synthetic validation anomalies; default 120, three per validation normal),
# DATASET (what `eval` scores; default data/textures),
# LATENT_CHANNELS (of the autoencoder pretrain makes; default 4), AE_STEPS, AE_LR, UNET_STEPS and
# UNET_MINUTES (pretrain's stage totals and limits). The committed bundles: LATENT_CHANNELS=8
# AE_STEPS=6000 AE_LR=1e-3 UNET_MINUTES=56 for pretrain, STEPS=300 for brick and 1500 for grass
# and gravel, HORIZON=300.
# pretrain-broad: BROAD (the bundle it writes; default onnx/ldm64-base), BROAD_WORK (its
# checkpoints; default .work/ldm64-base), PRETRAIN_SET (default .work/pretrain-set, made by
# scripts/make_pretrain_set.py with PRETRAIN_SEED, default 1234, when missing); AE_STEPS,
# UNET_STEPS (stage totals; the defaults are those of the committed onnx/ldm64-base), AE_MINUTES
# and UNET_MINUTES (limits; none by default). It starts from BASE's weights (`recover`), reports
# the fidelity of both on the validation normals of data/textures and data/unseen (whose three
# classes the set holds out), exports BROAD and its training graphs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
GLAD=${GLAD:-target/release/glad}
TRAIN=${TRAIN:-target/release/train}
WORK=${WORK:-.work/ldm64}
THREADS=${THREADS:-1}
STEPS=${STEPS:-300}
HORIZON=${HORIZON:-300}
ANOMALIES=${ANOMALIES:-120}
DATASET=${DATASET:-data/textures}
BASE=${BASE:-onnx/ldm64}
LC=(--latent-channels "${LATENT_CHANNELS:-4}")

# Foreign textures for the synthetic anomalies of ATP and of tune's validation set (the way DRAEM
# and GLAD paste DTD textures): the other classes' train normals, never a test image. Prints the folder.
foreign() {
  local dir="$WORK/foreign-$1" o f
  rm -rf "$dir" && mkdir -p "$dir"
  for o in data/textures/*/; do
    o=$(basename "$o")
    [ "$o" = "$1" ] || for f in data/textures/$o/train/good/*.png; do ln -s "$PWD/$f" "$dir/$o-$(basename "$f")"; done
  done
  echo "$dir"
}

# bank + tune + calibrate of class $1 (bundle $BASE-$1), with the foreign textures in $2
tune_class() {
  local c=$1 foreign=$2 out=$BASE-$1
  "$GLAD" bank --bundle "$out" --images "data/textures/$c/train/good" --coreset 1.0 --precision f16 --threads "$THREADS"
  "$GLAD" tune --bundle "$out" --images "data/textures/$c/validation/good" --threads "$THREADS" --textures "$foreign" \
    --anomalies "$ANOMALIES" --grid-denoise-step 100,200,300 --grid-v 0,0.5,1 --grid-reference reconstruction,bank,union --write-defaults \
    --out "$WORK/tune/$c"
  "$GLAD" calibrate --bundle "$out" --images "data/textures/$c/validation/good" --threads "$THREADS" --write-bundle \
    --write "$WORK/$c-station.yaml"
}

case "${1:-}" in
  pretrain)
    # Continues from the committed base bundle when the torch checkpoints are gone (`recover`
    # rebuilds them from its ONNX files); stage totals are steps, not increments.
    if [ ! -f "$WORK/ae.pt" ] && [ -f "$BASE/bundle.yaml" ]; then
      "$PY" scripts/train_ldm.py recover --work "$WORK" "${LC[@]}" --out "$BASE"
    fi
    "$PY" scripts/train_ldm.py ae --work "$WORK" "${LC[@]}" --steps "${AE_STEPS:-4500}" --minutes 30 --batch 16 --lr "${AE_LR:-5e-4}" --log-every 100
    rm -f "$WORK/latents.pt"   # the latents belong to the autoencoder just trained
    "$PY" scripts/train_ldm.py unet --work "$WORK" "${LC[@]}" --steps "${UNET_STEPS:-30000}" --minutes "${UNET_MINUTES:-42}" --batch 16 --log-every 100
    "$PY" scripts/train_ldm.py sample --work "$WORK" "${LC[@]}" --every 4
    "$PY" scripts/train_ldm.py export --work "$WORK" "${LC[@]}" --out "$BASE"
    "$PY" scripts/export_train_graph.py --bundle "$BASE" --batch 8
    ;;
  pretrain-broad)
    broad=${BROAD:-onnx/ldm64-base}
    bwork=${BROAD_WORK:-.work/ldm64-base}
    pset=${PRETRAIN_SET:-.work/pretrain-set}
    lc=(--latent-channels 8)
    [ -f "$pset/manifest.json" ] || "$PY" scripts/make_pretrain_set.py --out "$pset" --seed "${PRETRAIN_SEED:-1234}"
    if [ ! -f "$bwork/ae.pt" ]; then
      "$PY" scripts/train_ldm.py recover --work "$bwork" "${lc[@]}" --out "$BASE"
    fi
    "$PY" scripts/train_ldm.py ae --work "$bwork" "${lc[@]}" --data-dir "$pset" --steps "${AE_STEPS:-9117}" \
      --minutes "${AE_MINUTES:-1e9}" --batch 16 --lr 1e-3 --log-every 100 --save-every 250
    # (the UNet stage encodes the set again when its cached latents belong to another autoencoder step)
    "$PY" scripts/train_ldm.py unet --work "$bwork" "${lc[@]}" --data-dir "$pset" --steps "${UNET_STEPS:-23893}" \
      --minutes "${UNET_MINUTES:-1e9}" --batch 16 --log-every 100 --save-every 500
    "$PY" scripts/train_ldm.py sample --work "$bwork" "${lc[@]}" --every 4
    # fidelity of the new base and of BASE on the same validation normals (held-out classes included)
    [ -f "$bwork-origin/unet.pt" ] || "$PY" scripts/train_ldm.py recover --work "$bwork-origin" "${lc[@]}" --out "$BASE"
    for w in "$bwork" "$bwork-origin"; do
      "$PY" scripts/train_ldm.py fidelity --work "$w" "${lc[@]}" --eval data/unseen --json "$w/fidelity.json"
    done
    "$PY" scripts/train_ldm.py export --work "$bwork" "${lc[@]}" --data-dir "$pset" --out "$broad"
    "$PY" scripts/export_train_graph.py --bundle "$broad" --batch 8
    ;;
  class)
    c=${2:?class name}
    out=$BASE-$c
    foreign=$(foreign "$c")
    "$TRAIN" --bundle "$BASE" --images "data/textures/$c/train/good" --out "$out" --force --textures "$foreign" \
      --checkpoint "$WORK/$c.ckpt" --steps "$STEPS" --batch 8 --lr 1e-4 --warmup 30 \
      --horizon "$HORIZON" --threads "$THREADS" --seed 0 --log-every 25 --no-progress --checkpoint-every 50
    rm -rf "$out/train" "$out/README.md"   # the training graphs and the base's README stay with the base bundle
    tune_class "$c" "$foreign"
    ;;
  tune)
    c=${2:?class name}
    tune_class "$c" "$(foreign "$c")"
    ;;
  eval)
    c=${2:?class name}
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    # bank alone: no pixel term either (v = 0), so nothing of the reconstruction enters the map
    printf 'glad:\n  reference: bank\n  v: 0.0\n' > "$tmp/bank.yaml"
    # the other references at the tuned T, tau and v
    printf 'glad:\n  reference: reconstruction\n' > "$tmp/reconstruction.yaml"
    printf 'glad:\n  reference: union\n' > "$tmp/union.yaml"
    "$GLAD" eval --dataset "$DATASET" --class "$c" --bundle "$BASE-$c" --threads "$THREADS" --out "$WORK/eval/$c/tuned"
    for r in bank reconstruction union; do
      "$GLAD" eval --dataset "$DATASET" --class "$c" --bundle "$BASE-$c" --config "$tmp/$r.yaml" --threads "$THREADS" --out "$WORK/eval/$c/$r"
    done
    "$GLAD" eval --dataset "$DATASET" --class "$c" --bundle "$BASE-$c" --baseline --threads "$THREADS" --out "$WORK/eval/$c/baseline"
    ;;
  *)
    echo "usage: scripts/texture_bundles.sh pretrain | pretrain-broad | class NAME | tune NAME | eval NAME" >&2
    exit 64
    ;;
esac
