#!/usr/bin/env bash
# Builds the Debian package with cargo-deb ([package.metadata.deb] in Cargo.toml):
# <target dir>/debian/glad-edge_<version>-1_<arch>.deb, and prints its path on the last line.
#
#   scripts/build-deb.sh [--no-build]
#
# It builds glad and train (release; --no-build takes them from the target folder), stages under out/package/ what the package takes besides
# them: ONNX Runtime from .ort/ (scripts/setup.sh puts it there; for the machine's architecture)
# and the default bundle, closed by `glad bundle pack onnx/pixel64-brick`, then runs `cargo deb`.
# CARGO=/path/to/cargo-wrapper runs cargo through a wrapper. cargo-deb: `cargo install cargo-deb`.
# On a Jetson (arm64) the same command builds the arm64 package natively.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
build=1
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    *) echo "build-deb: unknown argument $arg" >&2; exit 64 ;;
  esac
done
if ! $CARGO deb --version >/dev/null 2>&1; then
  echo "build-deb: cargo-deb is missing: cargo install cargo-deb" >&2
  exit 1
fi
scripts/setup.sh
target_dir=$($CARGO metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
stage=out/package
rm -rf "$stage"
mkdir -p "$stage/ort" "$stage/bundles"
cp .ort/libonnxruntime.so.1.31.1 "$stage/ort/"
[ ! -f .ort/libonnxruntime_providers_shared.so ] || cp .ort/libonnxruntime_providers_shared.so "$stage/ort/"
# `cargo run` and `cargo deb` each build what they use themselves (a target folder shared with
# other checkouts may hold another build in between).
if [ "$build" = 1 ]; then
  GLAD_LOG_FORMAT=plain $CARGO run --release --quiet --bin glad -- bundle pack onnx/pixel64-brick "$stage/bundles/pixel64-brick" >&2
  $CARGO deb --strip >&2
else
  GLAD_LOG_FORMAT=plain "$target_dir/release/glad" bundle pack onnx/pixel64-brick "$stage/bundles/pixel64-brick" >&2
  $CARGO deb --no-build --strip >&2
fi
deb=$(ls -t "$target_dir"/debian/glad-edge_*.deb | head -1)
echo "build-deb: $(du -h "$deb" | cut -f1) $deb" >&2
echo "$deb"
