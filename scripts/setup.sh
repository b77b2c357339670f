#!/usr/bin/env bash
# Everything a build of glad-edge needs on a fresh Debian or Ubuntu machine, then ONNX Runtime
# into .ort/ (scripts/fetch-ort.sh). Idempotent: when all is there it only checks (about a
# second) and changes nothing. Installs system packages as root, or through sudo.
#
#   scripts/setup.sh            system packages (below) + ONNX Runtime 1.31.1 (CPU) in .ort/
#   scripts/setup.sh --check    lists what is missing, installs nothing (exit 1 when something is)
#
# System packages, each with what needs it:
#   libclang-dev   v4l's build script runs bindgen on the V4L2 headers (camera support)
#   gcc, libc6-dev the linker and C runtime Rust links with (and psm's build script)
#   python3-pip    scripts/fetch-ort.sh downloads ONNX Runtime from PyPI with `python3 -m pip download`
#   ca-certificates  HTTPS to PyPI
# Rust itself comes from rustup (https://rustup.rs): `cargo` must be on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

check_only=0
for arg in "$@"; do
  case "$arg" in
    --check) check_only=1 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup: unknown argument $arg (use --check)" >&2; exit 64 ;;
  esac
done

PACKAGES="libclang-dev gcc libc6-dev python3-pip ca-certificates"
missing=()
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
if command -v dpkg-query >/dev/null; then
  for p in $PACKAGES; do
    case "$p" in
      gcc) command -v cc >/dev/null && continue ;;                          # any C compiler as cc
      python3-pip) python3 -m pip --version >/dev/null 2>&1 && continue ;; # pip from elsewhere (pyenv, venv)
      libclang-dev) [ -n "${LIBCLANG_PATH:-}" ] && continue ;;              # bindgen's own override
    esac
    installed "$p" || missing+=("$p")
  done
else
  echo "setup: no dpkg-query: not Debian or Ubuntu; install the equivalents of: $PACKAGES" >&2
fi

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$check_only" = 1 ]; then
    echo "setup: missing system packages: ${missing[*]}"
  else
    if [ "$(id -u)" = 0 ]; then
      SUDO=()
    elif command -v sudo >/dev/null; then
      SUDO=(sudo)
    else
      # Neither root nor sudo: say exactly what an administrator has to run, then stop.
      echo "setup: missing system packages (${missing[*]}), and this user is not root and has no sudo; as root, run:" >&2
      echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
      echo "then run scripts/setup.sh again" >&2
      exit 1
    fi
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

if [ "$check_only" = 1 ]; then
  if [ -f .ort/libonnxruntime.so.1.31.1 ]; then echo "setup: ONNX Runtime in .ort/"; else echo "setup: ONNX Runtime missing (.ort/)"; missing+=(onnxruntime); fi
  command -v cargo >/dev/null || { echo "setup: cargo missing: install Rust with rustup (https://rustup.rs: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh), then open a new shell or run . \"\$HOME/.cargo/env\""; missing+=(cargo); }
  [ "${#missing[@]}" -eq 0 ]
  exit
fi
scripts/fetch-ort.sh
if ! command -v cargo >/dev/null; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    echo "setup: cargo is installed in $HOME/.cargo/bin but not on PATH: run . \"\$HOME/.cargo/env\" (or open a new shell), then this again" >&2
  else
    echo "setup: cargo not found: install Rust with rustup (https://rustup.rs: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh), then run this again" >&2
  fi
  exit 1
fi
