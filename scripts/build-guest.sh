#!/usr/bin/env bash
# build-guest.sh - builds Haven's tiny throw-away test guest: the host's Debian
# kernel plus a small busybox initramfs whose /init runs a disk scenario
# (format-write, read-verify, probe, shell) against /dev/vda and powers off.
# Used by test/helpers/guest.ts to check NBD exports from inside a real VM.
#
# Usage: scripts/build-guest.sh [OUTDIR]
#   OUTDIR defaults to $HAVEN_GUEST_DIR, else <repo>/.cache/guest.
#   HAVEN_GUEST_KERNEL=/boot/vmlinuz-X picks a kernel (default: newest in /boot
#   that has /lib/modules/X). HAVEN_GUEST_FORCE=1 rebuilds unconditionally.
#   HAVEN_GUEST_BUSYBOX_MKFS=1 leaves e2fsprogs out (smaller image; ext2, no fsck).
# Outputs: OUTDIR/vmlinuz (copy of the kernel), OUTDIR/initramfs.img (gzip'd
# newc cpio) and, when the kernel supports PVH boot (CONFIG_PVH=y), OUTDIR/vmlinux:
# the same kernel already decompressed, which QEMU boots directly through its
# PVH entry point. Under TCG that skips ~5 s of in-guest xz decompression.
# Needs: busybox (static), cpio, gzip; e2fsprogs is optional (its mke2fs and
# e2fsck are copied in with their shared libraries; without them the guest
# falls back to busybox mke2fs, i.e. ext2 mounted by the ext4 driver).
set -euo pipefail

script_path="$(readlink -f "${BASH_SOURCE[0]}")"
repo_root="$(cd "$(dirname "$script_path")/.." && pwd)"
out_dir="${1:-${HAVEN_GUEST_DIR:-$repo_root/.cache/guest}}"

die() {
  echo "build-guest: $*" >&2
  exit 1
}

# --- pick the kernel ----------------------------------------------------------
kernel="${HAVEN_GUEST_KERNEL:-}"
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

# --- up to date? ----------------------------------------------------------------
stamp="$out_dir/.stamp"
want_stamp="kernel=$kernel busybox_mkfs=${HAVEN_GUEST_BUSYBOX_MKFS:-0}"
if [[ "${HAVEN_GUEST_FORCE:-0}" != 1 && -f "$out_dir/vmlinuz" && -f "$out_dir/initramfs.img" &&
  -f "$stamp" && "$(cat "$stamp")" == "$want_stamp" &&
  "$out_dir/initramfs.img" -nt "$script_path" && "$out_dir/initramfs.img" -nt "$kernel" &&
  "$out_dir/vmlinuz" -nt "$kernel" ]] &&
  { [[ -f "$out_dir/vmlinux" ]] || ! grep -q '^CONFIG_PVH=y' "/boot/config-$kver" 2>/dev/null; }; then
  echo "guest up to date:"
  echo "  kernel:    $out_dir/vmlinuz"
  if [[ -f "$out_dir/vmlinux" ]]; then echo "  kernel (PVH, uncompressed): $out_dir/vmlinux"; fi
  echo "  initramfs: $out_dir/initramfs.img"
  exit 0
fi

busybox_bin=""
for b in /bin/busybox /usr/bin/busybox; do
  if [[ -x "$b" ]] && ! ldd "$b" >/dev/null 2>&1; then
    busybox_bin="$b"
    break
  fi
done
[[ -n "$busybox_bin" ]] || die "need a static busybox (apt-get install busybox-static)"
command -v cpio >/dev/null || die "need cpio (apt-get install cpio)"

mkdir -p "$out_dir"
work="$(mktemp -d "$out_dir/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,mnt,tmp,root,lib/modules}

# --- busybox + applet symlinks ---------------------------------------------------
cp "$busybox_bin" "$root/bin/busybox"
for applet in $("$busybox_bin" --list); do
  [[ "$applet" == busybox ]] && continue
  ln -s busybox "$root/bin/$applet"
done

# --- kernel modules, dependencies first ------------------------------------------
# Only what a virtio-blk disk (virtio-pci transport) with ext4 needs.
# crc32c_generic: ext4 metadata_csum / jbd2 checksums (loaded up front because
# the kernel's on-demand module loading has nothing to call in this guest).
wanted_modules=(virtio_pci virtio_blk crc32c_generic ext4)
declare -A mod_path=() mod_seen=()
while IFS= read -r line; do
  rel="${line%%:*}"
  name="${rel##*/}"
  name="${name%%.ko*}"
  mod_path[${name//-/_}]="$rel"
done <"$moddir/modules.dep"
mod_order=()
add_module() {
  local name="${1//-/_}" rel dep
  [[ -n "${mod_seen[$name]:-}" ]] && return 0
  mod_seen[$name]=1
  rel="${mod_path[$name]:-}"
  if [[ -z "$rel" ]]; then
    # Built into the kernel (listed in modules.builtin): nothing to load.
    grep -q "/${1}\.ko\$" "$moddir/modules.builtin" 2>/dev/null && return 0
    die "module $1 not found in $moddir/modules.dep"
  fi
  for dep in $(grep "^$rel:" "$moddir/modules.dep" | cut -d: -f2-); do
    dep="${dep##*/}"
    add_module "${dep%%.ko*}"
  done
  mod_order+=("$rel")
}
for m in "${wanted_modules[@]}"; do add_module "$m"; done
: >"$root/etc/haven-modules"
for rel in "${mod_order[@]}"; do
  base="${rel##*/}"
  case "$rel" in
  *.ko) cp "$moddir/$rel" "$root/lib/modules/$base" ;;
  *.ko.xz) xz -dc "$moddir/$rel" >"$root/lib/modules/${base%.xz}" ;;
  *.ko.zst) zstd -qdc "$moddir/$rel" >"$root/lib/modules/${base%.zst}" ;;
  *.ko.gz) gzip -dc "$moddir/$rel" >"$root/lib/modules/${base%.gz}" ;;
  *) die "unsupported module file $rel" ;;
  esac
  echo "/lib/modules/${base%.ko*}.ko" >>"$root/etc/haven-modules"
done

# --- optional e2fsprogs (real ext4 mkfs + fsck) with their shared libraries ------
copy_with_libs() {
  local bin="$1" dest="$2" lib
  cp "$bin" "$root$dest"
  for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    if [[ ! -e "$root$lib" ]]; then
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    fi
  done
}
if [[ "${HAVEN_GUEST_BUSYBOX_MKFS:-0}" != 1 ]]; then
  mke2fs_bin="$(PATH="$PATH:/usr/sbin:/sbin" command -v mke2fs || true)"
  e2fsck_bin="$(PATH="$PATH:/usr/sbin:/sbin" command -v e2fsck || true)"
  if [[ -n "$mke2fs_bin" ]]; then
    copy_with_libs "$mke2fs_bin" /usr/sbin/mke2fs.full
    if [[ -f /etc/mke2fs.conf ]]; then cp /etc/mke2fs.conf "$root/etc/mke2fs.conf"; fi
  fi
  if [[ -n "$e2fsck_bin" ]]; then copy_with_libs "$e2fsck_bin" /usr/sbin/e2fsck.full; fi
fi

# --- /init -----------------------------------------------------------------------
cat >"$root/init" <<'INIT'
#!/bin/sh
# Haven test guest init: run the scenario named by haven.test= on /dev/vda,
# print "HAVEN-TEST: ..." marker lines on the console, power off.
# haven.debug=1 adds "HAVEN-DEBUG: <uptime> <step>" lines for timing.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "HAVEN-TEST: booted"

scenario=shell
debug=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
  haven.test=*) scenario="${arg#haven.test=}" ;;
  haven.debug=1) debug=1 ;;
  esac
done

step() {
  [ -n "$debug" ] && echo "HAVEN-DEBUG: $(cut -d' ' -f1 /proc/uptime) $*"
  return 0
}
off() {
  sync
  poweroff -f
  sleep 2
  reboot -f # no ACPI power-off: a reset also ends QEMU under -no-reboot
}
fail() {
  echo "HAVEN-TEST: $scenario FAIL $*"
  off
}
ok() {
  echo "HAVEN-TEST: $scenario OK $*"
  off
}

step insmod
while read -r m; do
  insmod "$m" || fail "insmod $m"
done </etc/haven-modules

if [ "$scenario" != shell ]; then
  i=0
  while [ ! -b /dev/vda ]; do
    i=$((i + 1))
    [ "$i" -gt 50 ] && fail "no /dev/vda (is a virtio-blk disk attached?)"
    sleep 0.1
  done
  step "vda present"
fi

# 1 MiB of known content, 65536 lines of 16 bytes: "100000000000000\n",
# "100000000000001\n", ...: every 4 KiB block differs from every other one.
# Its md5 was computed at build time into /etc/haven-data.md5.
gen_data() { seq 100000000000000 100000000065535; }
want_md5="$(cat /etc/haven-data.md5)"

case "$scenario" in
format-write)
  step mkfs
  if [ -x /usr/sbin/mke2fs.full ]; then
    mke2fs.full -F -q -t ext4 -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 -L haven-test /dev/vda >/tmp/mkfs.log 2>&1
  else
    mke2fs -F -q -L haven-test /dev/vda >/tmp/mkfs.log 2>&1 # busybox: ext2
  fi || {
    cat /tmp/mkfs.log
    fail "mkfs"
  }
  step mount
  mount -t ext4 /dev/vda /mnt || fail "mount"
  step write
  gen_data >/mnt/data.bin || fail "write data.bin"
  md5="$(md5sum /mnt/data.bin | cut -d' ' -f1)"
  [ "$md5" = "$want_md5" ] || fail "data.bin md5 $md5 != expected $want_md5 right after writing"
  echo "$md5  data.bin" >/mnt/data.md5 || fail "write data.md5"
  mkdir /mnt/small || fail "mkdir"
  for n in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16; do
    echo "haven small file $n" >"/mnt/small/f$n" || fail "write small/f$n"
  done
  (cd /mnt && md5sum small/* >small.md5) || fail "write small.md5"
  step sync
  sync
  umount /mnt || fail "umount"
  step done
  ok "$md5"
  ;;
read-verify)
  if [ -x /usr/sbin/e2fsck.full ]; then
    step e2fsck
    e2fsck.full -fn /dev/vda >/tmp/fsck.log 2>&1 || {
      cat /tmp/fsck.log
      fail "e2fsck found problems"
    }
  fi
  step mount
  mount -t ext4 -o ro /dev/vda /mnt || fail "mount"
  step verify
  [ -f /mnt/data.bin ] || fail "missing data.bin"
  [ -f /mnt/data.md5 ] || fail "missing data.md5"
  md5="$(md5sum /mnt/data.bin | cut -d' ' -f1)"
  [ "$md5" = "$want_md5" ] || fail "data.bin md5 $md5 != expected $want_md5"
  [ "$(cut -d' ' -f1 /mnt/data.md5)" = "$md5" ] || fail "data.md5 does not match data.bin"
  (cd /mnt && md5sum -c -s small.md5) || fail "small.md5 check failed"
  umount /mnt || fail "umount"
  step done
  ok "$md5"
  ;;
probe)
  ok "size=$(blockdev --getsize64 /dev/vda) ro=$(blockdev --getro /dev/vda)"
  ;;
shell)
  echo "Haven test guest shell; /dev/vda is the NBD disk. 'exit' powers off."
  setsid cttyhack sh
  off
  ;;
*)
  fail "unknown scenario"
  ;;
esac
off
INIT
chmod 755 "$root/init"

# --- uncompressed PVH-bootable kernel (optional) ----------------------------------
# A bzImage is a small x86 stub plus the compressed vmlinux ELF: find the payload
# by its magic bytes and decompress it (what linux/scripts/extract-vmlinux does).
extract_vmlinux() {
  local magic tool off
  for spec in '\xFD7zXZ\x00:xz -dcq --single-stream' '\x28\xB5\x2F\xFD:zstd -dcq' \
    '\x1F\x8B\x08:gzip -dcq'; do
    magic="${spec%%:*}" tool="${spec#*:}"
    command -v "${tool%% *}" >/dev/null || continue
    for off in $(LC_ALL=C grep -obUaP "$magic" "$kernel" 2>/dev/null | head -3 | cut -d: -f1); do
      tail -c "+$((off + 1))" "$kernel" | $tool >"$work/vmlinux" 2>/dev/null || true
      if [[ "$(head -c 4 "$work/vmlinux" | od -An -tx1 | tr -d ' ')" == 7f454c46 ]]; then
        return 0
      fi
    done
  done
  rm -f "$work/vmlinux"
  return 1
}
if grep -q '^CONFIG_PVH=y' "/boot/config-$kver" 2>/dev/null && extract_vmlinux; then
  have_vmlinux=1
else
  have_vmlinux=0
  echo "build-guest: note: no PVH-bootable vmlinux (boots the compressed kernel, slower)" >&2
fi

# Expected md5 of the guest's generated data (busybox seq is deterministic).
"$busybox_bin" seq 100000000000000 100000000065535 | md5sum | cut -d' ' -f1 >"$root/etc/haven-data.md5"

# --- pack -----------------------------------------------------------------------
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
  cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -6 -n >"$work/initramfs.img"
cp "$kernel" "$work/vmlinuz"
echo "$want_stamp" >"$work/stamp"
rm -f "$stamp"
if [[ "$have_vmlinux" == 1 ]]; then
  mv -f "$work/vmlinux" "$out_dir/vmlinux"
else
  rm -f "$out_dir/vmlinux"
fi
mv -f "$work/vmlinuz" "$out_dir/vmlinuz"
mv -f "$work/initramfs.img" "$out_dir/initramfs.img"
mv -f "$work/stamp" "$stamp"

echo "guest built ($kver; modules: $(tr '\n' ' ' <"$root/etc/haven-modules")):"
echo "  kernel:    $out_dir/vmlinuz"
if [[ "$have_vmlinux" == 1 ]]; then echo "  kernel (PVH, uncompressed): $out_dir/vmlinux"; fi
echo "  initramfs: $out_dir/initramfs.img ($(stat -c %s "$out_dir/initramfs.img") bytes)"
