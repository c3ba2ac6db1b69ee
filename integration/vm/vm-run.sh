#!/usr/bin/env bash
# integration/vm/vm-run.sh - run one command as root in a throw-away qemu VM whose only
# cgroup hierarchy is cgroup v2 (cgroup_no_v1=all), for rsrun's cgroup v2 tests.
#
#   integration/vm/vm-run.sh 'COMMAND'      run with /bin/sh -c inside the VM
#
# Inside the VM:
#   /               overlay of the host's / (virtio-9p, read-only) and a tmpfs upper layer
#   $PWD            the host's current directory, read-write, at the same path
#   /tmp, /run      fresh tmpfs (rootfs and state folders of containers live there)
#   /sys/fs/cgroup  cgroup2, every available controller enabled in the root's subtree_control
#   the command runs as root in the root cgroup; stdin is /dev/null; modprobe loop works
# Output streams back to this script's stdout/stderr; the exit status is the command's
# (124: timeout, 125: the VM failed without reporting a status).
#
# RSRUN_VM_INIT=systemd boots the host's systemd as PID 1 instead (the hierarchy mounted by
# systemd, the D-Bus system bus started, nothing else of the host's units): the command runs
# as the oneshot service rsrun-vm.service, in its cgroup /system.slice/rsrun-vm.service.
# The guest kernel runs without AppArmor (apparmor=0), like this host's: critest's AppArmor
# specs then skip in the VM as they do here, instead of failing for want of sudo.
# Environment: RSRUN_VM_CACHE (default /var/tmp/rsrun-vm: Debian kernel + initramfs, built
# on first use with apt-get download; nothing is installed into /boot), RSRUN_VM_MEM (2G),
# RSRUN_VM_SMP (2), RSRUN_VM_TIMEOUT (900 s), RSRUN_VM_ACCEL (auto|kvm|tcg),
# RSRUN_VM_DEBUG=1 (print the guest console afterwards).
# Host packages it needs (installed when missing, as root): qemu-system-x86 cpio kmod
# xz-utils binutils busybox-static.
set -euo pipefail

CACHE=${RSRUN_VM_CACHE:-/var/tmp/rsrun-vm}
MEM=${RSRUN_VM_MEM:-2G}
SMP=${RSRUN_VM_SMP:-2}
TIMEOUT=${RSRUN_VM_TIMEOUT:-900}
ACCEL=${RSRUN_VM_ACCEL:-auto}
EARLY_MODULES="virtio_pci 9pnet_virtio 9p overlay"
# Loaded on demand inside (modprobe, kernel autoload): loop devices, and what a CNI bridge
# with portmap needs (bridge, veth, iptables over nf_tables, NAT).
LATE_MODULES="loop bridge veth br_netfilter nf_tables nft_compat nft_chain_nat nf_nat nf_conntrack
  xt_MASQUERADE xt_comment xt_mark xt_multiport xt_addrtype xt_conntrack xt_nat xt_tcpudp
  iptable_nat iptable_filter ip6table_nat ip6table_filter"

die() { echo "rsrun-vm: $*" >&2; exit 125; }
[ $# -eq 1 ] || { sed -n '2,/^set -euo/{/^set -euo/!p}' "$0" >&2; exit 2; }

install_missing() {
  local need=()
  command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
  command -v cpio >/dev/null || need+=(cpio)
  command -v depmod >/dev/null || need+=(kmod)
  command -v xz >/dev/null || need+=(xz-utils)
  command -v readelf >/dev/null || need+=(binutils)
  [ -x /bin/busybox ] || need+=(busybox-static)
  [ ${#need[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing host packages: ${need[*]}"
  echo "rsrun-vm: installing ${need[*]}" >&2
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"; } >&2 \
    || die "apt-get install ${need[*]} failed"
}
static_busybox() {
  # The initramfs runs busybox before any shared library is reachable.
  LC_ALL=C readelf -l /bin/busybox 2>/dev/null | grep -q INTERP && die "/bin/busybox is not static (apt-get install busybox-static)"
  return 0
}

# -------------------------------------------------------------------- stage 1 (initramfs /init)
read -r -d '' INIT1 <<'EOF' || true
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs dev /dev
die() { echo "rsrun-vm init: $*" > /dev/console; poweroff -f; }
for m in $(cat /etc/early-modules); do modprobe "$m" || die "modprobe $m"; done
mkdir -p /lower /rw /root
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=1048576 hostroot /lower || die "9p root"
mount -t tmpfs -o mode=755 rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work root /root || die overlay
mount -t tmpfs -o mode=755,nosuid,nodev run /root/run
mkdir -p /root/run/vm/io /root/run/vm/bin
cp /bin/busybox /stage2 /root/run/vm/
/root/run/vm/busybox --install -s /root/run/vm/bin
KV=$(uname -r)
mkdir -p /root/run/vm/modules /root/lib/modules/$KV 2>/dev/null
cp -a /lib/modules/$KV /root/run/vm/modules/
mount --bind /root/run/vm/modules/$KV /root/lib/modules/$KV || die "modules bind"
mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=1048576 io /root/run/vm/io || die "9p io"
for d in dev proc sys; do mount --move /$d /root/$d; done
exec switch_root /root /run/vm/stage2
EOF

# -------------------------------------------------------------------- stage 2 (on the new root)
read -r -d '' INIT2 <<'EOF' || true
#!/run/vm/busybox sh
export PATH=/run/vm/bin
IO=/run/vm/io
finish() { echo "$1" > $IO/status; sync; poweroff -f; sleep 10; }
. $IO/env
if [ "$VM_INIT" != systemd ]; then
  mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup || { echo "mount cgroup2 failed" > $IO/stderr; finish 125; }
  for c in $(cat /sys/fs/cgroup/cgroup.controllers); do echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control; done
fi
mkdir -p /dev/pts /dev/shm /dev/mqueue
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts /dev/pts; ln -sf pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev shm /dev/shm
mount -t mqueue mqueue /dev/mqueue
mount -t tmpfs -o mode=1777,nosuid,nodev tmp /tmp
ln -sf /proc/self/fd /dev/fd
ip link set lo up 2>/dev/null
hostname rsrun-vm
mkdir -p "$VM_CWD"
mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=1048576 cwd "$VM_CWD" || { echo "9p cwd failed" > $IO/stderr; finish 125; }
if [ "$VM_INIT" = systemd ]; then
  # Only what the command needs: the bus (socket-activated, without sysinit.target, whose
  # host units would wait for the host's disks) and the command's own service.
  U=/run/systemd/system; mkdir -p $U
  printf '%s\n' '[Unit]' 'DefaultDependencies=no' '[Socket]' 'ListenStream=/run/dbus/system_bus_socket' > $U/dbus.socket
  printf '%s\n' '[Unit]' 'DefaultDependencies=no' 'Requires=dbus.socket' '[Service]' 'Type=notify' 'NotifyAccess=main' \
    'ExecStart=/usr/bin/dbus-daemon --system --address=systemd: --nofork --nopidfile --systemd-activation --syslog-only' \
    'StandardOutput=null' > $U/dbus.service
  printf '%s\n' '[Unit]' 'DefaultDependencies=no' 'Wants=dbus.socket' 'After=dbus.socket' '[Service]' 'Type=oneshot' \
    'ExecStart=/run/vm/busybox sh /run/vm/run-cmd' 'StandardInput=null' 'StandardOutput=null' 'StandardError=null' > $U/rsrun-vm.service
  printf '%s\n' '. /run/vm/io/env' 'cd "$VM_CWD"' 'export PATH="$VM_PATH"' \
    '/bin/sh -c "$(cat /run/vm/io/cmd)" </dev/null >/run/vm/io/stdout 2>/run/vm/io/stderr' \
    'echo $? > /run/vm/io/status; sync; /run/vm/busybox poweroff -f' > /run/vm/run-cmd
  [ -s /etc/machine-id ] || /run/vm/busybox sh -c 'cat /proc/sys/kernel/random/uuid | tr -d - > /etc/machine-id'
  exec /lib/systemd/systemd --unit=rsrun-vm.service --log-target=console --log-level=warning
fi
cd "$VM_CWD"
export PATH="$VM_PATH"
/bin/sh -c "$(cat $IO/cmd)" </dev/null >$IO/stdout 2>$IO/stderr
finish $?
EOF

# -------------------------------------------------------------------- kernel + initramfs cache
build_cache() {
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"; flock 9
  if [ ! -f "$CACHE/kernel.deb" ] || [ ! -f "$CACHE/kver" ]; then
    echo "rsrun-vm: fetching a Debian kernel into $CACHE (first use)" >&2
    local dl="$CACHE/dl"; rm -rf "$dl"; mkdir -p "$dl"
    ( cd "$dl" && { apt-get download linux-image-amd64 || { apt-get update -q && apt-get download linux-image-amd64; }; } ) >/dev/null 2>&1 \
      || die "apt-get download linux-image-amd64 failed"
    local pkg; pkg=$(dpkg-deb -f "$dl"/linux-image-amd64_*.deb Depends | grep -o 'linux-image-[0-9][^ ,]*-amd64' | head -1)
    [ -n "$pkg" ] || die "cannot resolve the linux-image-amd64 dependency"
    ( cd "$dl" && apt-get download "$pkg" ) >/dev/null 2>&1 || die "apt-get download $pkg failed"
    mv "$dl/$pkg"_*.deb "$CACHE/kernel.deb"
    dpkg -x "$CACHE/kernel.deb" "$dl/x"
    local kv; kv=$(ls "$dl/x/lib/modules" | head -1)
    cp "$dl/x/boot/vmlinuz-$kv" "$CACHE/vmlinuz"
    # The ELF vmlinux inside the bzImage has a PVH entry point: qemu boots it directly,
    # which skips the in-guest decompression (much faster under TCG).
    rm -f "$CACHE/vmlinux"
    local off; off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$CACHE/vmlinuz" | head -1 | cut -d: -f1)
    if [ -n "$off" ] && tail -c +$((off + 1)) "$CACHE/vmlinuz" | xz -dc --single-stream > "$dl/vmlinux" 2>/dev/null \
       && LC_ALL=C readelf -n "$dl/vmlinux" 2>/dev/null | grep -q '(0x00000012)'; then
      mv "$dl/vmlinux" "$CACHE/vmlinux"
    fi
    echo "$kv" > "$CACHE/kver"
    rm -rf "$dl" "$CACHE"/initrd-*
  fi
  local key; key=$( { printf '%s\n' "$INIT1" "$INIT2" "$EARLY_MODULES $LATE_MODULES"; sha256sum /bin/busybox; } | sha256sum | cut -c1-12)
  INITRD="$CACHE/initrd-$key.cpio"
  if [ ! -f "$INITRD" ]; then
    local kv t r m f rel; kv=$(cat "$CACHE/kver"); t=$(mktemp -d "$CACHE/build.XXXXXX"); r="$t/r"
    dpkg -x "$CACHE/kernel.deb" "$t/k"; depmod -b "$t/k" "$kv"
    mkdir -p "$r"/{bin,dev,proc,sys,etc,lib/modules/$kv}
    cp /bin/busybox "$r/bin/busybox"
    printf '%s\n' "$INIT1" > "$r/init"; printf '%s\n' "$INIT2" > "$r/stage2"; chmod 755 "$r/init" "$r/stage2"
    for m in $EARLY_MODULES $LATE_MODULES; do
      for f in $(modprobe -d "$t/k" -S "$kv" --show-depends "$m" 2>/dev/null | awk '$1 == "insmod" {print $2}'); do
        rel=${f#"$t/k/lib/modules/$kv/"}
        mkdir -p "$r/lib/modules/$kv/$(dirname "$rel")"; cp "$f" "$r/lib/modules/$kv/$rel"
      done
    done
    cp "$t/k/lib/modules/$kv"/modules.{order,builtin,builtin.modinfo} "$r/lib/modules/$kv/"
    depmod -b "$r" "$kv"
    echo "$EARLY_MODULES" > "$r/etc/early-modules"
    ( cd "$r" && find . | LC_ALL=C sort | cpio -o -H newc --quiet ) > "$INITRD.tmp"
    rm -f "$CACHE"/initrd-*.cpio; mv "$INITRD.tmp" "$INITRD"; rm -rf "$t"
  fi
  KERNEL="$CACHE/vmlinuz"; [ -f "$CACHE/vmlinux" ] && KERNEL="$CACHE/vmlinux"
  exec 9>&-
}

install_missing
static_busybox
build_cache

RUN=$(mktemp -d "${TMPDIR:-/tmp}/rsrun-vm.XXXXXX")
QPID=
cleanup() {
  [ -n "$QPID" ] && kill "$QPID" 2>/dev/null
  if [ "${RSRUN_VM_DEBUG:-0}" = 1 ]; then echo "rsrun-vm: run dir kept: $RUN" >&2; else rm -rf "$RUN"; fi
}
trap cleanup EXIT
printf '%s\n' "$1" > "$RUN/cmd"
CWD=$(pwd -P)
[ "$CWD" != / ] || die "run it from a directory other than /"
{
  printf 'export VM_CWD=%q\nexport VM_PATH=%q\nexport HOME=%q\nVM_INIT=%q\n' "$CWD" "$PATH" "${HOME:-/root}" "${RSRUN_VM_INIT:-}"
  for v in $(compgen -e | grep -E '^(RUST_|CARGO_|RSRUN_)' || true); do printf 'export %s=%q\n' "$v" "${!v}"; done
} > "$RUN/env"
: > "$RUN/stdout"; : > "$RUN/stderr"

if [ "$ACCEL" = auto ]; then
  # /dev/kvm without vmx/svm (e.g. a paravirtual backend) cannot boot a stock kernel.
  if [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then ACCEL=kvm; else ACCEL=tcg; fi
fi
case $ACCEL in
  kvm) ACCEL_ARGS=(-accel kvm -cpu host) ;;
  tcg) ACCEL_ARGS=(-accel tcg,thread=multi -cpu max) ;;
  *) die "RSRUN_VM_ACCEL must be auto, kvm or tcg" ;;
esac
esc() { printf '%s' "${1//,/,,}"; }
timeout --foreground -k 5 "$TIMEOUT" qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot \
  -machine q35 "${ACCEL_ARGS[@]}" -m "$MEM" -smp "$SMP" \
  -kernel "$KERNEL" -initrd "$INITRD" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1 cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1 apparmor=0 rdinit=/init" \
  -serial "file:$RUN/console.log" \
  -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
  -virtfs "local,path=$(esc "$RUN"),mount_tag=io,security_model=none" \
  -virtfs "local,path=$(esc "$CWD"),mount_tag=cwd,security_model=passthrough,multidevs=remap" \
  </dev/null >"$RUN/qemu.log" 2>&1 &
QPID=$!
tail -q -n +1 -s 0.2 --pid=$QPID -f "$RUN/stdout" &
T1=$!
tail -q -n +1 -s 0.2 --pid=$QPID -f "$RUN/stderr" >&2 &
T2=$!
set +e; wait $QPID; QRC=$?; set -e
QPID=
wait $T1 $T2 2>/dev/null || true
if [ "${RSRUN_VM_DEBUG:-0}" = 1 ]; then echo "---- guest console ----" >&2; cat "$RUN/console.log" "$RUN/qemu.log" >&2; fi
[ -s "$RUN/status" ] && exit "$(cat "$RUN/status")"
[ "$QRC" = 124 ] && { echo "rsrun-vm: timed out after ${TIMEOUT}s" >&2; exit 124; }
echo "rsrun-vm: the VM ended without an exit status (qemu rc $QRC); console tail:" >&2
tail -n 30 "$RUN/console.log" >&2; cat "$RUN/qemu.log" >&2
exit 125
