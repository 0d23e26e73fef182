#!/usr/bin/env bash
# The data path (issue 13 item 5): one seeder -> one receiver over loopback, everything in RAM
# (source and target on /dev/shm), >= 2 GB of used bytes. Prints the receiver's time next to
# one core's SHA-1 of the same bytes (openssl sha1; sha1sum shown too), measured in the same
# run, and their ratio; medians of --runs runs. Three paths:
#   raw/paged   random data, compression off on both sides, target file whose pages exist
#   raw/sparse  the same into a fresh sparse target (tmpfs allocates pages as it goes)
#   zstd/paged  compressible data (hex text: ~2x with zstd -3), bs_zstd on (the default):
#               the seeder compresses each block once, the receiver decompresses
# "receiver" = from starting the receiver to its 'complete' line (manifest fetch, transfer,
# SHA-1 of every piece, writes). Slow (1-2 minutes per path on 2 cores): a bench, not CI.
#
# Usage: bench/datapath.sh [--build] [--size MB] [--runs K] [--keep-logs DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=2300 RUNS=3 BUILD=0 KEEP=
while [ $# -gt 0 ]; do
    case $1 in
    --build) BUILD=1 ;;
    --size) SIZE_MB=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    --keep-logs) KEEP=$2; shift ;;
    *) echo "usage: $0 [--build] [--size MB] [--runs K] [--keep-logs DIR]" >&2; exit 2 ;;
    esac
    shift
done
T=${CARGO_TARGET_DIR:-/tmp/target-bench}
if [ "$BUILD" = 1 ]; then
    CARGO_TARGET_DIR=$T cargo build --release -p imager -p seeder -p receiver
fi
BIN=$T/release
for b in imager seeder receiver; do
    [ -x "$BIN/$b" ] || { echo "datapath: $BIN/$b missing (run with --build)" >&2; exit 2; }
done
W=$(mktemp -d /dev/shm/bs-datapath.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "$KEEP" ]; then mkdir -p "$KEEP" && cp "$W"/*.log "$KEEP"/ 2>/dev/null || true; fi
    rm -rf "$W"
}
trap cleanup EXIT INT TERM
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

bytes=$((SIZE_MB * 1000 * 1000))
echo "datapath: making $SIZE_MB MB of random and of hex (compressible) data in $W"
head -c "$bytes" /dev/urandom >"$W/random.img"
head -c $((bytes / 2)) /dev/urandom | basenc --base16 -w0 >"$W/hex.img"

# One core's SHA-1 over the bytes (warm: the file is in RAM): openssl's (SHA-NI where the CPU
# has it, as our sha1 crate uses) is the baseline; coreutils' sha1sum (no SHA-NI) is shown too.
sha1_time() {
    local t0
    t0=$(now)
    "${@:2}" "$1" >/dev/null
    echo "$(now) - $t0" | bc -l
}

# One transfer of $1 (image) into a target prepared as $2 (paged|sparse), seeder and
# receiver flags $3; sets RES to the receiver's seconds to 'complete' (not in a subshell: an
# error exits the bench through its cleanup, which stops the seeder and receiver).
PORT=7000
TOKEN=0123456789abcdef0123456789abcdef
transfer() {
    local img=$1 prep=$2 flags=$3 name m tgt t0 deadline
    name=$(basename "$img" .img)
    m=$W/$name.torrent
    [ -f "$m" ] || "$BIN/imager" "$img" -o "$m" --name "$name" -q 2>>"$W/imager.log"
    tgt=$W/target
    rm -f "$tgt"
    # paged: every page allocated (fallocate); sparse: a hole the size of the image.
    if [ "$prep" = paged ]; then fallocate -l "$(stat -c %s "$img")" "$tgt"; else truncate -s "$(stat -c %s "$img")" "$tgt"; fi
    PORT=$((PORT + 10))
    # shellcheck disable=SC2086
    "$BIN/seeder" "$m" --source "$img" --listen "127.0.0.1:$PORT" --http "127.0.0.1:$((PORT + 1))" \
        --token "$TOKEN" --expect 1 -q $flags >"$W/seeder.log" 2>&1 &
    PIDS+=($!)
    local sp=$!
    deadline=$((SECONDS + 60))
    until grep -q "127.0.0.1:$((PORT + 1))" "$W/seeder.log" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || { echo "datapath: seeder did not start" >&2; cat "$W/seeder.log" >&2; exit 1; }
        sleep 0.05
    done
    # Emptied here, not by the receiver's redirection: the wait below must not see the
    # last run's 'complete' line before the new receiver has truncated the file.
    : >"$W/receiver.log"
    t0=$(now)
    # shellcheck disable=SC2086
    "$BIN/receiver" --manifest "http://127.0.0.1:$((PORT + 1))/t/$TOKEN/$name.torrent" --target "$tgt" \
        --listen "127.0.0.2:$((PORT + 2))" --no-resume --seed-after 0 --progress none $flags \
        >"$W/receiver.log" 2>&1 &
    local rp=$!
    PIDS+=($rp)
    deadline=$((SECONDS + 300))
    until grep -q ' complete' "$W/receiver.log"; do
        kill -0 $rp 2>/dev/null || { echo "datapath: receiver exited early" >&2; cat "$W/receiver.log" >&2; exit 1; }
        [ $SECONDS -lt $deadline ] || { echo "datapath: receiver did not complete in 300 s" >&2; exit 1; }
        sleep 0.02
    done
    local t1
    t1=$(now)
    wait $rp || { echo "datapath: receiver failed" >&2; cat "$W/receiver.log" >&2; exit 1; }
    kill $sp 2>/dev/null || true
    wait $sp 2>/dev/null || true
    cmp -s "$img" "$tgt" || { echo "datapath: target differs from source" >&2; exit 1; }
    cat "$W/receiver.log" >>"$W/receivers.log"
    RES=$(echo "$t1 - $t0" | bc -l)
}

command -v openssl >/dev/null || { echo "datapath: openssl missing (apt-get install openssl)" >&2; exit 2; }
printf '%-11s %11s %7s %7s %7s %7s %s\n' path bytes recv_s sha1_s ratio sha1sum runs
for path in raw/paged raw/sparse zstd/paged; do
    case $path in
    raw/*) img=$W/random.img flags=--no-compress ;;
    zstd/*) img=$W/hex.img flags= ;;
    esac
    r=() s=() c=()
    for _ in $(seq "$RUNS"); do
        s+=("$(sha1_time "$img" openssl sha1)")
        c+=("$(sha1_time "$img" sha1sum)")
        transfer "$img" "${path#*/}" "$flags"
        r+=("$RES")
    done
    rm=$(printf '%s\n' "${r[@]}" | median)
    sm=$(printf '%s\n' "${s[@]}" | median)
    cm=$(printf '%s\n' "${c[@]}" | median)
    printf '%-11s %11d %7.2f %7.2f %7.2f %7.2f %s\n' "$path" "$(stat -c %s "$img")" "$rm" "$sm" \
        "$(echo "$rm / $sm" | bc -l)" "$cm" "recv $(printf '%.2f ' "${r[@]}")openssl $(printf '%.2f ' "${s[@]}")"
done
grep -h 'zstd frames' "$W/receivers.log" | tail -1 | sed 's/^/last zstd run: /' || true
