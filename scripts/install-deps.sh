#!/usr/bin/env bash
# Installs the Debian packages blockswarm's build, demo and tests need (only missing ones).
# Debian bookworm, as root (or with sudo).
set -euo pipefail
pkgs=(
  build-essential pkg-config          # cc crate, pkg-config probes
  libext2fs-dev e2fsprogs             # partclone-sys: libext2fs; mkfs.ext*, e2fsck, debugfs
  ntfs-3g-dev ntfs-3g                 # partclone-sys feature ntfs; mkntfs, ntfsfix, FUSE mount
  partclone                           # the oracle for used-block maps, and the -D backend
  dosfstools mtools                   # FAT: mkfs.fat, fsck.fat, mcopy
  exfatprogs exfat-fuse               # exFAT (mkfs.exfat cannot populate: tests fill it through exfat-fuse)
  xfsprogs btrfs-progs f2fs-tools     # filesystems handled through partclone -D (f2fs: detection test)
  # No HFS+ mkfs: hfsprogs is not in bookworm (apt-cache policy hfsprogs: no candidate), so
  # fsmap/tests/detect.rs checks HFS+ volume headers laid out by hand.
  transmission-cli aria2 python3-libtorrent opentracker  # BitTorrent software no one here wrote
  util-linux iproute2 file curl       # losetup, mount; ip/tc for the LAN bench; file; curl
  gdisk fdisk                         # sgdisk, sfdisk: whole-disk tables (fixtures, checks)
  extlinux syslinux-common            # boot test fixture: extlinux on ext4, gptmbr.bin
  busybox-static cpio                 # boot test fixture: the initramfs (static busybox, newc cpio)
  kmod                                # build-netboot.sh: depmod (modules.dep, modules.alias of the initramfs)
  ipxe                                # netboot: undionly.kpxe, chainloaded by PXE ROMs (dnsmasq's TFTP)
  dnsmasq-base                        # netboot: proxy DHCP + TFTP (seeder --print-dnsmasq-conf); no service
  fuse3                               # e2e integrity.rs: fusermount3 for the eio_fs helper (a file with an EIO block)
  udpcast zstd debootstrap jq procps  # bench/lan.sh (not CI): udpcast(+zstd) baselines, --image debian
  chromium                            # e2e dashboard.rs: headless Chromium renders the seeder's dashboard
)
# The boot test (e2e/tests/boot.rs) runs QEMU (TCG) with SeaBIOS; installed without Recommends
# (no GUI). bookworm's QEMU 7.2 cannot sit beside a qemu-utils from bookworm-backports (10.x
# Breaks qemu-system-common << 8): apt would remove qemu-utils. There the whole QEMU comes from
# bookworm-backports, through a temporary sources list (the system's apt sources stay as they are).
qemu_pkgs=(qemu-system-x86 seabios)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
qemu_missing=()
for p in "${qemu_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || qemu_missing+=("$p")
done
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ${#missing[@]} -gt 0 ] || [ ${#qemu_missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ${#qemu_missing[@]} -gt 0 ]; then
  if dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null | grep -q '~bpo12'; then
    echo "installing from bookworm-backports (beside its qemu-utils): ${qemu_pkgs[*]}" >&2
    # The Debian mirror this system already uses (deb822 or one-line sources).
    mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$mirror" ] || { echo "no Debian mirror found in the apt sources" >&2; exit 1; }
    bpo=$(mktemp -d)
    mkdir -p "$bpo/lists/partial" "$bpo/archives/partial"
    for suite in bookworm bookworm-updates bookworm-backports; do
      echo "deb $mirror $suite main"
    done >"$bpo/sources.list"
    apt_bpo=(-o "Dir::Etc::sourcelist=$bpo/sources.list" -o Dir::Etc::sourceparts=-
      -o "Dir::State::lists=$bpo/lists" -o "Dir::Cache::archives=$bpo/archives")
    $SUDO apt-get "${apt_bpo[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get "${apt_bpo[@]}" install -y -qq --no-remove \
      --no-install-recommends qemu-system-x86/bookworm-backports \
      qemu-system-common/bookworm-backports qemu-system-data/bookworm-backports \
      seabios/bookworm-backports >/dev/null
    $SUDO rm -rf "$bpo"
  else
    echo "installing: ${qemu_missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-remove \
      --no-install-recommends "${qemu_missing[@]}" >/dev/null
  fi
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
