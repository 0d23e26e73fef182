#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
# Make small seed corpora for the fuzz targets from real mkfs output
# (needs dosfstools, exfatprogs and mtools). Usage: ./make_seeds.sh
set -eu
cd "$(dirname "$0")"
mkdir -p corpus/fat corpus/exfat
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf 'hello\n' > "$tmp/a.txt"
head -c 3000 /dev/zero | tr '\0' 'x' > "$tmp/b.txt"
for kib in 64 128 256; do
    rm -f "$tmp/f.img"
    mkfs.fat -C "$tmp/f.img" "$kib" >/dev/null
    MTOOLS_SKIP_CHECK=1 mcopy -i "$tmp/f.img" "$tmp/a.txt" "$tmp/b.txt" ::/ 2>/dev/null || true
    cp "$tmp/f.img" "corpus/fat/fat12-${kib}k"
done
rm -f "$tmp/f.img"
mkfs.fat -F 16 -C "$tmp/f.img" 256 >/dev/null 2>&1 && cp "$tmp/f.img" corpus/fat/fat16-256k || true
rm -f "$tmp/f.img"
mkfs.fat -F 32 -s 1 -C "$tmp/f.img" 256 >/dev/null 2>&1 && cp "$tmp/f.img" corpus/fat/fat32-256k || true
for kib in 256 512; do
    rm -f "$tmp/e.img"
    truncate -s "${kib}K" "$tmp/e.img"
    mkfs.exfat -b 4K -c 512 "$tmp/e.img" >/dev/null
    cp "$tmp/e.img" "corpus/exfat/exfat-${kib}k"
done
ls -l corpus/fat corpus/exfat
