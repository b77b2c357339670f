#!/usr/bin/env bash
# Installs glad-edge as a systemd service: the binary, the station config under /etc/glad/
# (an existing one is kept), the unit, the `glad` system user (in group video), then
# `systemctl daemon-reload` and `enable` (and `--now` with --start).
#
#   sudo scripts/install-service.sh [--binary target/release/glad] [--config config/station.example.yaml]
#                                   [--bundle DIR] [--token-file FILE] [--start] [--dry-run] [--root DIR]
#
# --dry-run prints every step and changes nothing. --root DIR installs below DIR (packaging,
# tests): no user is created and systemctl is not called.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
binary="$here/target/release/glad"
config="$here/config/station.example.yaml"
unit="$here/config/systemd/glad.service"
bundle=""
token_file=""
dry_run=0
start=0
root=""

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --unit) unit="$2"; shift 2 ;;
    --bundle) bundle="$2"; shift 2 ;;
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

need "$binary" "binary (build it with: cargo build --release)"
need "$config" "config"
need "$unit" "unit"
[ -z "$bundle" ] || need "$bundle/bundle.yaml" "bundle manifest"
[ -z "$token_file" ] || need "$token_file" "token file"
if [ -z "$root" ] && [ "$dry_run" = 0 ] && [ "$(id -u)" != 0 ]; then
  echo "install-service.sh: run as root (or try --dry-run)" >&2
  exit 1
fi

bin_dst="$root/usr/local/bin/glad"
etc="$root/etc/glad"
unit_dst="$root/etc/systemd/system/glad.service"

run install -D -m 0755 "$binary" "$bin_dst"
run install -d -m 0755 "$etc"
if [ -e "$etc/station.yaml" ]; then
  echo "keeping the existing $etc/station.yaml (the new example is $etc/station.yaml.new)"
  run install -m 0644 "$config" "$etc/station.yaml.new"
else
  run install -m 0644 "$config" "$etc/station.yaml"
fi
if [ -n "$bundle" ]; then
  run install -d -m 0755 "$root/opt/glad/bundles"
  run cp -r "$bundle" "$root/opt/glad/bundles/$(basename "$bundle")"
fi
if [ -n "$token_file" ]; then
  # Readable by the service's group only; point `http.token_file` at it.
  run install -m 0640 "$token_file" "$etc/trigger.token"
  [ -n "$root" ] || run chgrp glad "$etc/trigger.token"
fi
run install -D -m 0644 "$unit" "$unit_dst"

if [ -n "$root" ]; then
  echo "installed below $root: no user created, systemctl not called"
  exit 0
fi
getent group video >/dev/null 2>&1 || run groupadd --system video
if ! id glad >/dev/null 2>&1; then
  run useradd --system --home-dir /var/lib/glad --no-create-home --shell /usr/sbin/nologin --groups video glad
else
  echo "user glad exists"
  [ "$dry_run" = 1 ] && printf 'would run: %s\n' "useradd --system ... glad (skipped: the user exists)"
fi
run systemctl daemon-reload
if [ "$start" = 1 ]; then
  run systemctl enable --now glad.service
else
  run systemctl enable glad.service
  echo "start it with: systemctl start glad; watch it with: journalctl -u glad -f"
fi
