#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
# Fuzzes blockswarm's hostile-input parsers with cargo-fuzz (libFuzzer), each target for a
# bounded time:
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]     # default 60 s each, every target
#
# Targets (fuzz/fuzz_targets/): manifest_decode, wire_frame, tracker_announce, tracker_reply,
# receiver_config, http_request. Corpora start from fuzz/seeds/TARGET (checked in) plus, for
# manifest_decode, manifests the imager makes now from a small ext4 image, a FAT image and a
# GPT disk image. Corpora (fuzz/corpus/) and crash inputs (fuzz/artifacts/TARGET/) are kept
# between runs, outside git. Runs each target with -rss_limit_mb=512 -malloc_limit_mb=256,
# prints per target runs, exec/s, coverage (cov/ft) and crashes; exits 1 if any target
# crashed (libFuzzer stops a target at its first crash; reproduce with
# `fuzz/target/*/release/TARGET fuzz/artifacts/TARGET/crash-...`). Not part of
# scripts/test.sh: too slow for CI. Needs the nightly toolchain; installs cargo-fuzz.
set -euo pipefail

secs=${1:-60}
shift || true
all=(manifest_decode wire_frame tracker_announce tracker_reply receiver_config http_request)
if [ $# -gt 0 ]; then targets=("$@"); else targets=("${all[@]}"); fi
case $secs in '' | *[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;; esac

root=$(cd "$(dirname "$0")/.." && pwd)
fuzz=$root/fuzz
cd "$fuzz"

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
echo "== building the fuzz targets (cargo +nightly fuzz build -O)"
nice cargo +nightly fuzz build -O >/dev/null
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin=$fuzz/target/$triple/release

# Real manifests from the imager: an ext4 image (two piece sizes), a FAT image and, as root
# (the imager maps partitions through loop devices), a GPT disk with both.
seed_manifests() {
    local out=$fuzz/corpus/manifest_decode work
    command -v mkfs.ext4 >/dev/null || { echo "   (no mkfs.ext4: checked-in manifests only)"; return 0; }
    (cd "$root" && nice cargo build -q -p imager) || { echo "   (imager did not build)"; return 0; }
    local imager=$root/target/debug/imager
    work=$(mktemp -d)
    mkdir "$work/files"
    seq 1 20000 >"$work/files/numbers"
    head -c 300000 /dev/urandom >"$work/files/random"
    truncate -s 8M "$work/ext4.img"
    mkfs.ext4 -q -F -d "$work/files" "$work/ext4.img"
    "$imager" -q --tracker http://127.0.0.1:6880/announce "$work/ext4.img" >"$out/real-ext4.torrent"
    "$imager" -q --piece-size 16K "$work/ext4.img" >"$out/real-ext4-16k.torrent"
    if command -v mkfs.vfat >/dev/null; then
        mkfs.vfat -C "$work/fat.img" 4096 >/dev/null
        "$imager" -q "$work/fat.img" >"$out/real-fat.torrent"
    fi
    if [ "$(id -u)" = 0 ] && command -v sgdisk >/dev/null && command -v mkfs.vfat >/dev/null; then
        truncate -s 24M "$work/disk.img"
        sgdisk -n1:2048:+6M -t1:ef00 -c1:EFI -n2:0:+12M -t2:8300 -c2:root "$work/disk.img" >/dev/null
        mkfs.vfat --offset 2048 "$work/disk.img" 6144 >/dev/null 2>&1
        mkfs.ext4 -q -F -E offset=$((14336 * 512)) -d "$work/files" "$work/disk.img" 12M 2>/dev/null
        "$imager" -q --piece-size 16K "$work/disk.img" >"$out/real-gpt-disk.torrent"
    fi
    rm -rf "$work"
    echo "   $(ls "$out" | grep -c '^real-') manifests from the imager"
}

for t in "${targets[@]}"; do
    [ -x "$bin/$t" ] || { echo "unknown target $t (known: ${all[*]})" >&2; exit 2; }
    mkdir -p "corpus/$t" "artifacts/$t"
    cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
    if [ "$t" = manifest_decode ]; then
        echo "== seeding manifest_decode from the imager"
        seed_manifests
    fi
done

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
failed=0
rows=()
for t in "${targets[@]}"; do
    echo "== $t: $secs s"
    before=$(ls "artifacts/$t" | wc -l)
    set +e
    nice "$bin/$t" -max_total_time="$secs" -rss_limit_mb=512 -malloc_limit_mb=256 \
        -print_final_stats=1 -artifact_prefix="artifacts/$t/" "corpus/$t" >"$logs/$t" 2>&1
    rc=$?
    set -e
    last=$(grep -E '^#[0-9]+' "$logs/$t" | tail -1)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t")
    eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logs/$t")
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    crashes=$(($(ls "artifacts/$t" | wc -l) - before))
    rows+=("$(printf '%-17s %10s %8s %6s %7s %8s' "$t" "${runs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" "$crashes")")
    if [ "$rc" != 0 ] || [ "$crashes" != 0 ]; then
        failed=1
        echo "   CRASH (exit $rc):"
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$logs/$t" | head -5 | sed 's/^/   /'
    fi
done
echo
printf '%-17s %10s %8s %6s %7s %8s\n' target runs exec/s cov ft crashes
printf '%s\n' "${rows[@]}"
exit $failed
