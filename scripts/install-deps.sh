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
  exfatprogs exfat-fuse               # exFAT
  xfsprogs btrfs-progs f2fs-tools     # filesystems handled through partclone -D
  transmission-cli aria2 python3-libtorrent opentracker  # BitTorrent software no one here wrote
  util-linux iproute2 file curl       # losetup, mount; ip/tc for the LAN bench; file; curl
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
