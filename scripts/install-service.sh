#!/usr/bin/env bash
# Installs glad-edge as a systemd service from a build tree, for machines where the Debian
# package (scripts/build-deb.sh) is not an option. The same layout under /usr/local:
#   /usr/local/bin/glad                        the binary (--binary)
#   /usr/local/lib/glad-edge/                  ONNX Runtime (--ort; glad finds it there by itself)
#   /usr/local/share/glad-edge/bundles/NAME    closed bundles (`glad bundle pack` of --bundle)
#   /usr/local/share/glad-edge/samples/brick   sample images of the default station
#   /etc/glad/station.yaml                     the config (an existing one is kept)
#   /etc/systemd/system/glad.service           the unit, ExecStart=/usr/local/bin/glad
# and the `glad` system user (in group video), then `systemctl daemon-reload` and `enable`
# (`--now` with --start).
#
#   sudo scripts/install-service.sh [--binary target/release/glad] [--config FILE] [--bundle DIR]
#                                   [--ort FILE] [--token-file FILE] [--start] [--dry-run] [--root DIR]
#
# Without --config it installs the package's station (config/package/station.yaml: a replayed
# camera over the sample images, the closed pixel64-brick bundle) with its paths moved to
# /usr/local. A config of your own should use absolute paths (the unit runs in /var/lib/glad).
# --dry-run prints every step and changes nothing. --root DIR installs below DIR (packaging,
# tests): no user is created and systemctl is not called.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
binary="$here/target/release/glad"
config=""
unit="$here/config/systemd/glad.service"
ort="$here/.ort/libonnxruntime.so.1.31.1"
bundle=""
token_file=""
dry_run=0
start=0
root=""

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --unit) unit="$2"; shift 2 ;;
    --bundle) bundle="$2"; shift 2 ;;
    --ort) ort="$2"; shift 2 ;;
    --token-file) token_file="$2"; shift 2 ;;
    --root) root="${2%/}"; shift 2 ;;
    --start) start=1; shift ;;
    --dry-run|-n) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install-service.sh: unknown argument \`$1\` (see --help)" >&2; exit 2 ;;
  esac
done

run() {
  if [ "$dry_run" = 1 ]; then
    printf 'would run: %s\n' "$*"
  else
    printf '+ %s\n' "$*"
    "$@"
  fi
}

need() {
  [ -e "$1" ] || { echo "install-service.sh: $2 not found: $1" >&2; exit 1; }
}

default_station=0
if [ -z "$config" ]; then
  config="$here/config/package/station.yaml"
  default_station=1
  [ -n "$bundle" ] || bundle="$here/onnx/pixel64-brick"
fi
need "$binary" "binary (build it with: cargo build --release)"
need "$config" "config"
need "$unit" "unit"
need "$ort" "ONNX Runtime library (scripts/setup.sh fetches it into .ort/)"
[ -z "$bundle" ] || need "$bundle/bundle.yaml" "bundle manifest"
[ -z "$token_file" ] || need "$token_file" "token file"
if [ -z "$root" ] && [ "$dry_run" = 0 ] && [ "$(id -u)" != 0 ]; then
  echo "install-service.sh: run as root (or try --dry-run)" >&2
  exit 1
fi
if [ "$default_station" = 0 ]; then
  relative=$(grep -nE '^\s*-?\s*(path|bundle|dir|calibration|token_file|library|cache_dir):\s*[^/ #n"'\''{[]' "$config" || true)
  [ -z "$relative" ] || printf 'install-service.sh: warning: %s has relative paths; the service runs in /var/lib/glad, use absolute ones:\n%s\n' "$config" "$relative" >&2
fi

bin_dst="$root/usr/local/bin/glad"
lib_dst="$root/usr/local/lib/glad-edge"
share="$root/usr/local/share/glad-edge"
etc="$root/etc/glad"
unit_dst="$root/etc/systemd/system/glad.service"

# The user first: the token file and the folders below are given to its group.
if [ -z "$root" ]; then
  getent group video >/dev/null 2>&1 || run groupadd --system video
  if ! getent group glad >/dev/null 2>&1; then run groupadd --system glad; fi
  if ! id glad >/dev/null 2>&1; then
    run useradd --system --gid glad --home-dir /var/lib/glad --no-create-home --shell /usr/sbin/nologin --groups video glad
  else
    echo "user glad exists"
    [ "$dry_run" = 1 ] && printf 'would run: %s\n' "useradd --system ... glad (skipped: the user exists)"
  fi
fi

run install -D -m 0755 "$binary" "$bin_dst"
run install -D -m 0644 "$ort" "$lib_dst/$(basename "$ort")"
shared_lib="$(dirname "$ort")/libonnxruntime_providers_shared.so"
[ ! -f "$shared_lib" ] || run install -m 0644 "$shared_lib" "$lib_dst/"
if [ -n "$bundle" ]; then
  name=$(basename "$(cd "$bundle" && pwd)")
  if [ -e "$share/bundles/$name" ]; then
    echo "keeping the existing $share/bundles/$name (remove it to install the bundle again)"
  else
    run install -d -m 0755 "$share/bundles"
    # A closed copy: models shared with sibling bundles (../effnet-lite0) come along.
    run "$binary" bundle pack "$bundle" "$share/bundles/$name"
  fi
fi
run install -d -m 0755 "$etc"
installed_config="$config"
if [ "$default_station" = 1 ]; then
  run install -d -m 0755 "$share/samples"
  run cp -r "$here/data/textures/brick/test" "$share/samples/brick"
  installed_config=$(mktemp)
  trap 'rm -f "$installed_config"' EXIT
  sed 's|/usr/share/glad-edge/|/usr/local/share/glad-edge/|g; s|the packaged library in /usr/lib/glad-edge/|the library in /usr/local/lib/glad-edge/|' "$config" >"$installed_config"
fi
if [ -e "$etc/station.yaml" ]; then
  echo "keeping the existing $etc/station.yaml (the new example is $etc/station.yaml.new)"
  run install -m 0644 "$installed_config" "$etc/station.yaml.new"
else
  run install -m 0644 "$installed_config" "$etc/station.yaml"
fi
if [ -n "$token_file" ]; then
  # Readable by the service's group only; point `http.token_file` at it.
  if [ -n "$root" ]; then
    run install -m 0640 "$token_file" "$etc/trigger.token"
  else
    run install -m 0640 -g glad "$token_file" "$etc/trigger.token"
  fi
fi
if [ "$dry_run" = 1 ]; then
  printf 'would run: %s\n' "install -D -m 0644 $unit $unit_dst (ExecStart=/usr/local/bin/glad)"
else
  printf '+ %s\n' "install -D -m 0644 $unit $unit_dst (ExecStart=/usr/local/bin/glad)"
  install -d -m 0755 "$(dirname "$unit_dst")"
  sed 's|^ExecStart=/usr/bin/glad |ExecStart=/usr/local/bin/glad |' "$unit" >"$unit_dst"
  chmod 0644 "$unit_dst"
fi

if [ -n "$root" ]; then
  echo "installed below $root: no user created, systemctl not called"
  exit 0
fi
run systemctl daemon-reload
if [ "$start" = 1 ]; then
  run systemctl enable --now glad.service
else
  run systemctl enable glad.service
  echo "start it with: systemctl start glad; watch it with: journalctl -u glad -f"
fi
