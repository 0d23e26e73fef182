#!/usr/bin/env bash
# Capture (issue 13): imager's warm time to find the used blocks of a 2 GiB ext4 image and
# hash its pieces (all cores) next to `partclone.ext4 -c -t` (partclone's ClonezillaBT mode:
# reads the used blocks and writes torrent.info, the SHA-1 of every piece, no image), the
# same image, same run, both warm (the image is on /dev/shm). Medians of --runs runs.
# Slow (a minute or two): a bench, not CI.
#
# Usage: bench/capture.sh [--build] [--size MiB] [--used MB] [--runs K]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=2048 USED=1500 RUNS=3 BUILD=0
while [ $# -gt 0 ]; do
    case $1 in
    --build) BUILD=1 ;;
    --size) SIZE=$2; shift ;;
    --used) USED=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    *) echo "usage: $0 [--build] [--size MiB] [--used MB] [--runs K]" >&2; exit 2 ;;
    esac
    shift
done
T=${CARGO_TARGET_DIR:-/tmp/target-bench}
[ "$BUILD" = 1 ] && CARGO_TARGET_DIR=$T cargo build --release -p imager
IMAGER=$T/release/imager
[ -x "$IMAGER" ] || { echo "capture: $IMAGER missing (run with --build)" >&2; exit 2; }
command -v partclone.ext4 >/dev/null || { echo "capture: partclone.ext4 missing (apt-get install partclone)" >&2; exit 2; }
W=$(mktemp -d /dev/shm/bs-capture.XXXXXX)
trap 'rm -rf "$W"' EXIT INT TERM
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "capture: a $SIZE MiB ext4 with about $USED MB of files (random data) in $W"
mkdir "$W/files"
for i in $(seq 0 $((USED / 50 - 1))); do head -c 50000000 /dev/urandom >"$W/files/f$i"; done
truncate -s "${SIZE}M" "$W/fs.img"
mkfs.ext4 -q -F -d "$W/files" "$W/fs.img"
rm -rf "$W/files"
cat "$W/fs.img" >/dev/null

# partclone's fixed cost: the same command on an empty 64 MiB ext4 (it takes about 2 s
# whatever the size here), so a reader can tell it from the per-byte cost.
truncate -s 64M "$W/empty.img" && mkfs.ext4 -q -F "$W/empty.img"
t0=$(now)
partclone.ext4 -c -t -s "$W/empty.img" -O "$W/pc0" -q >"$W/pc.log" 2>&1 || { cat "$W/pc.log" >&2; exit 1; }
fixed=$(echo "$(now) - $t0" | bc -l)

ours=() theirs=()
for _ in $(seq "$RUNS"); do
    t0=$(now)
    "$IMAGER" "$W/fs.img" -o "$W/m.torrent" -q
    ours+=("$(echo "$(now) - $t0" | bc -l)")
    rm -rf "$W/pc"
    t0=$(now)
    partclone.ext4 -c -t -s "$W/fs.img" -O "$W/pc" -q >"$W/pc.log" 2>&1 || { cat "$W/pc.log" >&2; exit 1; }
    theirs+=("$(echo "$(now) - $t0" | bc -l)")
    [ -s "$W/pc/torrent.info" ] || { echo "capture: partclone wrote no torrent.info" >&2; exit 1; }
done
used=$("$IMAGER" "$W/fs.img" -o "$W/m2.torrent" 2>&1 | grep -o '[0-9]* used bytes' | awk '{printf "%.0f", $1 / 1e6}')
o=$(printf '%s\n' "${ours[@]}" | median)
p=$(printf '%s\n' "${theirs[@]}" | median)
printf '%-8s %8s %9s %12s %7s %14s %s\n' image used_MB imager_s partclone_s ratio pc_empty_64M_s runs
printf '%-8s %8s %9.2f %12.2f %7.2f %14.2f %s\n' "${SIZE}MiB" "$used" "$o" "$p" "$(echo "$o / $p" | bc -l)" "$fixed" \
    "imager $(printf '%.2f ' "${ours[@]}")partclone $(printf '%.2f ' "${theirs[@]}")"
