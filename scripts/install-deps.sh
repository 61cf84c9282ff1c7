#!/usr/bin/env bash
# Installs what Haven needs on a Debian machine (run as root): the Debian packages for QEMU, NBD tools,
# fio, the test guest's kernel and busybox, the test image's bootloader, etcd, disk tools; then the node modules
# (which build the native addon and compile the TypeScript). Safe to run again: apt and npm skip what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  qemu-system-x86 qemu-utils                           # VMs, qemu-img, qemu-io, qemu-nbd
  libnbd-bin python3-libnbd nbdkit                     # nbdinfo, nbdcopy, nbdsh; the reference NBD server
  fio                                                  # benchmarks and verify tests
  linux-image-amd64 busybox-static e2fsprogs cpio kmod # the tiny test guest
  syslinux syslinux-common dosfstools mtools fdisk     # haven-test, the bootable test image
  etcd-server etcd-client iproute2                     # cluster state; network namespaces for partitions
  util-linux mount xfsprogs ledmon fuse3               # disks: blkid, partx, losetup, mount; mkfs.xfs; ledctl; nbdfuse (failing disk)
  g++ make python3                                     # node-gyp builds the native addon
  prometheus                                           # promtool: the metrics' and alert rules' checks
  chromium                                             # the dashboard's browser tests (playwright-core drives it)
)

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]} > 0)); then
  if [[ $(id -u) != 0 ]]; then
    echo "install-deps: missing Debian packages: ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -d node_modules || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund
else
  # The addon is rebuilt when its source changed since it was built (a pull that adds a function).
  [[ build/Release/haven_io.node -nt native/haven_io.c && build/Release/haven_io.node -nt binding.gyp ]] ||
    npm run install --silent
  npm run build --silent
fi
