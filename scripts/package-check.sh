#!/usr/bin/env bash
# Install test of the Debian package under a real systemd, as root. A clean Debian 12 root
# (debootstrap --variant=minbase plus systemd, systemd-sysv, dbus, procps) is booted with
# `systemd-nspawn -b --register=no --keep-unit` (its own systemd as PID 1 of the container,
# its own network namespace, so port 9480 is the container's); every command below runs inside
# it through `nsenter` into the namespaces of the container's PID 1 (--register=no --keep-unit:
# on hosts whose PID 1 is not systemd, registering with machined fails, and so would plain -b).
# Steps, each timed (about a minute in all with a cached root; the watchdog step is half of it):
#   install   `apt-get install ./glad-edge.deb` (postinst sees a running systemd)
#   conffile  an operator's edit of /etc/glad/station.yaml survives `dpkg -i` over it
#   1 start   `systemctl start glad` returns active (Type=notify: READY=1) within
#             TimeoutStartSec; results.jsonl under /var/lib/glad/results grows, owned by glad
#   2 reload  a new threshold in station.yaml, `systemctl reload glad`: same MainPID, the
#             journal says "reloaded", new records carry the threshold
#   3 watchdog  `kill -STOP` of the main process: systemd's watchdog (WatchdogSec=) kills it and
#             Restart= brings up a new main process (NRestarts grows), active again
#   4 stop    `systemctl stop glad`: Result=success, exit 0, within TimeoutStopSec
#   5 reboot  `systemctl enable glad`, `systemctl reboot` in the container, nspawn boots the
#             root again: the unit comes up active by itself
#   6 journal `journalctl -u glad -p warning -b` is empty after a healthy start (both boots);
#             info lines reach the journal with their priority, no escape codes
#   7 verify  `systemd-analyze verify /lib/systemd/system/glad.service` inside the container
#   8 purge   `apt-get purge glad-edge` (service enabled and running) leaves the root's files,
#             users and groups exactly as before the install
# The first failure prints one line, `package-check: FAIL [<step>]: <why>` (after the
# service's journal tail), and exits 1. The container is always powered off (killed if it
# does not stop) on exit.
#
#   scripts/package-check.sh [--deb FILE] [--keep]
#
# Needs debootstrap and systemd-container (systemd-nspawn) on the host. Without --deb it builds
# the package (scripts/build-deb.sh). The Debian root is cached as a tarball in
# $GLAD_CHECK_CACHE (default /var/cache/glad-check), so only the first run debootstraps (about 2
# to 4 minutes; $GLAD_CHECK_MIRROR picks the mirror). --keep leaves the work folder (the root,
# the container consoles, the journal) for a look.
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
[ "$(id -u)" = 0 ] || { echo "package-check: run as root (debootstrap, systemd-nspawn, nsenter)" >&2; exit 1; }

now_ms() { date +%s%3N; }
t0=$(now_ms)
secs() { local ms=$(( $(now_ms) - $1 )); printf '%d.%02d' $((ms / 1000)) $(( (ms % 1000) / 10 )); }
log() { echo "== package-check [$(secs "$t0") s] $*"; }
step=setup
t_step=$t0
begin() { step=$1; t_step=$(now_ms); log "$step: $2"; }
pass() { log "$step: ok in $(secs "$t_step") s${1:+: $1}"; }
fail() {
  if [ -n "${cpid:-}" ] && kill -0 "$cpid" 2>/dev/null; then
    echo "--- journalctl -u glad (last 25 lines of this boot)" >&2
    in_ct journalctl -u glad -b --no-pager -n 25 -o short-monotonic >&2 2>/dev/null || true
  fi
  echo "package-check: FAIL [$step]: $*" >&2
  exit 1
}

if [ -z "$deb" ]; then
  begin build "scripts/build-deb.sh"
  deb=$(scripts/build-deb.sh | tail -1)
fi
[ -f "$deb" ] || fail "no package file $deb"
log "package $(basename "$deb"): $(du -h "$deb" | cut -f1)"
for tool in debootstrap systemd-nspawn nsenter; do
  command -v "$tool" >/dev/null || fail "$tool is missing (apt-get install debootstrap systemd-container)"
done

work=$(mktemp -d /tmp/glad-package-check.XXXXXX)
root="$work/root"
machine="glad-check-$$"
nspawn_pid=""
cpid=""
boots=0

# Commands inside the container: all namespaces of its PID 1, a clean environment.
in_ct() {
  nsenter -t "$cpid" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0 \
    DEBIAN_FRONTEND=noninteractive "$@"
}
prop() { in_ct systemctl show -p "$1" --value glad; }

# Waits up to $1 seconds for systemd-nspawn to exit; its exit status in $nspawn_rc.
wait_nspawn() {
  local i
  for ((i = 0; i < $1 * 10; i++)); do
    kill -0 "$nspawn_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$nspawn_pid" 2>/dev/null && return 1
  nspawn_rc=0
  wait "$nspawn_pid" || nspawn_rc=$?
  nspawn_pid=""
  cpid=""
}

# Boots the root: systemd-nspawn in the background, its console in $work/console-N.log; waits
# for the container's systemd to reach running (or degraded, listed).
boot() {
  boots=$((boots + 1))
  console="$work/console-$boots.log"
  systemd-nspawn -q -b --register=no --keep-unit --private-network -M "$machine" -D "$root" \
    --console=read-only </dev/null >"$console" 2>&1 &
  nspawn_pid=$!
  local i p
  for ((i = 0; i < 300; i++)); do
    kill -0 "$nspawn_pid" 2>/dev/null || { tail -20 "$console" >&2; fail "systemd-nspawn exited while booting (console above)"; }
    # The container's PID 1: nspawn's child, PID 1 in its own PID namespace.
    for p in $(pgrep -P "$nspawn_pid" || true); do
      if grep -q -P "^NSpid:\t$p\t1$" "/proc/$p/status" 2>/dev/null; then cpid=$p; break 2; fi
    done
    sleep 0.1
  done
  [ -n "$cpid" ] || fail "no container PID 1 under systemd-nspawn within 30 s"
  local state=""
  for ((i = 0; i < 600; i++)); do
    state=$(in_ct systemctl is-system-running 2>/dev/null || true)
    case "$state" in running | degraded) break ;; esac
    sleep 0.1
  done
  case "$state" in
    running) ;;
    degraded) log "boot $boots: degraded; failed units: $(in_ct systemctl --failed --no-legend --plain | awk '{print $1}' | tr '\n' ' ')" ;;
    *) tail -20 "$console" >&2; fail "the container's systemd is '$state' after 60 s" ;;
  esac
}

# Powers the container off (SIGTERM to nspawn is a clean poweroff with -b); kills it if that
# takes over 30 s.
poweroff() {
  [ -n "$nspawn_pid" ] || return 0
  kill -TERM "$nspawn_pid" 2>/dev/null || true
  if ! wait_nspawn 30; then
    echo "package-check: the container did not power off in 30 s; killing it" >&2
    [ -z "$cpid" ] || kill -KILL "$cpid" 2>/dev/null || true
    kill -KILL "$nspawn_pid" 2>/dev/null || true
    wait "$nspawn_pid" 2>/dev/null || true
    nspawn_pid=""
    cpid=""
  fi
}

cleanup() {
  trap '' INT TERM # a second Ctrl-C must not cut the clean-up short
  poweroff
  # nspawn mounts in its own mount namespace; anything left under the work folder (a killed
  # run) is unmounted before the folder goes.
  local m
  for m in $(findmnt -rn -o TARGET | grep "^$work/" | sort -r || true); do umount -l "$m" 2>/dev/null || true; done
  if [ "$keep" = 1 ]; then echo "package-check: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cache=${GLAD_CHECK_CACHE:-/var/cache/glad-check}
# The name changes with the include list, so an older cache (without systemd-sysv/dbus) is not used.
tarball="$cache/bookworm-minbase-nspawn.tar"
mkdir -p "$root"
if [ -f "$tarball" ]; then
  begin root "Debian root from $tarball"
  tar -C "$root" -xf "$tarball"
else
  begin root "debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,procps bookworm (cached afterwards in $tarball)"
  # systemd-sysv: /sbin/init for the boot; dbus: the system bus of a booted Debian (logind);
  # procps: kill for the unit's ExecReload= and the watchdog step.
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,procps bookworm "$root" \
    "${GLAD_CHECK_MIRROR:-http://deb.debian.org/debian}" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; fail "debootstrap"; }
  chroot "$root" apt-get clean
  mkdir -p "$cache"
  tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
fi
# Timers that would run apt, dpkg backups or fstrim inside the check: masked.
for t in apt-daily apt-daily-upgrade dpkg-db-backup e2scrub_all fstrim; do
  ln -sf /dev/null "$root/etc/systemd/system/$t.timer"
done
pass

begin boot "systemd-nspawn -b --register=no --keep-unit --private-network -D ROOT"
boot
pass "$(in_ct systemctl --version | head -1), container PID 1 is $cpid on the host"

# What the root holds before the install (paths, and the account files' contents), seen from
# the host while the container runs; /run and /tmp are the container's own tmpfs.
snapshot() {
  (cd "$root" && find . -xdev \( -path ./proc -o -path ./sys -o -path ./dev -o -path ./tmp -o -path ./run \
      -o -path ./var/lib/dpkg -o -path ./var/lib/apt -o -path ./var/cache/apt -o -path ./var/log \
      -o -path ./var/cache/debconf -o -path ./var/cache/ldconfig -o -path ./var/tmp/glad-edge.deb \) -prune -o -print |
    grep -v -E '^\./etc/(passwd|group|shadow|gshadow)-$' |
    # Other units' PrivateTmp= folders carry a per-boot id (glad's own would be a leftover).
    grep -v -P '^\./var/tmp/systemd-private-[0-9a-f]{32}-(?!glad\.service-)' | sort)
  cat "$root/etc/passwd" "$root/etc/group" "$root/etc/shadow" "$root/etc/gshadow"
}
snapshot >"$work/before.txt"

begin install "apt-get install ./glad-edge.deb (inside the running container)"
cp "$deb" "$root/var/tmp/glad-edge.deb"
chmod 0644 "$root/var/tmp/glad-edge.deb"
in_ct apt-get install -y -q --no-install-recommends /var/tmp/glad-edge.deb >"$work/install.log" 2>&1 ||
  { tail -20 "$work/install.log" >&2; fail "apt-get install"; }
[ -f "$root/lib/systemd/system/glad.service" ] || fail "no unit at /lib/systemd/system/glad.service"
in_ct id glad >/dev/null || fail "no user glad after the install"
[ "$(in_ct systemctl is-enabled glad 2>/dev/null || true)" = disabled ] || fail "the install enabled the unit (it must not)"
[ "$(in_ct systemctl is-active glad 2>/dev/null || true)" = inactive ] || fail "the install started the unit (it must not)"
pass "user $(in_ct id glad)"

begin conffile "an operator's edit of /etc/glad/station.yaml survives dpkg -i over the package"
grep -q "^/etc/glad/station.yaml$" "$root/var/lib/dpkg/info/glad-edge.conffiles" || fail "/etc/glad/station.yaml is not a conffile"
echo "# edited by the operator" >>"$root/etc/glad/station.yaml"
in_ct dpkg -i /var/tmp/glad-edge.deb >>"$work/install.log" 2>&1 || { tail -20 "$work/install.log" >&2; fail "dpkg -i over the installed package"; }
grep -q "^# edited by the operator$" "$root/etc/glad/station.yaml" || fail "the reinstall replaced the edited /etc/glad/station.yaml"
rm -f "$root/var/tmp/glad-edge.deb"
pass

results="$root/var/lib/glad/results/results.jsonl"
lines() { if [ -f "$results" ]; then wc -l <"$results"; else echo 0; fi; }
# Waits up to $2 s for results.jsonl to have more than $1 lines.
grows() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do [ "$(lines)" -gt "$1" ] && return 0; sleep 0.1; done
  return 1
}
# Seconds from the main process's exec to READY=1 (the unit's own timestamps).
to_ready() {
  local a b
  a=$(prop ExecMainStartTimestampMonotonic)
  b=$(prop ActiveEnterTimestampMonotonic)
  echo $(( (b - a) / 1000 )) | awk '{printf "%.2f", $1 / 1000}'
}
warnings() { in_ct journalctl -u glad -p warning -b --no-pager -o cat; }

begin "1 start" "systemctl start glad (returns after READY=1)"
ts=$(now_ms)
in_ct systemctl start glad || fail "systemctl start glad failed ($(prop Result))"
start_s=$(secs "$ts")
[ "$(in_ct systemctl is-active glad)" = active ] || fail "not active after systemctl start"
[ "$(prop Type)" = notify ] || fail "the unit is Type=$(prop Type), not notify"
status=$(prop StatusText)
echo "$status" | grep -q serving || fail "STATUS= is '$status', not serving"
grows 0 60 || fail "no record in /var/lib/glad/results/results.jsonl within 60 s"
n=$(lines)
grows "$n" 30 || fail "results.jsonl did not grow past $n lines within 30 s"
grep -q '"camera"' "$results" || fail "results.jsonl has no camera field: $(head -c 200 "$results")"
owner=$(in_ct stat -c %U /var/lib/glad/results/results.jsonl)
[ "$owner" = glad ] || fail "results.jsonl is owned by $owner, not glad"
pid1=$(prop MainPID)
ready_s=$(to_ready)
pass "systemctl start ${start_s} s, exec to READY ${ready_s} s, STATUS=$status, results.jsonl $(lines) lines"

begin "6 journal (boot 1)" "journalctl -u glad -p warning -b empty after a healthy start"
w=$(warnings)
[ -z "$w" ] || { echo "$w" >&2; fail "warnings in journalctl -u glad -p warning -b after a healthy start (above)"; }
in_ct journalctl -u glad -b -p info --no-pager -o cat | grep -q "ONNX Runtime loaded" || fail "no info line 'ONNX Runtime loaded' in the journal"
! in_ct journalctl -u glad -b -p warning --no-pager -o cat | grep -q "ONNX Runtime loaded" || fail "info lines show under -p warning (no priorities)"
! in_ct journalctl -u glad -b --no-pager -o cat | grep -q $'\x1b' || fail "escape codes in the journal"
pass "no warnings; info lines carry their priority; no escape codes"

begin "2 reload" "threshold null -> 0.5 in station.yaml, systemctl reload glad"
grep -q '^    threshold: null ' "$root/etc/glad/station.yaml" || fail "no 'threshold: null' line in the packaged station.yaml"
sed -i 's/^    threshold: null /    threshold: 0.5 /' "$root/etc/glad/station.yaml"
before_reloads=$(in_ct journalctl -u glad -b --no-pager -o cat | grep -c -E ' reloaded: ' || true)
ts=$(now_ms)
in_ct systemctl reload glad || fail "systemctl reload glad failed"
reload_cmd_s=$(secs "$ts")
line=""
for ((i = 0; i < 100; i++)); do
  line=$(in_ct journalctl -u glad -b --no-pager -o short-unix | grep -E ' reloaded: ' | sed -n "$((before_reloads + 1))p")
  [ -n "$line" ] && break
  sleep 0.1
done
[ -n "$line" ] || fail "the journal has no 'reloaded' line 10 s after systemctl reload"
# From systemd's "Reloading glad.service" (ExecReload= sends SIGHUP) to glad's "reloaded".
t_send=$(in_ct journalctl -u glad -b --no-pager -o short-unix | grep -E 'systemd\[1\]: Reloading glad' | tail -1 | cut -d' ' -f1)
[ -n "$t_send" ] || fail "no 'Reloading glad.service' line from systemd in the journal"
reload_ms=$(awk -v a="$t_send" -v b="${line%% *}" 'BEGIN {printf "%d", (b - a) * 1000}')
echo "$line" | grep -q "reloaded: 1 change" || fail "the reload did not apply one change: ${line#*]: }"
in_ct journalctl -u glad -b --no-pager -o cat | grep -q " reload: .*threshold" || fail "no 'reload: ...threshold...' line in the journal"
[ "$(prop MainPID)" = "$pid1" ] || fail "MainPID changed from $pid1 to $(prop MainPID): a restart, not a reload"
[ "$(in_ct systemctl is-active glad)" = active ] || fail "not active after the reload"
n=$(lines)
grows $((n + 1)) 30 || fail "fewer than 2 new records within 30 s after the reload"
tail -n 1 "$results" | grep -q '"threshold":0.5' || fail "the newest record does not carry threshold 0.5: $(tail -n 1 "$results" | head -c 300)"
pass "MainPID $pid1 kept; systemd's 'Reloading' to glad's '${line#* reloaded: }' ${reload_ms} ms (systemctl reload ${reload_cmd_s} s); $(in_ct journalctl -u glad -b --no-pager -o cat | grep ' reload: ' | tail -1 | sed 's/^ *INFO //')"

begin "3 watchdog" "kill -STOP the main process; systemd's watchdog must restart the service"
wd_us=$(prop WatchdogUSec)
restart_us=$(prop RestartUSec)
start_us=$(prop TimeoutStartUSec)
# systemctl show prints these in human form (30s, 5s, 2min): normalise through systemd-analyze.
us() { in_ct systemd-analyze timespan "$1" | sed -n 's/^ *μs: *//p'; }
wd_s=$(( $(us "$wd_us") / 1000000 ))
budget=$(( wd_s + $(us "$restart_us") / 1000000 + $(us "$start_us") / 1000000 + 15 ))
restarts0=$(prop NRestarts)
ts=$(now_ms)
t_stop=$(date +%s.%N)
in_ct kill -STOP "$pid1"
pid=""
for ((i = 0; i < budget * 5; i++)); do
  sleep 0.2
  pid=$(prop MainPID)
  if [ "$pid" != "$pid1" ] && [ "$pid" != 0 ] && [ "$(in_ct systemctl is-active glad)" = active ]; then break; fi
  pid=""
done
watchdog_s=$(secs "$ts")
[ -n "$pid" ] || fail "no new active main process ${budget} s after kill -STOP $pid1 (WatchdogSec ${wd_s} s)"
restarts=$(prop NRestarts)
[ "$restarts" -gt "$restarts0" ] || fail "NRestarts did not grow ($restarts0 -> $restarts)"
t_wd=$(in_ct journalctl -u glad -b --no-pager -o short-unix | grep -i "watchdog timeout" | tail -1 | cut -d' ' -f1)
[ -n "$t_wd" ] || fail "the journal does not say 'Watchdog timeout'"
stop_to_timeout=$(awk -v a="$t_stop" -v b="$t_wd" 'BEGIN {printf "%.1f", b - a}')
grows "$(lines)" 30 || fail "no new record within 30 s after the watchdog restart"
pass "MainPID $pid1 -> $pid, NRestarts $restarts0 -> $restarts, active again ${watchdog_s} s after SIGSTOP (watchdog timeout after ${stop_to_timeout} s; WatchdogSec ${wd_s} s + RestartSec $restart_us; READY ${ready_s} s in step 1, $(to_ready) s now)"

begin "4 stop" "systemctl stop glad"
ts=$(now_ms)
in_ct systemctl stop glad || fail "systemctl stop glad failed"
stop_s=$(secs "$ts")
result=$(prop Result)
code=$(prop ExecMainCode)
st=$(prop ExecMainStatus)
[ "$result" = success ] || fail "Result=$result after systemctl stop (ExecMainCode=$code ExecMainStatus=$st), not success"
[ "$st" = 0 ] || fail "the main process exited $st on SIGTERM"
drain=$(in_ct journalctl -u glad -b --no-pager -o cat | grep -E ' stopped drain_s=' | tail -1 | sed 's/^ *INFO //')
[ -n "$drain" ] || fail "no 'stopped' line in the journal"
pass "${stop_s} s (TimeoutStopSec $(prop TimeoutStopUSec)), Result=success, exit 0; glad: $drain"

begin "5 reboot" "systemctl enable glad, systemctl reboot inside, boot the root again"
in_ct systemctl enable glad >/dev/null 2>&1 || fail "systemctl enable glad failed"
[ -L "$root/etc/systemd/system/multi-user.target.wants/glad.service" ] || fail "no enablement link after systemctl enable"
ts=$(now_ms)
in_ct systemctl reboot >/dev/null 2>&1 || true
wait_nspawn 60 || fail "the container did not go down within 60 s of systemctl reboot"
down_s=$(secs "$ts")
[ "$nspawn_rc" = 133 ] || log "note: systemd-nspawn exited $nspawn_rc on reboot (133 expected)"
boot
state=""
for ((i = 0; i < 1200; i++)); do
  state=$(in_ct systemctl is-active glad 2>/dev/null || true)
  case "$state" in active | failed) break ;; esac
  sleep 0.1
done
[ "$state" = active ] || fail "glad is '$state' after the reboot, not active"
reboot_s=$(secs "$ts")
grows "$(lines)" 30 || fail "no new record within 30 s after the reboot"
pass "down in ${down_s} s, glad active ${reboot_s} s after systemctl reboot (exec to READY $(to_ready) s)"

begin "6 journal (boot 2)" "journalctl -u glad -p warning -b empty after the boot's start"
w=$(warnings)
[ -z "$w" ] || { echo "$w" >&2; fail "warnings in journalctl -u glad -p warning -b after the reboot (above)"; }
pass

begin "7 verify" "systemd-analyze verify /lib/systemd/system/glad.service (inside the container)"
out=$(in_ct systemd-analyze verify /lib/systemd/system/glad.service 2>&1) || { echo "$out" >&2; fail "systemd-analyze verify failed (above)"; }
! echo "$out" | grep -q "glad.service" || { echo "$out" >&2; fail "systemd-analyze verify reports the unit (above)"; }
pass "${out:-no output}"

begin "8 purge" "apt-get purge glad-edge (enabled and running)"
pid=$(prop MainPID)
in_ct apt-get purge -y -q glad-edge >"$work/purge.log" 2>&1 || { tail -20 "$work/purge.log" >&2; fail "apt-get purge"; }
! in_ct kill -0 "$pid" 2>/dev/null || fail "the service's main process $pid still runs after the purge"
! in_ct id glad >/dev/null 2>&1 || fail "user glad still there after the purge"
in_ct systemctl daemon-reload
snapshot >"$work/after.txt"
if ! diff -u "$work/before.txt" "$work/after.txt" >"$work/purge.diff"; then
  cat "$work/purge.diff" >&2
  fail "the purge left the root different from before the install (diff above)"
fi
pass "files, users and groups as before the install"

begin poweroff "the container powers off"
poweroff
pass
log "all checks passed: start ${start_s} s (READY ${ready_s} s), reload ${reload_ms} ms, watchdog restart ${watchdog_s} s, stop ${stop_s} s, reboot to active ${reboot_s} s"
