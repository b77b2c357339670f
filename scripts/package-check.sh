#!/usr/bin/env bash
# Install test of the Debian package, as root: a clean Debian root (debootstrap, minbase with
# systemd installed but not running),
# `dpkg -i` of the package there, then the installed service started the way systemd starts it
# (the installed unit's ExecStart, as its User=/Group= with SupplementaryGroups=, in its
# WorkingDirectory=, with its Environment=, a fake NOTIFY_SOCKET and stderr as a fake journal
# stream): an edited conffile kept over a reinstall, READY=1, a record in /var/lib/glad/results, journal priorities on the log lines,
# SIGTERM exits 0 after STOPPING=1; `systemd-analyze verify` on the installed unit; then
# `dpkg --purge` must leave the root as it was before the install.
#
#   scripts/package-check.sh [--deb FILE] [--keep]
#
# Without --deb it builds the package (scripts/build-deb.sh). The Debian root is cached as a
# tarball in $GLAD_CHECK_CACHE (default /var/cache/glad-check) so a second run skips debootstrap
# (about 2 minutes). --keep leaves the work folder for a look.
set -euo pipefail
cd "$(dirname "$0")/.."
deb=""
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --deb) deb="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "package-check: unknown argument $1" >&2; exit 64 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "package-check: run as root (debootstrap, chroot, mounts)" >&2; exit 1; }
t0=$(date +%s)
step() { echo "== package-check [$(( $(date +%s) - t0 )) s] $*"; }
fail() { echo "package-check: FAIL: $*" >&2; exit 1; }

if [ -z "$deb" ]; then
  step "building the package"
  deb=$(scripts/build-deb.sh | tail -1)
fi
[ -f "$deb" ] || fail "no package file $deb"
step "package $(basename "$deb"): $(du -h "$deb" | cut -f1)"

for tool in debootstrap chroot python3; do
  command -v "$tool" >/dev/null || fail "$tool is missing (apt-get install debootstrap)"
done
work=$(mktemp -d /tmp/glad-package-check.XXXXXX)
root="$work/root"
mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
  [ -z "${listener:-}" ] || kill "$listener" 2>/dev/null || true
  [ -z "${svc:-}" ] || kill -KILL "$svc" 2>/dev/null || true
  if [ "$keep" = 1 ]; then echo "package-check: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

cache=${GLAD_CHECK_CACHE:-/var/cache/glad-check}
tarball="$cache/bookworm-minbase-systemd.tar"
mkdir -p "$root"
if [ -f "$tarball" ]; then
  step "Debian root from $tarball"
  tar -C "$root" -xf "$tarball"
else
  # systemd for `systemd-analyze verify --root` (not running: this is a chroot); procps for kill.
  step "debootstrap --variant=minbase --include=systemd,procps bookworm (cached afterwards in $tarball)"
  debootstrap --variant=minbase --include=systemd,procps bookworm "$root" "${GLAD_CHECK_MIRROR:-http://deb.debian.org/debian}" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; fail "debootstrap"; }
  chroot "$root" apt-get clean
  mkdir -p "$cache"
  tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
fi

# What the root holds before the install (paths, and the account files' contents).
snapshot() {
  (cd "$root" && find . -xdev \( -path ./proc -o -path ./sys -o -path ./dev -o -path ./tmp -o -path ./run \
      -o -path ./var/lib/dpkg -o -path ./var/log -o -path ./var/cache/debconf -o -path ./var/cache/ldconfig \) -prune -o -print |
    grep -v -E '^\./etc/(passwd|group|shadow|gshadow)-$' | sort)
  cat "$root/etc/passwd" "$root/etc/group" "$root/etc/shadow" "$root/etc/gshadow"
}
snapshot >"$work/before.txt"

for m in proc sys dev; do
  case "$m" in
    proc) mount -t proc proc "$root/proc" ;;
    *) mount --bind "/$m" "$root/$m" ;;
  esac
  mounted+=("$root/$m")
done

step "dpkg -i"
cp "$deb" "$root/tmp/glad-edge.deb"
chroot "$root" dpkg -i /tmp/glad-edge.deb >"$work/dpkg-install.log" 2>&1 || { cat "$work/dpkg-install.log" >&2; fail "dpkg -i"; }
unit="$root/lib/systemd/system/glad.service"
[ -f "$unit" ] || fail "no unit installed at /lib/systemd/system/glad.service"
chroot "$root" id glad >/dev/null || fail "no user glad after the install"
grep -q "^/etc/glad/station.yaml$" "$root/var/lib/dpkg/info/glad-edge.conffiles" || fail "/etc/glad/station.yaml is not a conffile"
step "an operator's edit of /etc/glad/station.yaml survives a reinstall (upgrade path)"
echo "# edited by the operator" >>"$root/etc/glad/station.yaml"
cp "$deb" "$root/tmp/glad-edge.deb"
chroot "$root" dpkg -i /tmp/glad-edge.deb >>"$work/dpkg-install.log" 2>&1 || { cat "$work/dpkg-install.log" >&2; fail "dpkg -i over the installed package"; }
grep -q "^# edited by the operator$" "$root/etc/glad/station.yaml" || fail "the upgrade replaced the edited /etc/glad/station.yaml"

step "systemd-analyze verify (the root's systemd, on the installed unit)"
out=$(chroot "$root" systemd-analyze verify --man=no /lib/systemd/system/glad.service 2>&1) || { echo "$out" >&2; fail "systemd-analyze verify"; }
! echo "$out" | grep -q "glad.service:" || { echo "$out" >&2; fail "systemd-analyze verify reports the unit"; }

# The unit's settings, as systemd would read them (one line each; no continuation lines).
key() { sed -n "s/^$1=//p" "$unit" | tail -1; }
exec_start=$(key ExecStart)
user=$(key User)
group=$(key Group)
groups=$(key SupplementaryGroups)
workdir=$(key WorkingDirectory)
state_dir=$(key StateDirectory)
[ -n "$exec_start" ] && [ -n "$user" ] && [ -n "$workdir" ] || fail "the unit lacks ExecStart=, User= or WorkingDirectory="
envs=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8)
while IFS= read -r e; do envs+=("$e"); done < <(sed -n 's/^Environment=//p' "$unit")
# StateDirectory=: systemd creates it owned by the service user.
[ -z "$state_dir" ] || chroot "$root" install -d -o "$user" -g "${group:-$user}" "/var/lib/$state_dir"

step "starting: $exec_start (User=$user Group=$group SupplementaryGroups=$groups WorkingDirectory=$workdir)"
mkdir -p "$root/run/glad-check"
chmod 0755 "$root/run/glad-check"
notify_log="$work/notify.log"
python3 - "$root/run/glad-check/notify" "$notify_log" <<'PY' &
import os, socket, sys
path, log = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
os.chmod(path, 0o777)
with open(log, "a", buffering=1) as f:
    while True:
        msg = s.recv(65536).decode(errors="replace")
        f.write(msg.replace("\n", " | ") + "\n")
PY
listener=$!
for _ in $(seq 50); do [ -S "$root/run/glad-check/notify" ] && break; sleep 0.1; done
[ -S "$root/run/glad-check/notify" ] || fail "the fake notify socket did not appear"
log="$work/service.log"
: >"$log"
journal_stream=$(stat -c '%d:%i' "$log")
setpriv_groups=$([ -n "$groups" ] && echo "--groups=$(echo "$groups" | tr ' ' ',')" || echo "--clear-groups")
# setpriv runs inside the root, so the names resolve in its /etc/passwd and /etc/group.
chroot "$root" /usr/bin/env -i "${envs[@]}" NOTIFY_SOCKET=/run/glad-check/notify JOURNAL_STREAM="$journal_stream" \
  setpriv --reuid="$user" --regid="${group:-$user}" $setpriv_groups --inh-caps=-all \
  /bin/sh -c "cd '$workdir' && exec $exec_start" >>"$log" 2>&1 &
svc=$!

ready=0
for _ in $(seq 240); do
  if grep -q "READY=1" "$notify_log" 2>/dev/null; then ready=1; break; fi
  kill -0 "$svc" 2>/dev/null || break
  sleep 0.5
done
[ "$ready" = 1 ] || { cat "$log" "$notify_log" >&2 || true; fail "no READY=1 within 120 s"; }
step "READY=1 ($(grep -m1 READY=1 "$notify_log" | tr '|' '\n' | sed -n 's/^ *STATUS=//p' | head -1))"
results="$root/var/lib/glad/results/results.jsonl"
record=0
for _ in $(seq 120); do
  if [ -s "$results" ] && grep -q '"camera"' "$results"; then record=1; break; fi
  sleep 0.5
done
[ "$record" = 1 ] || { cat "$log" >&2; fail "no record in /var/lib/glad/results/results.jsonl within 60 s"; }
step "a record: $(head -c 200 "$results")..."
owner=$(chroot "$root" stat -c %U /var/lib/glad/results/results.jsonl)
[ "$owner" = "$user" ] || fail "results.jsonl is owned by $owner, not $user"
kill -TERM "$svc"
rc=0
wait "$svc" || rc=$?
svc=""
[ "$rc" = 0 ] || { cat "$log" >&2; fail "the service exited $rc after SIGTERM"; }
grep -q "STOPPING=1" "$notify_log" || fail "no STOPPING=1 before the exit"
step "SIGTERM: exit 0 after STOPPING=1"
grep -q "^<6>" "$log" || { cat "$log" >&2; fail "no journal priority prefixes (<6>) in the service's log"; }
if grep -q $'\x1b' "$log"; then fail "escape codes in the service's log"; fi
kill "$listener" 2>/dev/null || true
wait "$listener" 2>/dev/null || true
listener=""
rm -rf "$root/run/glad-check"

rm -f "$root/tmp/glad-edge.deb"
step "dpkg --purge"
chroot "$root" dpkg --purge glad-edge >"$work/dpkg-purge.log" 2>&1 || { cat "$work/dpkg-purge.log" >&2; fail "dpkg --purge"; }
for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}"; done
mounted=()
snapshot >"$work/after.txt"
if ! diff -u "$work/before.txt" "$work/after.txt" >"$work/purge.diff"; then
  cat "$work/purge.diff" >&2
  fail "the purge left the root different from before the install"
fi
step "purge left nothing behind; all checks passed"
