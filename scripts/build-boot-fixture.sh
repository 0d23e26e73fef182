#!/usr/bin/env bash
# Builds a small BIOS-bootable GPT disk image from Debian's packages, for the "a clone boots"
# acceptance test (e2e/tests/boot.rs):
#   sector 0:    syslinux's gptmbr.bin (boot code, first 440 bytes; the GPT's protective MBR
#                entry stays as sfdisk wrote it)
#   partition 1: ext4 with the legacy-BIOS-bootable attribute, extlinux installed in
#                /boot/extlinux, Debian's kernel (/boot/vmlinuz, from the package that
#                linux-image-amd64 depends on) and a busybox-static initramfs (/boot/initrd.gz)
#                whose /init prints a marker line to the console and powers the machine off.
#
# Usage: build-boot-fixture.sh OUTDIR
# Writes OUTDIR/disk.img and OUTDIR/marker (the line the guest prints, with a random token).
# Environment:
#   BLOCKSWARM_CACHE       where the kernel is kept between runs (default /var/cache/blockswarm)
#   BLOCKSWARM_BOOT_TOKEN  the marker's token (default: random)
#   BLOCKSWARM_BOOT_MIB    disk size in MiB (default 128)
# Needs root (loop mount for extlinux), and from scripts/install-deps.sh: extlinux,
# syslinux-common, busybox-static, cpio, e2fsprogs, util-linux (sfdisk, mount); apt-get and
# dpkg-deb to fetch the kernel the first time (network), never installing it on the host.
set -euo pipefail

die() { echo "build-boot-fixture: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: $0 OUTDIR"
out=$1
cache=${BLOCKSWARM_CACHE:-/var/cache/blockswarm}
mib=${BLOCKSWARM_BOOT_MIB:-128}
token=${BLOCKSWARM_BOOT_TOKEN:-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')}
marker="BLOCKSWARM-BOOT-OK $token"
gptmbr=/usr/lib/syslinux/mbr/gptmbr.bin
busybox=/bin/busybox
export PATH="$PATH:/usr/sbin:/sbin"

[ "$(id -u)" -eq 0 ] || die "must run as root (loop mount for extlinux --install)"
for t in sfdisk mkfs.ext4 extlinux cpio gzip mount umount mountpoint flock dpkg-deb apt-get apt-cache; do
  command -v "$t" >/dev/null || die "$t not found: run scripts/install-deps.sh"
done
[ -f "$gptmbr" ] || die "$gptmbr not found: install syslinux-common"
# busybox (dynamic) and busybox-static both ship /bin/busybox; only the static one runs alone
# in an initramfs.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" ||
  die "busybox-static is not installed"

mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/boot-fixture.XXXXXX")
mnt="$work/mnt"
cleanup() {
  mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"
  rm -rf "$work"
}
trap cleanup EXIT

# --- the kernel: Debian's default kernel package for this release, unpacked into the cache ---
# Prints the path of a cached vmlinuz, downloading the package only when this version is not
# cached yet. Without apt lists or network, falls back to the newest cached kernel.
fetch_kernel() {
  local pkg ver dir tmp
  mkdir -p "$cache/kernel"
  # "Depends: linux-image-6.1.0-57-amd64 (= 6.1.192-3)" of the candidate metapackage.
  read -r pkg ver < <(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null |
    awk '$1 == "Depends:" { for (i = 2; i <= NF; i++) if ($i ~ /^linux-image-/) {
      v = $(i + 2); sub(/\)[,]?$/, "", v); print $i, v; exit } }') || true
  if [ -z "${pkg:-}" ] || [ -z "${ver:-}" ]; then
    dir=$(ls -1dt "$cache"/kernel/*/ 2>/dev/null | head -n1) || true
    [ -n "$dir" ] && [ -f "$dir/vmlinuz" ] ||
      die "cannot resolve linux-image-amd64 (run apt-get update) and no kernel cached in $cache"
    echo "build-boot-fixture: linux-image-amd64 unresolved, using cached ${dir%/}" >&2
    echo "${dir%/}/vmlinuz"
    return
  fi
  dir="$cache/kernel/${pkg}_${ver//:/%3a}"
  if [ ! -f "$dir/vmlinuz" ]; then
    # One download even when several tests build fixtures at once.
    exec 9>"$cache/kernel/.lock"
    flock 9
    if [ ! -f "$dir/vmlinuz" ]; then
      echo "build-boot-fixture: downloading $pkg=$ver into $cache" >&2
      tmp=$(mktemp -d "$cache/kernel/.dl.XXXXXX")
      (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver" >&2) ||
        { rm -rf "$tmp"; die "apt-get download $pkg=$ver failed"; }
      mkdir -p "$tmp/x"
      dpkg-deb --fsys-tarfile "$tmp"/*.deb | tar -x -C "$tmp/x" ./boot
      mkdir -p "$tmp/k"
      cp "$tmp"/x/boot/vmlinuz-* "$tmp/k/vmlinuz"
      cp "$tmp"/x/boot/config-* "$tmp/k/config" 2>/dev/null || true
      echo "$pkg $ver" >"$tmp/k/package"
      rm -rf "$dir"
      mv "$tmp/k" "$dir"
      rm -rf "$tmp"
    fi
    flock -u 9
    exec 9>&-
  fi
  echo "$dir/vmlinuz"
}
vmlinuz=$(fetch_kernel)

# --- the initramfs: static busybox, /init prints the marker and powers off ---
stage="$work/initramfs"
mkdir -p "$stage"/{bin,dev,proc,sys}
cp "$busybox" "$stage/bin/busybox"
ln -s busybox "$stage/bin/sh"
mknod -m 600 "$stage/dev/console" c 5 1
mknod -m 666 "$stage/dev/null" c 1 3
cat >"$stage/init" <<EOF
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
echo "$marker" >/dev/console
/bin/busybox poweroff -f
EOF
chmod 755 "$stage/init"
(cd "$stage" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9 >"$work/initrd.gz"

# --- the ext4 partition: kernel, initramfs, extlinux ---
sectors=$((mib * 2048))
part_start=2048                       # 1 MiB
part_sectors=$((sectors - 2 * 2048))  # leaves 1 MiB at the end for the backup GPT
part="$work/part.img"
truncate -s $((part_sectors * 512)) "$part"
mkfs.ext4 -q -F -L bsboot -b 4096 "$part"
mkdir -p "$mnt"
mount -o loop "$part" "$mnt"
mkdir -p "$mnt/boot/extlinux"
cp "$vmlinuz" "$mnt/boot/vmlinuz"
cp "$work/initrd.gz" "$mnt/boot/initrd.gz"
cat >"$mnt/boot/extlinux/extlinux.conf" <<'EOF'
SERIAL 0 115200
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  LINUX /boot/vmlinuz
  INITRD /boot/initrd.gz
  APPEND console=ttyS0 panic=-1
EOF
extlinux --install "$mnt/boot/extlinux" >/dev/null 2>"$work/extlinux.err" ||
  die "extlinux --install failed: $(cat "$work/extlinux.err")"
umount "$mnt"

# --- the disk: GPT, partition 1 legacy-BIOS-bootable, gptmbr.bin in sector 0 ---
disk="$out/disk.img"
rm -f "$disk"
truncate -s $((sectors * 512)) "$disk"
sfdisk -q "$disk" <<EOF
label: gpt
start=$part_start, size=$part_sectors, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="blockswarm-boot", attrs="LegacyBIOSBootable"
EOF
dd if="$gptmbr" of="$disk" bs=440 count=1 conv=notrunc status=none
dd if="$part" of="$disk" bs=1M seek=$((part_start / 2048)) conv=notrunc,sparse status=none
echo "$marker" >"$out/marker"
echo "build-boot-fixture: $disk ($mib MiB, kernel $(cat "$(dirname "$vmlinuz")/package" 2>/dev/null || echo "$vmlinuz"))" >&2
