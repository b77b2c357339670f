#!/usr/bin/env bash
# The Debian package under a real systemd: boots a debootstrapped Debian 12 (minbase + systemd,
# Debian's kernel) with qemu-system-x86_64 (KVM when /dev/kvm works, else TCG), installs the
# package there and checks, on the serial console:
#   systemctl start glad      active, READY=1 reached (Type=notify), the STATUS= line
#   systemctl reload glad     SIGHUP: a new threshold taken (logged), READY again
#   kill -STOP <main pid>     the watchdog kills it; Restart= starts a new one
#   systemctl stop glad       within TimeoutStopSec, exit status 0
#   journalctl -p warning     priorities reach the journal
# The transcript (the VM's console) goes to stdout and to --transcript FILE.
#
#   sudo scripts/vm-check.sh [--deb FILE] [--transcript FILE] [--keep]
#
# Needs root, debootstrap, qemu-system-x86, e2fsprogs (mkfs.ext4 -d). Without --deb it builds
# the package (scripts/build-deb.sh). The root with the kernel is cached in $GLAD_CHECK_CACHE.
#
# Under software emulation (TCG) the guest runs ONNX Runtime tens of times slower than the
# hardware the unit's timings are meant for, so the guest gets a drop-in that scales them
# (GLAD_VM_WATCHDOG, default 300 s; start and stop timeouts 900 s and 120 s), and the station's
# heartbeat and frame-age limits are raised in /etc/glad/station.yaml; everything else is the
# installed package as shipped. The check prints the unit's effective settings.
set -euo pipefail
cd "$(dirname "$0")/.."
deb=""
transcript=""
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --deb) deb="$2"; shift 2 ;;
    --transcript) transcript="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "vm-check: unknown argument $1" >&2; exit 64 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "vm-check: run as root" >&2; exit 1; }
for tool in debootstrap qemu-system-x86_64 mkfs.ext4; do
  command -v "$tool" >/dev/null || { echo "vm-check: $tool missing (apt-get install debootstrap qemu-system-x86 e2fsprogs)" >&2; exit 1; }
done
if [ -z "$deb" ]; then deb=$(scripts/build-deb.sh | tail -1); fi
work=$(mktemp -d /tmp/glad-vm-check.XXXXXX)
trap '[ "$keep" = 1 ] && echo "vm-check: kept $work" >&2 || rm -rf "$work"' EXIT
cache=${GLAD_CHECK_CACHE:-/var/cache/glad-check}
tarball="$cache/bookworm-vm.tar"
root="$work/root"
mkdir -p "$root" "$cache"
if [ -f "$tarball" ]; then
  tar -C "$root" -xf "$tarball"
else
  echo "vm-check: debootstrap with systemd and Debian's kernel (cached in $tarball)" >&2
  debootstrap --variant=minbase --include=systemd,procps,udev,linux-image-amd64,initramfs-tools \
    bookworm "$root" "${GLAD_CHECK_MIRROR:-http://deb.debian.org/debian}" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  chroot "$root" apt-get clean
  tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
fi
kernel=$(ls "$root"/boot/vmlinuz-* | head -1)
initrd=$(ls "$root"/boot/initrd.img-* | head -1)
cp "$kernel" "$work/vmlinuz"
cp "$initrd" "$work/initrd.img"

# The guest: root without a password on the console, fstab, hostname, the package, and a unit
# that runs the check once at boot and powers off.
echo "glad-vm" >"$root/etc/hostname"
echo "/dev/vda / ext4 rw,relatime 0 1" >"$root/etc/fstab"
cp "$deb" "$root/root/glad-edge.deb"
cat >"$root/root/check.sh" <<'GUEST'
#!/bin/bash
# Runs inside the VM at boot.
set -u
say() { echo "### $*"; }
fails=0
check() { if eval "$1"; then say "PASS: $2"; else say "FAIL: $2"; fails=$((fails + 1)); fi; }
say "guest: $(uname -r), $(systemctl --version | head -1)"
# the service's journal on the console as it happens (prefixed, so the transcript reads)
journalctl -f -n 0 -o short-monotonic -u glad | sed -u 's/^/[journal] /' &
say "dpkg -i glad-edge.deb"
dpkg -i /root/glad-edge.deb 2>&1 | tail -5
say "unit settings under emulation (drop-in $(ls /etc/systemd/system/glad.service.d/))"
# the station's own clocks, scaled the same way: a frame takes minutes here
sed -i 's/^  heartbeat_max_age_s: 10$/  heartbeat_max_age_s: 1200/; s/^    max_age_ms: 3000$/    max_age_ms: 1200000/' /etc/glad/station.yaml
grep -n -E "heartbeat_max_age_s|max_age_ms" /etc/glad/station.yaml
systemctl daemon-reload
systemctl show -p WatchdogUSec -p TimeoutStartUSec -p TimeoutStopUSec -p Restart -p Type -p User -p WorkingDirectory glad
say "systemctl start glad (Type=notify: returns after READY=1)"
t0=$(date +%s)
systemctl start glad
echo "start took $(( $(date +%s) - t0 )) s"
systemctl --no-pager status glad | head -12
check '[ "$(systemctl is-active glad)" = active ]' "glad active after start (READY=1)"
check 'systemctl show -p StatusText --value glad | grep -q serving' "STATUS= says serving"
for i in $(seq 900); do [ -s /var/lib/glad/results/results.jsonl ] && break; sleep 1; done
echo "first record after ${i} s"
check 'test -s /var/lib/glad/results/results.jsonl' "records in /var/lib/glad/results/results.jsonl"
head -c 600 /var/lib/glad/results/results.jsonl; echo
pid1=$(systemctl show -p MainPID --value glad)

say "systemctl reload glad with a new threshold (0.5)"
sed -i 's/^    threshold: null /    threshold: 0.5 /' /etc/glad/station.yaml
grep -n "threshold:" /etc/glad/station.yaml
n0=$(wc -l < /var/lib/glad/results/results.jsonl)
systemctl reload glad
for i in $(seq 900); do [ "$(wc -l < /var/lib/glad/results/results.jsonl)" -ge $((n0 + 2)) ] && break; sleep 1; done
journalctl -u glad --no-pager -n 8 -o cat
check '[ "$(systemctl is-active glad)" = active ]' "active after reload"
check '[ "$(systemctl show -p MainPID --value glad)" = "$pid1" ]' "same process after reload (no restart)"
check 'tail -n 2 /var/lib/glad/results/results.jsonl | grep -q "\"threshold\":0.5"' "records carry the new threshold 0.5"

wd=$(( $(systemctl show -p WatchdogUSec --value glad | sed 's/min/*60+/; s/s$//; s/+$//') ))
say "kill -STOP $pid1: the watchdog (${wd} s) must restart the service"
kill -STOP "$pid1"
restarted=0
for i in $(seq $((wd * 2 + 300))); do
  sleep 1
  pid=$(systemctl show -p MainPID --value glad)
  if [ "$pid" != "$pid1" ] && [ "$pid" != 0 ] && [ "$(systemctl is-active glad)" = active ]; then restarted=1; break; fi
done
echo "after ${i} s: MainPID $pid, NRestarts $(systemctl show -p NRestarts --value glad)"
journalctl -u glad --no-pager -n 12 -o short-monotonic | grep -i -E "watchdog|start|READY|kill|abort" | head -8
check '[ "$restarted" = 1 ]' "watchdog restart: a new main process, active again"

say "journal priorities: journalctl -u glad -p warning (watchdog messages are from systemd)"
journalctl -u glad -p warning --no-pager -o cat | tail -5
check 'journalctl -u glad -p info --no-pager -o cat | grep -q "ONNX Runtime loaded"' "info lines in the journal"
check '! journalctl -u glad -p warning --no-pager -o cat | grep -q "ONNX Runtime loaded"' "info lines filtered out by -p warning"
check '! journalctl -u glad --no-pager -o cat | grep -q $'"'"'\x1b'"'"'' "no escape codes in the journal"

say "systemctl stop glad"
t0=$(date +%s)
systemctl stop glad
t1=$(date +%s)
echo "stop took $((t1 - t0)) s; Result=$(systemctl show -p Result --value glad) ExecMainStatus=$(systemctl show -p ExecMainStatus --value glad)"
check '[ $((t1 - t0)) -lt 120 ]' "stopped within TimeoutStopSec"
check '[ "$(systemctl show -p Result --value glad)" = success ]' "stop result success (exit 0 on SIGTERM)"
say "VM-CHECK DONE: $fails failure(s)"
GUEST
chmod 755 "$root/root/check.sh"
mkdir -p "$root/etc/systemd/system/glad.service.d"
cat >"$root/etc/systemd/system/glad.service.d/emulation.conf" <<DROPIN
# vm-check only: timings scaled for software emulation
[Service]
WatchdogSec=${GLAD_VM_WATCHDOG:-300}
TimeoutStartSec=900
TimeoutStopSec=120
DROPIN
cat >"$root/etc/systemd/system/vm-check.service" <<'UNIT'
[Unit]
Description=glad-edge package check
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/bin/sh -c '/root/check.sh > /dev/ttyS0 2>&1; systemctl poweroff'
[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/vm-check.service "$root/etc/systemd/system/multi-user.target.wants/vm-check.service"
chroot "$root" passwd -d root >/dev/null
# No login prompt on the serial console: agetty's vhangup() would cut the check's output off.
ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"

img="$work/disk.img"
mkfs.ext4 -q -F -d "$root" "$img" 3G
accel=(-machine accel=tcg -cpu max)
if [ "${GLAD_VM_ACCEL:-auto}" != tcg ] && [ -w /dev/kvm ] && python3 -c 'import os,fcntl; os.close(os.open("/dev/kvm", os.O_RDWR))' 2>/dev/null; then accel=(-enable-kvm); fi
echo "vm-check: booting (${accel[*]})" >&2
out="$work/console.txt"
timeout "${GLAD_VM_TIMEOUT:-3600}" qemu-system-x86_64 "${accel[@]}" -m 2048 -smp 1 -nographic -no-reboot \
  -kernel "$work/vmlinuz" -initrd "$work/initrd.img" -append "root=/dev/vda rw console=ttyS0 ${GLAD_VM_QUIET-quiet} init=/lib/systemd/systemd" \
  -drive "file=$img,if=virtio,format=raw" -nic none </dev/null 2>&1 | tee "$out" || true
[ -z "$transcript" ] || cp "$out" "$transcript"
grep -q "VM-CHECK DONE: 0 failure(s)" "$out" || { echo "vm-check: FAILED (see the transcript)" >&2; exit 1; }
echo "vm-check: all checks passed" >&2
