#!/usr/bin/env bash
# build-test-image.sh - builds haven-test, the guest Haven's HA tests run: a raw disk that boots with
# its own bootloader like any installed Linux or Windows guest, counts its boots on its own disk,
# sends a heartbeat on Haven's virtio-serial port, serves HTTP and gives a root shell on ttyS0.
#
# Usage: scripts/build-test-image.sh [OUTDIR]
#   OUTDIR defaults to $HAVEN_IMAGE_DIR, else <repo>/.cache/images.
#   HAVEN_IMAGE_KERNEL=/boot/vmlinuz-X picks a kernel (default: the newest in /boot with /lib/modules/X).
#   HAVEN_IMAGE_FORCE=1 rebuilds even when the stamp says the image is up to date.
# Outputs:
#   OUTDIR/haven-test.raw      96 MiB raw disk, MBR (syslinux mbr.bin):
#                                partition 1 (1 MiB..33 MiB, FAT16, active): syslinux, the kernel, the
#                                  initramfs and syslinux.cfg;
#                                partition 2 (33 MiB..end, ext4 "haven-data"): the boot counter, mounted
#                                  at /data in the guest (the guest formats it if it is blank).
#   OUTDIR/haven-test-kernel   the same kernel for direct kernel boot (-kernel): the uncompressed
#                              PVH-bootable vmlinux when the kernel has CONFIG_PVH, else the bzImage.
#   OUTDIR/haven-test-initrd   the same initramfs (-initrd).
#   OUTDIR/haven-test.cmdline  the kernel command line syslinux passes (-append, for the same guest).
# Nothing is mounted and no loop device is used: the partitions are built as files (mkfs.vfat, mcopy,
# syslinux --install, mke2fs) and written into the disk at their offsets.
# Needs: busybox (static), cpio, gzip, kmod's module tree, e2fsprogs, dosfstools, mtools, syslinux,
# syslinux-common, fdisk (sfdisk).
set -euo pipefail

script_path="$(readlink -f "${BASH_SOURCE[0]}")"
repo_root="$(cd "$(dirname "$script_path")/.." && pwd)"
out_dir="${1:-${HAVEN_IMAGE_DIR:-$repo_root/.cache/images}}"
export PATH="$PATH:/usr/sbin:/sbin"

die() {
  echo "build-test-image: $*" >&2
  exit 1
}

# Disk geometry, in MiB. The boot partition holds a ~8 MiB kernel and a ~3 MiB initramfs.
disk_mib=96
boot_start_mib=1
boot_mib=32
data_start_mib=$((boot_start_mib + boot_mib))
data_mib=$((disk_mib - data_start_mib))

# Kernel options: the console on the first serial port; a panic is left to pvpanic (no reboot);
# quiet, so the first console line is the guest's own; then options that only make boot faster under
# TCG (the reasons are in test/helpers/guest.ts, FAST_BOOT_APPEND).
cmdline="console=ttyS0 panic=0 quiet mitigations=off security=none audit=0 cryptomgr.notests 8250.nr_uarts=1"
cmdline+=" tsc=reliable no_timer_check random.trust_cpu=on"
cmdline+=" initcall_blacklist=crypto_kdf108_init,cubictcp_register,load_system_certificate_list"

# --- pick the kernel ---------------------------------------------------------------------------------
kernel="${HAVEN_IMAGE_KERNEL:-}"
if [[ -z "$kernel" ]]; then
  while IFS= read -r k; do
    if [[ -d "/lib/modules/${k#/boot/vmlinuz-}" ]]; then kernel="$k"; fi
  done < <(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V)
fi
[[ -n "$kernel" && -r "$kernel" ]] ||
  die "no readable /boot/vmlinuz-* with matching /lib/modules (apt-get install linux-image-amd64)"
kver="${kernel##*/vmlinuz-}"
moddir="/lib/modules/$kver"
[[ -d "$moddir" ]] || die "missing $moddir for $kernel"

# --- up to date? ------------------------------------------------------------------------------------
outputs=(haven-test.raw haven-test-kernel haven-test-initrd haven-test.cmdline)
stamp="$out_dir/.stamp"
want_stamp="kernel=$kernel disk_mib=$disk_mib"
up_to_date() {
  [[ "${HAVEN_IMAGE_FORCE:-0}" != 1 && -f "$stamp" && "$(cat "$stamp")" == "$want_stamp" ]] || return 1
  local f
  for f in "${outputs[@]}"; do
    [[ -f "$out_dir/$f" && "$out_dir/$f" -nt "$script_path" && "$out_dir/$f" -nt "$kernel" ]] || return 1
  done
}
print_outputs() {
  echo "  disk:    $out_dir/haven-test.raw"
  echo "  kernel:  $out_dir/haven-test-kernel"
  echo "  initrd:  $out_dir/haven-test-initrd"
  echo "  cmdline: $out_dir/haven-test.cmdline"
}
if up_to_date; then
  echo "haven-test image up to date:"
  print_outputs
  exit 0
fi

# --- tools -------------------------------------------------------------------------------------------
busybox_bin=""
for b in /bin/busybox /usr/bin/busybox; do
  if [[ -x "$b" ]] && ! ldd "$b" >/dev/null 2>&1; then
    busybox_bin="$b"
    break
  fi
done
[[ -n "$busybox_bin" ]] || die "need a static busybox (apt-get install busybox-static)"
for tool in cpio:cpio gzip:gzip mke2fs:e2fsprogs mkfs.vfat:dosfstools mcopy:mtools syslinux:syslinux sfdisk:fdisk; do
  command -v "${tool%%:*}" >/dev/null || die "need ${tool%%:*} (apt-get install ${tool#*:})"
done
syslinux_mbr=/usr/lib/syslinux/mbr/mbr.bin
[[ -r "$syslinux_mbr" ]] || die "need $syslinux_mbr (apt-get install syslinux-common)"

mkdir -p "$out_dir"
work="$(mktemp -d "$out_dir/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc/haven,proc,sys,dev,run,tmp,root,data,srv/www,lib/modules,var/log}
ln -s ../run "$root/var/run"

# --- busybox and its applets -------------------------------------------------------------------------
cp "$busybox_bin" "$root/bin/busybox"
for applet in $("$busybox_bin" --list); do
  [[ "$applet" == busybox ]] && continue
  ln -s busybox "$root/bin/$applet"
done
# busybox init looks for itself at /sbin/init.
ln -s ../bin/busybox "$root/sbin/init"

# --- kernel modules, each after its dependencies -----------------------------------------------------
# virtio_pci: the transport of every virtio device; virtio_blk: /dev/vda; crc32c_generic and ext4: the
# data partition (ext4 checksums need crc32c, and the guest has no on-demand module loader);
# virtio_console: the heartbeat port; virtio_net: the NICs; button and evdev: the ACPI power button as
# an input event that acpid turns into a power-off; pvpanic_mmio (QEMU's ISA `pvpanic`, found through
# ACPI) and pvpanic_pci: a kernel panic reaches QEMU as a GUEST_PANICKED event.
wanted_modules=(virtio_pci virtio_blk crc32c_generic ext4 virtio_console virtio_net button evdev pvpanic_mmio pvpanic_pci)
declare -A module_file=() module_added=()
while IFS= read -r line; do
  rel="${line%%:*}"
  name="${rel##*/}"
  name="${name%%.ko*}"
  module_file[${name//-/_}]="$rel"
done <"$moddir/modules.dep"
module_order=()
add_module() {
  local name="${1//-/_}" rel dep
  [[ -n "${module_added[$name]:-}" ]] && return 0
  module_added[$name]=1
  rel="${module_file[$name]:-}"
  if [[ -z "$rel" ]]; then
    grep -q "/${1}\.ko\$" "$moddir/modules.builtin" 2>/dev/null && return 0 # built in
    die "module $1 is neither in $moddir/modules.dep nor built in"
  fi
  for dep in $(grep "^$rel:" "$moddir/modules.dep" | cut -d: -f2-); do
    dep="${dep##*/}"
    add_module "${dep%%.ko*}"
  done
  module_order+=("$rel")
}
for m in "${wanted_modules[@]}"; do add_module "$m"; done
: >"$root/etc/haven/modules"
for rel in "${module_order[@]}"; do
  base="${rel##*/}"
  plain="${base%.ko*}.ko"
  case "$rel" in
  *.ko) cp "$moddir/$rel" "$root/lib/modules/$plain" ;;
  *.ko.xz) xz -dc "$moddir/$rel" >"$root/lib/modules/$plain" ;;
  *.ko.zst) zstd -qdc "$moddir/$rel" >"$root/lib/modules/$plain" ;;
  *.ko.gz) gzip -dc "$moddir/$rel" >"$root/lib/modules/$plain" ;;
  *) die "unsupported module file $rel" ;;
  esac
  echo "/lib/modules/$plain" >>"$root/etc/haven/modules"
done

# --- e2fsprogs' mke2fs, to format a blank data partition as ext4 ------------------------------------
mke2fs_bin="$(command -v mke2fs)"
cp "$mke2fs_bin" "$root/usr/sbin/mke2fs.ext4"
for lib in $(ldd "$mke2fs_bin" | grep -o '/[^ ]*'); do
  if [[ ! -e "$root$lib" ]]; then
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  fi
done
if [[ -f /etc/mke2fs.conf ]]; then cp /etc/mke2fs.conf "$root/etc/mke2fs.conf"; fi

# --- the guest's programs ----------------------------------------------------------------------------
# /init runs first (PID 1): it mounts, loads modules, counts the boot on the data partition and sets
# up the network, then hands PID 1 to busybox init, which starts the services (sysinit), keeps a root
# shell on ttyS0 and powers off cleanly on `poweroff` (SIGUSR2 to PID 1, which acpid sends on the
# power button).
cat >"$root/init" <<'INIT'
#!/bin/sh
# haven-test first stage: everything that must happen once, before busybox init takes PID 1.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /dev/pts /dev/virtio-ports
mount -t devpts devpts /dev/pts

say() { echo "haven-test: $*"; }

while read -r module; do
  insmod "$module" || say "insmod $module failed"
done </etc/haven/modules

# The data partition: /dev/vda2. Partition devices appear when virtio_blk has read the MBR.
data=/dev/vda2
tries=0
while [ ! -b "$data" ] && [ "$tries" -lt 200 ]; do
  tries=$((tries + 1))
  sleep 0.05
done
count=0
if [ ! -b "$data" ]; then
  say "no $data (is the haven-test disk attached as virtio-blk?); no boot count"
else
  # The ext superblock magic 0xEF53 sits at byte 1080. A partition whose first 64 KiB are all zero is
  # blank and gets formatted; anything else that is not ext is left alone.
  magic="$(od -An -tx1 -j1080 -N2 "$data" | tr -d ' \n')"
  if [ "$magic" != 53ef ] && [ -z "$(od -An -tx1 -N65536 "$data" | tr -d ' 0\n*')" ]; then
    say "formatting blank $data as ext4"
    mke2fs.ext4 -q -F -t ext4 -L haven-data "$data" || say "mke2fs failed"
  fi
  if mount -t ext4 "$data" /data; then
    count="$(cat /data/boot-count 2>/dev/null)"
    case "$count" in '' | *[!0-9]*) count=0 ;; esac
    count=$((count + 1))
    # Written to a new file, synced, renamed, synced: a crash leaves the old count or the new one.
    echo "$count" >/data/boot-count.new && sync && mv /data/boot-count.new /data/boot-count && sync ||
      say "writing the boot count failed"
  else
    say "cannot mount $data (magic $magic); no boot count"
  fi
fi
echo "$count" >/run/boot-count
echo "boot-count=$count"
say "nproc=$(nproc) memtotal-kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)"

# Network: lo, and each NIC at a fixed address from its MAC: 52:54:00:XX:YY:ZZ -> 10.99.YY.ZZ/16.
ip link set lo up
for dev in /sys/class/net/*; do
  name="${dev##*/}"
  [ "$name" = lo ] && continue
  mac="$(cat "$dev/address")"
  y="${mac#*:*:*:*:}"
  z="${y#*:}"
  y="${y%:*}"
  address="10.99.$((0x$y)).$((0x$z))"
  ip addr add "$address/16" dev "$name" && ip link set "$name" up && say "$name $mac $address/16"
done

exec /sbin/init
INIT
chmod 755 "$root/init"

cat >"$root/etc/inittab" <<'INITTAB'
::sysinit:/etc/haven/services
ttyS0::respawn:-/bin/sh
::shutdown:/etc/haven/shutdown
INITTAB

cat >"$root/etc/haven/services" <<'SERVICES'
#!/bin/sh
# haven-test services, started by busybox init before the console shell.
count="$(cat /run/boot-count)"
printf '%s\n' "$count" >/srv/www/boot-count
echo ok >/srv/www/health
httpd -p 80 -h /srv/www
acpid -c /etc/acpi -l /run/acpid.log
setsid /etc/haven/heartbeat </dev/null >/dev/null 2>&1 &
SERVICES

cat >"$root/etc/haven/heartbeat" <<'HEARTBEAT'
#!/bin/sh
# One line a second on Haven's heartbeat port, "heartbeat boot=N seq=M" (M counts the beats sent in
# this boot), except while /run/heartbeat.frozen exists: then the loop runs and sends nothing.
# While no client is connected to QEMU's end, QEMU holds the port's data back: a client that connects
# late first gets the beats sent before (measured: seq=1..3 at once), then one a second.
name=org.haven.heartbeat.0
port=/dev/virtio-ports/$name
# No udev here: link the port's name to its device. Its name arrives from QEMU just after the device.
tries=0
while [ ! -e "$port" ] && [ "$tries" -lt 100 ]; do
  for dir in /sys/class/virtio-ports/*; do
    [ "$(cat "$dir/name" 2>/dev/null)" = "$name" ] && ln -sf "/dev/${dir##*/}" "$port"
  done
  [ -e "$port" ] || sleep 0.1
  tries=$((tries + 1))
done
[ -e "$port" ] || { echo "haven-test: no heartbeat port $name" >/dev/console; exit 1; }
boot="$(cat /run/boot-count)"
exec 3>"$port"
seq=0
while :; do
  if [ ! -e /run/heartbeat.frozen ]; then
    seq=$((seq + 1))
    echo "heartbeat boot=$boot seq=$seq" >&3
  fi
  sleep 1
done
HEARTBEAT

cat >"$root/etc/haven/shutdown" <<'SHUTDOWN'
#!/bin/sh
# Before busybox init powers off: the data partition is clean when the VM goes.
sync
umount /data 2>/dev/null || mount -o remount,ro /data 2>/dev/null
sync
SHUTDOWN

# busybox acpid runs /etc/acpi/<action> for an event; the power button's action is PWRF/00000080.
mkdir -p "$root/etc/acpi/PWRF"
cat >"$root/etc/acpi/PWRF/00000080" <<'POWER'
#!/bin/sh
exec poweroff
POWER
chmod 755 "$root/etc/haven/services" "$root/etc/haven/heartbeat" "$root/etc/haven/shutdown" \
  "$root/etc/acpi/PWRF/00000080"

# The console shell's profile; the first console shell says the guest is ready (services run and a
# shell reads the console).
cat >"$root/etc/profile" <<'PROFILE'
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
export PS1='haven-test# '
cd /root
if [ ! -e /run/ready ]; then
  : >/run/ready
  echo "haven-test: ready"
fi
PROFILE

# --- the initramfs -----------------------------------------------------------------------------------
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
  cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -6 -n >"$work/initrd"

# --- the kernel for direct boot: uncompressed and PVH-bootable when the kernel can -------------------
# A bzImage is an x86 stub followed by the compressed vmlinux ELF: find the payload by its magic and
# decompress it. QEMU's -kernel boots such an ELF through its PVH note, skipping the decompression
# (~5 s of xz under TCG).
extract_vmlinux() {
  local entry magic tool offset
  for entry in '\xFD7zXZ\x00|xz -dcq --single-stream' '\x28\xB5\x2F\xFD|zstd -dcq' '\x1F\x8B\x08|gzip -dcq'; do
    magic="${entry%%|*}" tool="${entry#*|}"
    command -v "${tool%% *}" >/dev/null || continue
    for offset in $(LC_ALL=C grep -obUaP "$magic" "$kernel" 2>/dev/null | head -3 | cut -d: -f1); do
      tail -c "+$((offset + 1))" "$kernel" | $tool >"$work/vmlinux" 2>/dev/null || true
      [[ "$(head -c 4 "$work/vmlinux" | od -An -tx1 | tr -d ' ')" == 7f454c46 ]] && return 0
    done
  done
  rm -f "$work/vmlinux"
  return 1
}
if grep -q '^CONFIG_PVH=y' "/boot/config-$kver" 2>/dev/null && extract_vmlinux; then
  mv "$work/vmlinux" "$work/kernel"
else
  echo "build-test-image: note: no PVH-bootable vmlinux; direct boot uses the compressed kernel" >&2
  cp "$kernel" "$work/kernel"
fi

# --- the boot partition: FAT16 with syslinux ---------------------------------------------------------
boot_img="$work/boot.img"
mkfs.vfat -F 16 -n HAVENBOOT -C "$boot_img" $((boot_mib * 1024)) >/dev/null
cat >"$work/syslinux.cfg" <<CFG
SERIAL 0 115200
PROMPT 0
TIMEOUT 0
DEFAULT haven-test
LABEL haven-test
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND $cmdline
CFG
export MTOOLS_SKIP_CHECK=1
mcopy -i "$boot_img" "$kernel" ::/vmlinuz
mcopy -i "$boot_img" "$work/initrd" ::/initrd.img
mcopy -i "$boot_img" "$work/syslinux.cfg" ::/syslinux.cfg
syslinux --install "$boot_img"

# --- the data partition: ext4, empty but for lost+found ----------------------------------------------
data_img="$work/data.img"
truncate -s "${data_mib}M" "$data_img"
mke2fs -q -F -t ext4 -L haven-data -E nodiscard "$data_img"

# --- the disk: MBR with syslinux's boot code, then the two partitions at their offsets ---------------
disk="$work/haven-test.raw"
truncate -s "${disk_mib}M" "$disk"
sfdisk --quiet --no-reread --no-tell-kernel "$disk" <<TABLE
label: dos
label-id: 0x48415645
start=${boot_start_mib}MiB, size=${boot_mib}MiB, type=e, bootable
start=${data_start_mib}MiB, type=83
TABLE
# mbr.bin is boot code only (440 bytes): the partition table after it stays.
dd if="$syslinux_mbr" of="$disk" bs=440 count=1 conv=notrunc status=none
dd if="$boot_img" of="$disk" bs=1M seek="$boot_start_mib" conv=notrunc,sparse status=none
dd if="$data_img" of="$disk" bs=1M seek="$data_start_mib" conv=notrunc,sparse status=none

echo "$cmdline" >"$work/cmdline"
rm -f "$stamp"
mv -f "$disk" "$out_dir/haven-test.raw"
mv -f "$work/kernel" "$out_dir/haven-test-kernel"
mv -f "$work/initrd" "$out_dir/haven-test-initrd"
mv -f "$work/cmdline" "$out_dir/haven-test.cmdline"
echo "$want_stamp" >"$stamp"

echo "haven-test image built ($kver; modules: $(sed 's,.*/,,; s,\.ko$,,' "$root/etc/haven/modules" | tr '\n' ' ')):"
print_outputs
