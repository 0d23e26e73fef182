#!/usr/bin/env bash
# Builds the netboot system a bare machine boots into to become a clone: Debian's kernel and a
# small initramfs holding busybox-static, the static receiver and the kernel modules for common
# disks and NICs, loaded by what the hardware shows (the modalias of every device).
#
# Usage: build-netboot.sh OUTDIR      -> OUTDIR/vmlinuz, OUTDIR/initrd.img
# Environment:
#   BLOCKSWARM_CACHE     where the kernel package is kept between runs (default /var/cache/blockswarm)
#   BLOCKSWARM_RECEIVER  the static receiver (default target/receiver-static, built by
#                        scripts/build-static-receiver.sh when missing)
# Needs (scripts/install-deps.sh): busybox-static, cpio, kmod (depmod), apt-get and dpkg-deb
# (the kernel package is downloaded once, never installed on the host).
#
# The initramfs's /init reads the kernel command line:
#   blockswarm.manifest=URL         required
#   blockswarm.target=auto|/dev/X   default auto
#   blockswarm.done=reboot|poweroff|shell   default reboot
#   blockswarm.KEY=VALUE            any other receiver setting (receiver/src/settings.rs keys,
#                                   e.g. blockswarm.verify=1, blockswarm.retry_for=300),
#                                   written upper-cased to /etc/receiver.conf (--config)
# On failure it prints the error and runs a shell on the console: it never reboots into a
# half-written disk.
set -euo pipefail

die() { echo "build-netboot: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: $0 OUTDIR"
out=$1
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${BLOCKSWARM_CACHE:-/var/cache/blockswarm}
receiver=${BLOCKSWARM_RECEIVER:-$root/target/receiver-static}
busybox=/bin/busybox
export PATH="$PATH:/usr/sbin:/sbin"

# The modules wanted by name (their dependencies come along); /init loads the ones the
# hardware asks for through modules.alias.
MODULES="virtio_pci virtio_blk virtio_net virtio_scsi ahci ata_piix ata_generic sd_mod nvme
  e1000 e1000e igb igc r8169 tg3 bnx2 ixgbe"

for t in cpio gzip depmod dpkg-deb apt-get apt-cache flock; do
  command -v "$t" >/dev/null || die "$t not found: run scripts/install-deps.sh"
done
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" ||
  die "busybox-static is not installed"
if [ ! -x "$receiver" ]; then
  [ -z "${BLOCKSWARM_RECEIVER:-}" ] || die "$receiver not found"
  bash "$root/scripts/build-static-receiver.sh" >&2
fi

# --- the kernel package: vmlinuz and /lib/modules, unpacked once into the cache ---
read -r pkg ver < <(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null |
  awk '$1 == "Depends:" { for (i = 2; i <= NF; i++) if ($i ~ /^linux-image-/) {
    v = $(i + 2); sub(/\)[,]?$/, "", v); print $i, v; exit } }') || true
if [ -n "${pkg:-}" ] && [ -n "${ver:-}" ]; then
  kdir="$cache/netboot/${pkg}_${ver//:/%3a}"
else
  kdir=$(ls -1dt "$cache"/netboot/*/ 2>/dev/null | head -n1) || true
  [ -n "$kdir" ] && [ -f "$kdir/vmlinuz" ] ||
    die "cannot resolve linux-image-amd64 (run apt-get update) and no kernel cached in $cache/netboot"
  kdir=${kdir%/}
fi
if [ ! -f "$kdir/vmlinuz" ]; then
  mkdir -p "$cache/netboot"
  exec 9>"$cache/netboot/.lock"
  flock 9
  if [ ! -f "$kdir/vmlinuz" ]; then
    echo "build-netboot: downloading $pkg=$ver into $cache/netboot" >&2
    tmp=$(mktemp -d "$cache/netboot/.dl.XXXXXX")
    (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver" >&2) ||
      { rm -rf "$tmp"; die "apt-get download $pkg=$ver failed"; }
    mkdir -p "$tmp/k"
    dpkg-deb --fsys-tarfile "$tmp"/*.deb | tar -x -C "$tmp/k" ./boot ./lib/modules
    cp "$tmp"/k/boot/vmlinuz-* "$tmp/k/vmlinuz"
    echo "$pkg $ver" >"$tmp/k/package"
    rm -rf "$kdir" "$tmp"/*.deb
    mv "$tmp/k" "$kdir"
    rm -rf "$tmp"
  fi
  flock -u 9
  exec 9>&-
fi
kver=$(ls -1 "$kdir/lib/modules" | head -n1)
[ -n "$kver" ] || die "no modules in $kdir"

work=$(mktemp -d "${TMPDIR:-/tmp}/netboot.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- module closure: depmod the package's tree, follow modules.dep from the wanted names ---
mods="$kdir/lib/modules/$kver"
[ -f "$mods/modules.dep" ] || depmod -b "$kdir" "$kver"
declare -A path_of=()
while IFS=: read -r m _; do
  n=${m##*/}; n=${n%%.ko*}; path_of[${n//-/_}]=$m
done <"$mods/modules.dep"
declare -A want=()
queue=()
for n in $MODULES; do
  [ -n "${path_of[$n]:-}" ] && queue+=("$n") || echo "build-netboot: no module $n (built in?)" >&2
done
while [ ${#queue[@]} -gt 0 ]; do
  n=${queue[0]}; queue=("${queue[@]:1}")
  [ -n "${want[$n]:-}" ] && continue
  want[$n]=1
  for d in $(awk -F': *' -v m="${path_of[$n]}" '$1 == m { print $2; exit }' "$mods/modules.dep"); do
    dn=${d##*/}; dn=${dn%%.ko*}; queue+=("${dn//-/_}")
  done
done

stage="$work/root"
mkdir -p "$stage"/{bin,dev,proc,sys,etc,tmp,run,usr/share/udhcpc,lib/modules/"$kver"}
for n in "${!want[@]}"; do
  mkdir -p "$stage/lib/modules/$kver/$(dirname "${path_of[$n]}")"
  cp "$mods/${path_of[$n]}" "$stage/lib/modules/$kver/${path_of[$n]}"
done
cp "$mods"/modules.order "$mods"/modules.builtin* "$stage/lib/modules/$kver/" 2>/dev/null || true
depmod -b "$stage" "$kver"

cp "$busybox" "$stage/bin/busybox"
for a in sh mount modprobe ip udhcpc cat sed grep awk sleep poweroff reboot setsid cttyhack \
  ls echo mkdir tr cut head ifconfig route uname dmesg ps kill free wc; do
  ln -sf busybox "$stage/bin/$a"
done
cp "$receiver" "$stage/bin/receiver"
mknod -m 600 "$stage/dev/console" c 5 1
mknod -m 666 "$stage/dev/null" c 1 3
install -m 755 "$root/scripts/netboot/udhcpc.script" "$stage/usr/share/udhcpc/default.script"
install -m 755 "$root/scripts/netboot/init" "$stage/init"

(cd "$stage" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -6 >"$work/initrd.img"
mkdir -p "$out"
cp "$kdir/vmlinuz" "$out/vmlinuz"
mv "$work/initrd.img" "$out/initrd.img"
size=$(stat -c %s "$out/initrd.img")
[ "$size" -lt $((40 << 20)) ] || die "initrd.img is $size bytes, over 40 MiB"
echo "build-netboot: $out/vmlinuz ($(cat "$kdir/package")), $out/initrd.img ($size bytes, ${#want[@]} modules)" >&2
