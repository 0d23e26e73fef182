# bench/lan-udpcast.sh - the udpcast baselines of bench/lan.sh (sourced by it; not run alone).
#
# run_udpcast N NAME  plain udpcast: udp-sender --file PACKED (the exact used bytes blockswarm
#                     sends); every udp-receiver's output compared with cmp.
# run_udpzstd N NAME  udpcast with zstd in the pipe, as Clonezilla multicasts:
#                       ext4:  partclone.ext4 -c -s IMG -o - | zstd -3 -T0 | udp-sender ...
#                              udp-receiver ... | zstd -d | partclone.ext4 -r -s - -o TARGET
#                              TARGET then checked as blockswarm's: imager TARGET --name NAME
#                              must give the source manifest's infohash
#                       raw (--image random; no file system, so no partclone):
#                              zstd -3 -T0 -c IMG | udp-sender ...
#                              udp-receiver ... | zstd -d >TARGET, then cmp IMG TARGET
# Both measure the time from starting the receivers to the last receiver's exit, and each
# receiver's CPU: user+sys seconds of the receiving process (for the zstd pipe: udp-receiver +
# zstd -d + partclone -r together), in $RUN/rI.cpu (bash `times` of a wrapper shell).

ZSTD_LEVEL=3

# cpu_avg RUN N -> average user+sys seconds over $RUN/r1..N.cpu ("-" if none)
cpu_avg() {
    python3 - "$1" "$2" <<'PY'
import re, sys
run, n = sys.argv[1], int(sys.argv[2])
vals = []
for i in range(1, n + 1):
    try:
        lines = open("%s/r%d.cpu" % (run, i)).read().split("\n")
    except OSError:
        continue
    if len(lines) > 1:
        vals.append(sum(int(m) * 60 + float(s) for m, s in re.findall(r"(\d+)m([\d.]+)s", lines[1])))
print("%.1f" % (sum(vals) / len(vals)) if vals else "-")
PY
}

# the compressed stream's size, once per image (not timed): Z bytes and S/Z
zstd_size() {
    [ -n "${ZSTD_BYTES:-}" ] && return 0
    if [ "$IMG_FS" = raw ]; then
        ZSTD_BYTES=$(zstd -"$ZSTD_LEVEL" -T0 -q -c "$IMG" | wc -c)
    else
        ZSTD_BYTES=$(partclone.ext4 -c -s "$IMG" -o - -q -L "$LOGS/partclone-size.log" 2>/dev/null | zstd -"$ZSTD_LEVEL" -T0 -q | wc -c)
    fi
}

# udp_wait_and_time N SPID: waits for the receivers (pids in UDP_PIDS) and the sender;
# sets UDP_LAST (last receiver exit, s from T0)
udp_wait() {
    local n=$1 spid=$2 k p
    for p in "${UDP_PIDS[@]}"; do wait "$p" 2>/dev/null; done
    for ((k = 0; k < 100; k++)); do kill -0 "$spid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$spid" 2>/dev/null && { kill_tree "$spid"; echo "udp-sender still running: killed" >>"$RUN/problems.txt"; }
    wait "$spid" 2>/dev/null
}

run_udpcast() {
    local n=$1 i spid rtmo last=0 ok=1 good=0 rc end
    RUN_NAME=$2
    RUN=$LOGS/$2
    mkdir -p "$RUN"
    rtmo=$(calc "max(60, int($TMO_FACTOR * $IDEAL))")
    local br; br=$(calc "int($RATE * $UDP_BITRATE_PCT / 100)")
    UDP_SETTINGS="udp-sender --max-bitrate ${br}m --full-duplex --min-receivers N --nokbd (default multicast, blocksize, no FEC)"
    cpu_baseline
    cpu_start
    (
        ip netns exec "${P}h0" timeout -k 5 $((rtmo + 30)) udp-sender --file "$PACKED" --min-receivers "$n" \
            --nokbd --interface eth0 --portbase 9000 --max-bitrate "${br}m" --full-duplex \
            >"$RUN/sender.log" 2>&1 </dev/null
        times >"$RUN/sender.times"
    ) 2>>"$RUN/launcher.err" &
    spid=$!; BG+=($spid)
    sleep 0.5
    T0=$(now)
    UDP_PIDS=()
    for ((i = 1; i <= n; i++)); do
        (
            ip netns exec "${P}h$i" timeout -k 5 "$rtmo" bash -c 'f=$1; shift; "$@"; rc=$?; times >"$f"; exit $rc' _ \
                "$RUN/r$i.cpu" udp-receiver --file "$TMP/u$i" --nokbd \
                --interface eth0 --portbase 9000 >"$RUN/r$i.log" 2>&1 </dev/null
            echo "$? $(now)" >"$RUN/r$i.rc"
            times >"$RUN/r$i.times"
        ) 2>>"$RUN/launcher.err" &
        BG+=($!); UDP_PIDS+=($!)
    done
    udp_wait "$n" "$spid"
    cpu_stop
    for ((i = 1; i <= n; i++)); do
        read -r rc end <"$RUN/r$i.rc"
        if [ "$rc" = 0 ] && cmp -s "$PACKED" "$TMP/u$i"; then
            good=$((good + 1)); last=$(calc "max($last, $(fsub "$end" "$T0"))")
        else
            ok=0; echo "r$i rc=$rc (124/137 = timeout) or data differs" >>"$RUN/problems.txt"
        fi
        rm -f "$TMP/u$i"
    done
    UDP_TIME=$last UDP_OK=$ok UDP_GOOD=$good UDP_RXCPU=$(cpu_avg "$RUN" "$n")
    [ $ok = 1 ] || UDP_TIME="STUCK/FAIL"
}

run_udpzstd() {
    local n=$1 i spid rtmo last=0 ok=1 good=0 rc end v
    RUN_NAME=$2
    RUN=$LOGS/$2
    mkdir -p "$RUN"
    rtmo=$(calc "max(60, int($TMO_FACTOR * $IDEAL))")
    local br; br=$(calc "int($RATE * $UDP_BITRATE_PCT / 100)")
    local send recv
    if [ "$IMG_FS" = raw ]; then
        send='zstd -'$ZSTD_LEVEL' -T0 -q -c "$1"'
        recv='zstd -d -q >"$3"'
        ZST_SETTINGS="zstd -$ZSTD_LEVEL -T0 -c IMG | udp-sender (as plain udpcast); udp-receiver | zstd -d >TARGET; cmp"
    else
        send='partclone.ext4 -c -s "$1" -o - -q -L "$2" | zstd -'$ZSTD_LEVEL' -T0 -q'
        recv='zstd -d -q | partclone.ext4 -r -s - -O "$3" -q -L "$2"'
        ZST_SETTINGS="partclone.ext4 -c | zstd -$ZSTD_LEVEL -T0 | udp-sender (as plain udpcast); udp-receiver | zstd -d | partclone.ext4 -r; imager infohash"
    fi
    cpu_baseline
    cpu_start
    (
        # shellcheck disable=SC2016  # $1.. are the inner shell's
        ip netns exec "${P}h0" timeout -k 5 $((rtmo + 30)) bash -c 'set -o pipefail; '"$send"' |
            udp-sender --min-receivers "$4" --nokbd --interface eth0 --portbase 9000 \
                --max-bitrate "$5" --full-duplex' _ "$IMG" "$RUN/sender.partclone.log" - "$n" "${br}m" \
            >"$RUN/sender.log" 2>&1 </dev/null
        times >"$RUN/sender.times"
    ) 2>>"$RUN/launcher.err" &
    spid=$!; BG+=($spid)
    sleep 0.5
    T0=$(now)
    UDP_PIDS=()
    for ((i = 1; i <= n; i++)); do
        rm -f "$TMP/z$i"
        [ "$IMG_FS" = raw ] || truncate -s "$DEVSIZE" "$TMP/z$i"
        (
            ip netns exec "${P}h$i" timeout -k 5 "$rtmo" bash -c 'set -o pipefail
                udp-receiver --nokbd --interface eth0 --portbase 9000 2>"$2.udp" | '"$recv"'
                rc=$?; times >"$4"; exit $rc' _ - "$RUN/r$i.partclone.log" "$TMP/z$i" "$RUN/r$i.cpu" \
                >"$RUN/r$i.log" 2>&1 </dev/null
            echo "$? $(now)" >"$RUN/r$i.rc"
            times >"$RUN/r$i.times"
        ) 2>>"$RUN/launcher.err" &
        BG+=($!); UDP_PIDS+=($!)
    done
    udp_wait "$n" "$spid"
    cpu_stop
    for ((i = 1; i <= n; i++)); do
        read -r rc end <"$RUN/r$i.rc"
        if [ "$IMG_FS" = raw ]; then
            cmp -s "$IMG" "$TMP/z$i" && v=ok || v=BAD
        else
            v=$(verify_path "$TMP/z$i")
        fi
        if [ "$rc" = 0 ] && [ "$v" = ok ]; then
            good=$((good + 1)); last=$(calc "max($last, $(fsub "$end" "$T0"))")
        else
            ok=0; echo "r$i rc=$rc (124/137 = timeout), target $v" >>"$RUN/problems.txt"
        fi
        rm -f "$TMP/z$i"
    done
    ZST_TIME=$last ZST_OK=$ok ZST_GOOD=$good ZST_RXCPU=$(cpu_avg "$RUN" "$n")
    [ $ok = 1 ] || ZST_TIME="STUCK/FAIL"
}
