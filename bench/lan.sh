#!/usr/bin/env bash
# bench/lan.sh - simulated-LAN benchmark: blockswarm (seeder + N receivers) vs udpcast.
#
# One command, as root, from the workspace root (builds the release binaries first):
#
#   bench/lan.sh --build --keep-logs /tmp/bench-logs
#
# That runs N = 1 2 4 8 16 receivers over 50 Mbit/s links with a ~205 MB-used ext4 image,
# and udpcast on the same LAN for each N. Add scenarios (issue 5 item 3) with
#   --slow-one        one receiver's link 10x slower
#   --late-join SECS  one receiver joins SECS late (e.g. 30)
#   --kill-one        one receiver SIGKILLed half-way, then restarted (resume scan on)
#   --scenario-n N    receivers in each scenario (default 8)
#   --lossy           every link lossy: netem 2% loss, 20 ms +- 10 ms (normal) delay on
#                     every veth end (blockswarm and udpcast alike)
# and the default counts can be changed with --counts "1 2 4 8". See bench/README.md.
#
# Topology: a "switch" network namespace with a Linux bridge; one namespace per host (h0 =
# seeder 10.77.0.1, hI = receiver I at 10.77.0.(I+1); --subnet), each joined to the bridge by
# a veth pair. Both ends of every veth are shaped with htb to R (host egress = host upload, the
# bridge-side egress = host download). All traffic stays in namespaces created here (named
# PREFIX<pid>-*, --prefix); the subnet exists only inside them. --image debian|random|synthetic
# picks the source; baselines: plain udpcast and udpcast with zstd in the pipe (Clonezilla).
# Everything (namespaces, processes, temp files) is removed on exit, including Ctrl-C. Every
# wait is bounded.
set -uo pipefail

# ---------------------------------------------------------------------------- settings
RATE=50             # Mbit/s per link (tc "mbit" = 10^6 bit/s), both directions; 50, not the
                    # issue's 100: at N = 16 100 Mbit/s saturates 2 cores (bench/README.md)
SIZE=205            # used data wanted in the image, MB (10^6 bytes); the real S is measured
COUNTS="1 2 4 8 16"
PIECE=auto
UDPCAST=1
SLOW_ONE=0
LATE_JOIN=0
KILL_ONE=0
SCEN_N=8
SKIP_MAIN=0
KEEP_LOGS=""
BIN=${CARGO_TARGET_DIR:-/tmp/target-bench}/release
BUILD=0
TMPBASE=/dev/shm
TMO_FACTOR=10       # a receiver is killed (STUCK) after TMO_FACTOR x its ideal time
UDP_BITRATE_PCT=95  # udp-sender --max-bitrate as % of RATE
VERB=-v             # seeder/receiver log level (--debug-logs: -vv)
LINK_STATS=0        # --link-stats: sample link counters every 0.5 s into links.txt
LOSSY=0             # --lossy: netem loss/delay under the htb class of every veth end
NETEM="loss 2% delay 20ms 10ms distribution normal"
LOSS_HOW=""         # netem, or drop-class where the kernel has no netem (loss, no delay)
PREFIX=bsl          # network namespaces are PREFIX<pid>-sw, PREFIX<pid>-h0 .. (--prefix)
SUBNET=10.77.0.0/24 # the LAN's subnet (--subnet); host i (0 = seeder) gets the (i+1)th address
IDLE_WAIT=90        # seconds to wait for an idle machine before each run (--idle-wait)
PLAIN_TOO=0         # --plain-too: also run blockswarm with --no-compress (today's engine without bs_zstd)
SW_FLAGS=()         # extra flags of the seeder and every receiver (--no-compress for the plain run)
BASE_FLAGS=()       # --no-compress: every blockswarm run without bs_zstd (what bench/sim.sh models)
UDPZSTD=1           # --no-udpzstd: skip the udpcast + zstd (Clonezilla) baseline
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lan-image.sh
. "$HERE/lan-image.sh"
# shellcheck source=bench/lan-udpcast.sh
. "$HERE/lan-udpcast.sh"

usage() {
    sed -n '2,/^set -uo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
    cat <<EOF
Options:
  --rate MBIT        link rate in Mbit/s (default $RATE)
  --size MB          used data in the demo image, MB (default $SIZE)
  --counts "LIST"    receiver counts (default "$COUNTS")
  --piece-size SZ    imager piece size (default $PIECE)
  --image KIND       source image: synthetic (default: ext4, random-data files, half
                     free), random (--size MB of random bytes, no file system) or debian
                     (debootstrap --variant=minbase $DEBIAN_SUITE + packages on ext4,
                     built once, cached in $IMAGE_CACHE)
  --prefix NAME      network namespace prefix (default $PREFIX: NAME<pid>-sw, NAME<pid>-hI)
  --subnet CIDR      the LAN's IPv4 subnet (default $SUBNET; hosts get its first addresses)
  --no-udpcast       skip both udpcast baselines
  --no-udpzstd       skip the udpcast + zstd baseline (partclone | zstd -3 -T0 | udp-sender)
  --no-compress      every blockswarm run with --no-compress (plain BitTorrent, as
                     bench/sim.sh models it)
  --plain-too        per N, also run blockswarm with --no-compress (plain BitTorrent
                     blocks, no bs_zstd), in the same run: the gain of compression
  --idle-wait SECS   before each run wait up to SECS for the machine to be idle (default $IDLE_WAIT)
  --slow-one | --late-join SECS | --kill-one | --scenario-n N   scenarios (above)
  --scenarios-only   run only the scenarios, not the N table
  --keep-logs DIR    copy all logs/JSON there before cleaning up (default: delete)
  --bin DIR          where imager/seeder/receiver are (default $BIN)
  --build            cargo build --release -p imager -p seeder -p receiver first
  --tmp DIR          temp base, tmpfs recommended (default $TMPBASE)
  --debug-logs       run seeder and receivers with -vv instead of -v
  --lossy            netem $NETEM as the child of the htb class on
                     every veth end (both directions of every link: one way host->host
                     crosses two ends, so ~40 ms +- 14 ms one way, ~4% loss end to end)
  --link-stats       per run, links.txt: Mbit/s every 0.5 s on the seeder's uplink and
                     receiver 1's downlink and uplink (where the time goes; use --keep-logs)
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --rate) RATE=$2; shift ;;
        --size) SIZE=$2; shift ;;
        --counts) COUNTS=$2; shift ;;
        --piece-size) PIECE=$2; shift ;;
        --no-udpcast) UDPCAST=0 ;;
        --no-udpzstd) UDPZSTD=0 ;;
        --plain-too) PLAIN_TOO=1 ;;
        --no-compress) BASE_FLAGS=(--no-compress) ;;
        --image) IMAGE_KIND=$2; shift ;;
        --prefix) PREFIX=$2; shift ;;
        --subnet) SUBNET=$2; shift ;;
        --idle-wait) IDLE_WAIT=$2; shift ;;
        --slow-one) SLOW_ONE=1 ;;
        --late-join) LATE_JOIN=$2; shift ;;
        --kill-one) KILL_ONE=1 ;;
        --scenario-n) SCEN_N=$2; shift ;;
        --scenarios-only) SKIP_MAIN=1 ;;
        --keep-logs) KEEP_LOGS=$2; shift ;;
        --bin) BIN=$2; shift ;;
        --build) BUILD=1 ;;
        --tmp) TMPBASE=$2; shift ;;
        --debug-logs) VERB=-vv ;;
        --link-stats) LINK_STATS=1 ;;
        --lossy) LOSSY=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "lan.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

case $RATE in ''|*[!0-9]*) echo "lan.sh: --rate takes whole Mbit/s" >&2; exit 2 ;; esac
case $SIZE in ''|*[!0-9]*) echo "lan.sh: --size takes whole MB" >&2; exit 2 ;; esac
case $IDLE_WAIT in ''|*[!0-9]*) echo "lan.sh: --idle-wait takes whole seconds" >&2; exit 2 ;; esac
case $IMAGE_KIND in synthetic|random|debian) ;; *) echo "lan.sh: --image synthetic|random|debian" >&2; exit 2 ;; esac
case $PREFIX in ''|*[!a-zA-Z0-9]*) echo "lan.sh: --prefix takes letters and digits" >&2; exit 2 ;; esac
[ ${#PREFIX} -le 6 ] || { echo "lan.sh: --prefix at most 6 characters" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "lan.sh: needs root (network namespaces, tc)" >&2; exit 2; }
for t in ip tc mkfs.ext4 timeout ps jq python3; do
    command -v $t >/dev/null || { echo "lan.sh: missing $t (apt-get install -y iproute2 e2fsprogs jq procps)" >&2; exit 2; }
done
if [ $UDPCAST = 1 ] && ! command -v udp-sender >/dev/null; then
    echo "lan.sh: udp-sender missing: apt-get install -y udpcast (or pass --no-udpcast)" >&2; exit 2
fi
[ $UDPCAST = 1 ] || UDPZSTD=0
if [ $UDPZSTD = 1 ]; then
    for t in zstd partclone.ext4; do
        command -v $t >/dev/null || { echo "lan.sh: missing $t (apt-get install -y zstd partclone, or --no-udpzstd)" >&2; exit 2; }
    done
fi
if [ $BUILD = 1 ]; then
    (cd "$HERE/.." && CARGO_TARGET_DIR=$(dirname "$BIN") cargo build --release -q -p imager -p seeder -p receiver) \
        || { echo "lan.sh: build failed" >&2; exit 1; }
fi
for b in imager seeder receiver; do
    [ -x "$BIN/$b" ] || { echo "lan.sh: $BIN/$b not built (pass --build)" >&2; exit 2; }
done

# ---------------------------------------------------------------------------- state
P="$PREFIX$$-"                              # namespace prefix, unique per run
TMP=$(mktemp -d "$TMPBASE/blockswarm-bench.XXXXXX")
LOGS=$TMP/logs
mkdir -p "$LOGS"
NHOSTS=0                                    # receivers' namespaces created
BG=()                                       # every background pid we started
SAMPLER=""

tree_pids() {   # pid: the pid and all its descendants (parents first)
    local pid=$1 c depth=${2:-0}
    [ "$depth" -gt 8 ] && return
    echo "$pid"
    for c in $(ps -o pid= --ppid "$pid" 2>/dev/null); do tree_pids "$c" $((depth + 1)); done
}
kill_tree() {   # pid: SIGKILL a process and its descendants, by pid only
    local pids p k
    pids=$(tree_pids "$1")
    for p in $pids; do kill -STOP "$p" 2>/dev/null; done   # no respawn / reaction meanwhile
    for p in $pids; do kill -KILL "$p" 2>/dev/null; done
    for ((k = 0; k < 50; k++)); do                         # bounded wait until gone
        local alive=0
        for p in $pids; do kill -0 "$p" 2>/dev/null && [ "$(ps -o stat= -p "$p")" != Z ] && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
}

cleanup() {
    local rc=$?
    trap '' INT TERM HUP PIPE      # a second Ctrl-C or a closed pipe must not cut cleanup short
    trap - EXIT
    local p
    [ -n "$SAMPLER" ] && kill_tree "$SAMPLER"
    [ -n "$LINKS" ] && kill_tree "$LINKS"
    for p in "${BG[@]}"; do kill_tree "$p"; done
    wait 2>/dev/null
    ip netns del "${P}sw" 2>/dev/null
    for ((i = 0; i <= NHOSTS; i++)); do ip netns del "${P}h$i" 2>/dev/null; done
    if [ -n "$KEEP_LOGS" ]; then
        mkdir -p "$KEEP_LOGS" && cp -r "$LOGS"/. "$KEEP_LOGS"/ && echo "logs kept in $KEEP_LOGS" >&2
    fi
    rm -rf "$TMP"
    exit $rc
}
trap cleanup EXIT
trap 'echo "lan.sh: interrupted" >&2; exit 130' INT TERM

say() { printf '%s\n' "$*" | tee -a "$LOGS/report.txt"; }
now() { echo "$EPOCHREALTIME"; }
fsub() { python3 -c "import sys; a,b=map(float,sys.argv[1:3]); print('%.1f'%(a-b))" "$1" "$2"; }
calc() { python3 -c "import sys; print(eval(sys.argv[1]))" "$1"; }
stamp() { local l; while IFS= read -r l; do printf '%s %s\n' "$EPOCHREALTIME" "$l"; done; }

cpu_snap() {    # busy total (jiffies, all cores)
    local _c u n s i w irq sirq st _r
    read -r _c u n s i w irq sirq st _r </proc/stat
    echo "$((u + n + s + irq + sirq + st)) $((u + n + s + i + w + irq + sirq + st))"
}
CPU0=""
CPU_BASE=0
cpu_baseline() {  # busy % over 2 s before a run: other load on the machine skews the figures
    local a b
    local k
    for ((k = 0; k < 45; k++)); do      # wait up to IDLE_WAIT (<= ~90) s for the machine to be idle
        a=$(cpu_snap); sleep 2; b=$(cpu_snap)
        set -- $a $b
        CPU_BASE=$(( $4 > $2 ? 100 * ($3 - $1) / ($4 - $2) : 0 ))
        [ "$CPU_BASE" -le 15 ] && break
        [ $((2 * k + 2)) -ge "$IDLE_WAIT" ] && break
        [ $k = 0 ] && echo "lan.sh: machine ${CPU_BASE}% busy before $RUN_NAME (other processes); waiting up to $IDLE_WAIT s" >&2
    done
    [ "$CPU_BASE" -gt 15 ] && say "WARNING: machine already ${CPU_BASE}% busy before $RUN_NAME (other processes): CPU and times are skewed"
    return 0
}
cpu_start() {   # also a 1 s sampler for the peak (call cpu_baseline first)
    CPU0=$(cpu_snap)
    CPU_T0=$(now)
    : >"$RUN/cpu.samples"
    (
        local prev cur k
        prev=$(cpu_snap)
        for ((k = 0; k < 3600; k++)); do
            sleep 1
            cur=$(cpu_snap)
            set -- $prev $cur
            [ $(($4 - $2)) -gt 0 ] && echo $((100 * ($3 - $1) / ($4 - $2))) >>"$RUN/cpu.samples"
            prev=$cur
        done
    ) &
    SAMPLER=$!
}
CPU_AVG=0 CPU_PEAK=0
cpu_stop() {
    local c1
    c1=$(cpu_snap)
    { kill_tree "$SAMPLER"; wait "$SAMPLER"; } 2>/dev/null; SAMPLER=""
    set -- $CPU0 $c1
    CPU_AVG=$(( $4 > $2 ? 100 * ($3 - $1) / ($4 - $2) : 0 ))
    CPU_PEAK=$(sort -n "$RUN/cpu.samples" | tail -1)
    CPU_PEAK=${CPU_PEAK:-0}
    # our own processes: children's user+sys from bash `times` in each launcher (*.times)
    CPU_OWN=$(python3 - "$RUN" "$CPU_T0" "$(now)" "$(nproc)" <<'PY'
import glob, re, sys
run, t0, t1, ncpu = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
tot = 0.0
for f in glob.glob(run + "/*.times"):
    lines = open(f).read().split("\n")
    if len(lines) > 1:
        for m, sec in re.findall(r"(\d+)m([\d.]+)s", lines[1]):
            tot += int(m) * 60 + float(sec)
print(int(100 * tot / max(1e-9, (t1 - t0) * ncpu)))
PY
)
    if [ "$CPU_AVG" -gt 85 ]; then
        say "WARNING: CPU saturated during $RUN_NAME: average busy ${CPU_AVG}% of $(nproc) cores (> 85%): times are CPU-bound, not link-bound"
    fi
}

# ---------------------------------------------------------------------------- network
shape() {       # ns dev kbit
    local burst
    burst=$(( $3 * 1000 / 8 / 100 ))             # 10 ms of data, at least 32 KB
    [ $burst -lt 32768 ] && burst=32768
    tc -n "$1" qdisc del dev "$2" root 2>/dev/null
    tc -n "$1" qdisc add dev "$2" root handle 1: htb default 1 r2q 1000 &&
    tc -n "$1" class add dev "$2" parent 1: classid 1:1 htb rate "$3"kbit ceil "$3"kbit \
        burst $burst cburst $burst quantum 30000 &&
    if [ $LOSSY = 1 ] && [ "$LOSS_HOW" != drop-class ]; then
        # shellcheck disable=SC2086  # NETEM is a list of tc words
        if tc -n "$1" qdisc add dev "$2" parent 1:1 handle 10: netem $NETEM limit 1000 2>/dev/null; then
            LOSS_HOW=netem
            return 0
        fi
        [ "$LOSS_HOW" = netem ] && { echo "lan.sh: netem failed on $1 $2" >&2; return 1; }
        # No netem in this kernel (CONFIG_NET_SCH_NETEM): 2% random loss without delay, by
        # a classic-BPF classifier sending 2 packets in 100 (SKF_AD_RANDOM % 100 < 2) to a
        # class whose pfifo holds 0 packets. No delay can be emulated without netem.
        LOSS_HOW=drop-class
        echo "lan.sh: no netem in this kernel: --lossy is 2% random loss only (no delay)" >&2
    fi
    tc -n "$1" qdisc add dev "$2" parent 1:1 handle 10: pfifo limit 300 ||
        { echo "lan.sh: tc failed on $1 $2" >&2; return 1; }
    if [ "$LOSS_HOW" = drop-class ]; then
        tc -n "$1" class add dev "$2" parent 1: classid 1:2 htb rate "$3"kbit ceil "$3"kbit &&
        tc -n "$1" qdisc add dev "$2" parent 1:2 handle 20: pfifo limit 0 &&
        tc -n "$1" filter add dev "$2" parent 1: bpf bytecode \
            "5,32 0 0 4294963256,148 0 0 100,53 0 1 2,6 0 0 65537,6 0 0 65538" ||
            { echo "lan.sh: tc (loss filter) failed on $1 $2" >&2; return 1; }
    fi
}
shape_host() {  # i kbit: both directions of host i's link
    shape "${P}h$1" eth0 "$2" && shape "${P}sw" "p$1" "$2"
}

setup_net() {   # receivers
    local n=$1 i
    ip netns add "${P}sw" || return 1
    ip -n "${P}sw" link add br0 type bridge stp_state 0 mcast_snooping 0 || return 1
    ip -n "${P}sw" link set br0 up
    for ((i = 0; i <= n; i++)); do
        ip netns add "${P}h$i" || return 1
        NHOSTS=$i
        ip -n "${P}sw" link add "p$i" type veth peer name eth0 netns "${P}h$i" || return 1
        ip -n "${P}sw" link set "p$i" master br0
        ip -n "${P}sw" link set "p$i" up
        ip -n "${P}h$i" link set lo up
        ip -n "${P}h$i" addr add "${IPS[$i]}/$PLEN" brd + dev eth0
        ip -n "${P}h$i" link set eth0 up
        ip -n "${P}h$i" route add 224.0.0.0/4 dev eth0     # multicast for udpcast
        shape_host "$i" $((RATE * 1000)) || return 1
    done
    # bounded wait until the seeder host reaches the last receiver
    for ((i = 0; i < 50; i++)); do
        # "connection refused" from a closed port proves the path works (no ping needed)
        case $(ip netns exec "${P}h0" timeout 2 bash -c "exec 3<>/dev/tcp/${IPS[$n]}/9" 2>&1) in
            *refused*) return 0 ;;
        esac
        sleep 0.2
    done
    echo "lan.sh: LAN not reachable" >&2; return 1
}

net_snap() {    # "out_segs retrans_segs qdisc_drops" summed over every host and switch port
    local i o=0 r=0 d=0 line x
    for ((i = 0; i <= NHOSTS; i++)); do
        line=$(ip netns exec "${P}h$i" awk '/^Tcp: [0-9]/ {print $12, $13}' /proc/net/snmp)
        set -- $line; o=$((o + ${1:-0})); r=$((r + ${2:-0}))
    done
    for x in $( (for ((i = 0; i <= NHOSTS; i++)); do tc -s -n "${P}h$i" qdisc show dev eth0; tc -s -n "${P}sw" qdisc show dev "p$i"; done) |
        grep -o 'dropped [0-9]*' | awk '{print $2}'); do
        d=$((d + x))
    done
    echo "$o $r $d"
}
net_diff() {    # before after -> sets NET_RETX (% of segments resent) and NET_DROPS
    set -- $1 $2
    NET_DROPS=$(( $6 - $3 ))
    NET_RETX=$(calc "'%.2f' % (100.0 * ($5 - $2) / max(1, $4 - $1))")
}

LINKS=""
links_start() { # background sampler of htb class byte counters -> $RUN/links.txt
    [ $LINK_STATS = 1 ] || return 0
    (
        local k t0 t s0 d1 u1 ps pd pu pt
        sent() { tc -s -n "$1" class show dev "$2" | awk '/Sent/ {print $2; exit}'; }
        echo "# t_s seeder_up_Mbit r1_down_Mbit r1_up_Mbit (htb classes; wire bytes incl. headers)"
        t0=$(now); pt=$t0
        ps=$(sent "${P}h0" eth0); pd=$(sent "${P}sw" p1); pu=$(sent "${P}h1" eth0)
        for ((k = 0; k < 7200; k++)); do
            sleep 0.5
            t=$(now); s0=$(sent "${P}h0" eth0); d1=$(sent "${P}sw" p1); u1=$(sent "${P}h1" eth0)
            python3 -c "import sys; t0,pt,t,a,b,c,d,e,f=map(float,sys.argv[1:]); dt=t-pt; print('%.1f %.1f %.1f %.1f' % (t-t0, (b-a)*8/dt/1e6, (d-c)*8/dt/1e6, (f-e)*8/dt/1e6))" \
                "$t0" "$pt" "$t" "$ps" "$s0" "$pd" "$d1" "$pu" "$u1"
            pt=$t ps=$s0 pd=$d1 pu=$u1
        done
    ) >"$RUN/links.txt" 2>/dev/null &
    LINKS=$!
}
links_stop() { [ -n "$LINKS" ] && { kill_tree "$LINKS"; wait "$LINKS" 2>/dev/null; }; LINKS=""; return 0; }


# ---------------------------------------------------------------------------- blockswarm run
# launch_receiver I DELAY TAG RESUME TIMEOUT: background; writes $RUN/rI$TAG.{start,log,rc}
launch_receiver() {
    local i=$1 delay=$2 tag=$3 resume=$4 tmo=$5 extra=()
    [ "$resume" = 0 ] && extra=(--no-resume)
    (
        [ "$delay" != 0 ] && sleep "$delay"
        now >"$RUN/r$i$tag.start"
        ip netns exec "${P}h$i" timeout -k 5 "$tmo" \
            bash -c 'f=$1; shift; "$@"; rc=$?; times >"$f"; exit $rc' _ "$RUN/r$i$tag.cpu" "$BIN/receiver" \
            --manifest "http://${IPS[0]}:6880/t/$TOKEN/$NAME.torrent" --target "$TMP/t$i" \
            --listen "${IPS[$i]}:6881" --verify "${extra[@]}" "${SW_FLAGS[@]}" -q $VERB 2>&1 | stamp >"$RUN/r$i$tag.log"
        echo "${PIPESTATUS[0]} $(now)" >"$RUN/r$i$tag.rc"
        times >"$RUN/r$i$tag.times"
    ) 2>>"$RUN/launcher.err" &
    BG+=($!)
    RPID[$i]=$!
}

receiver_pid() {  # the receiver process under launcher subshell $1 (subshell > timeout > bash > receiver)
    local r
    for r in $(tree_pids "$1"); do
        [ "$(ps -o comm= -p "$r")" = receiver ] && { echo "$r"; return; }
    done
}

# receiver_result I TAG -> sets R_STATE (OK|STUCK|FAIL rc=X|KILLED), R_DONE (s from T0 to
# "complete" line, or -), R_EXIT (s from T0 to exit)
receiver_result() {
    local f=$RUN/r$1$2 rc end cl
    R_STATE="NOTRUN" R_DONE="-" R_EXIT="-"
    [ -f "$f.rc" ] || return
    read -r rc end <"$f.rc"
    R_EXIT=$(fsub "$end" "$T0")
    cl=$(grep -m1 ' receiver: .* complete: ' "$f.log" | cut -d' ' -f1)
    [ -n "$cl" ] && R_DONE=$(fsub "$cl" "$T0")
    case $rc in
        0) R_STATE=OK ;;
        124|137) R_STATE=STUCK; [ "$1$2" = "$KILLED" ] && R_STATE=KILLED ;;
        *) R_STATE="FAIL:rc=$rc" ;;
    esac
}

verify_path() {     # target file -> "ok" or "BAD": its used data (imager's infohash) is the source's
    local h
    h=$("$BIN/imager" "$1" --fs "$(img_fs_flag)" --name "$NAME" --piece-size "$PIECE" -o /dev/null 2>&1 | grep -o 'infohash [0-9a-f]*' | cut -d' ' -f2)
    [ "$h" = "$SRC_HASH" ] && echo ok || echo "BAD(${h:-no fs})"
}
verify_target() { verify_path "$TMP/t$1"; }   # i

# run_swarm N NAME SPECIAL  (SPECIAL: none|slow|late|kill; the special receiver is the last)
run_swarm() {
    local n=$1 special=$3 i k spid rtmo stmo last_done last_exit all_ok=1 ver bad=0
    RUN_NAME=$2
    RUN=$LOGS/$2
    mkdir -p "$RUN"
    KILLED=""
    unset RPID; declare -gA RPID=()
    for ((i = 1; i <= n; i++)); do rm -f "$TMP/t$i"; truncate -s "$DEVSIZE" "$TMP/t$i"; done
    rtmo=$(calc "max(60, int($TMO_FACTOR * $IDEAL))")
    local slow_tmo=$rtmo
    case $special in
        slow) slow_tmo=$(calc "int(3 * 10 * $IDEAL + 30)"); rtmo=$slow_tmo   # others seed meanwhile
              shape_host "$n" $((RATE * 100)) || return 1
              tc -n "${P}sw" class show dev "p$n" >"$RUN/slow-link.txt" ;;
        late) slow_tmo=$rtmo; rtmo=$(calc "$rtmo + $LATE_JOIN") ;;
    esac
    stmo=$(calc "max($rtmo, $slow_tmo) + $LATE_JOIN + 60")

    cpu_baseline
    (
        ip netns exec "${P}h0" timeout -k 5 "$stmo" "$BIN/seeder" "$MANIFEST" --source "$IMG" \
            --listen "${IPS[0]}:6881" --http "${IPS[0]}:6880" --token "$TOKEN" --expect "$n" -q $VERB "${SW_FLAGS[@]}" \
            >"$RUN/seeder.json" 2> >(stamp >"$RUN/seeder.log")
        rc=$?
        times >"$RUN/seeder.times"
        exit $rc
    ) 2>>"$RUN/launcher.err" &
    spid=$!; BG+=($spid)
    for ((k = 0; k < 100; k++)); do
        grep -q 'on each target run' "$RUN/seeder.log" 2>/dev/null && break
        kill -0 $spid 2>/dev/null || break
        sleep 0.1
    done
    if ! grep -q 'on each target run' "$RUN/seeder.log" 2>/dev/null; then
        say "$RUN_NAME: seeder did not start; see $RUN/seeder.log"; tail -5 "$RUN/seeder.log"
        kill_tree $spid; return 1
    fi

    local net0; net0=$(net_snap)
    links_start
    cpu_start
    T0=$(now)
    for ((i = 1; i <= n; i++)); do
        if [ $i = $n ] && [ $special = late ]; then
            launch_receiver $i "$LATE_JOIN" "" 0 "$slow_tmo"
        elif [ $i = $n ] && [ $special = slow ]; then
            launch_receiver $i 0 "" 0 "$slow_tmo"
        else
            launch_receiver $i 0 "" 0 "$rtmo"
        fi
    done
    local kill_at="" kill_bytes=""
    if [ $special = kill ]; then
        # half-way = half of S written on its target (tmpfs: allocated bytes), bounded
        for ((k = 0; k < 10 * rtmo; k++)); do
            kill_bytes=$(du -B1 "$TMP/t$n" | cut -f1)
            [ "$kill_bytes" -ge $((S / 2)) ] && break
            [ -f "$RUN/r$n.rc" ] && break
            sleep 0.1
        done
        kill_at=$(fsub "$(now)" "$T0")
        local rp; rp=$(receiver_pid "${RPID[$n]}")
        if [ -n "$rp" ]; then
            kill -KILL "$rp"; KILLED="$n"
            wait "${RPID[$n]}" 2>/dev/null
            sleep 1
            launch_receiver $n 0 b 1 "$rtmo"      # restart, resume scan on
        else
            say "$RUN_NAME: receiver $n already gone at ${kill_at}s; not killed"
        fi
    fi
    for ((i = 1; i <= n; i++)); do wait "${RPID[$i]}" 2>/dev/null; done
    # the seeder exits 2 announce intervals + 1 s after the last completion
    for ((k = 0; k < 300; k++)); do kill -0 $spid 2>/dev/null || break; sleep 0.1; done
    local seeder_rc=running
    if kill -0 $spid 2>/dev/null; then
        kill_tree $spid
        say "$RUN_NAME: seeder still running 30 s after the last receiver exited: killed"
    else
        wait $spid; seeder_rc=$?
    fi
    cpu_stop
    links_stop
    net_diff "$net0" "$(net_snap)"
    echo "TCP segments resent ${NET_RETX}%, qdisc drops $NET_DROPS" >"$RUN/net.txt"

    COPIES=$(jq -r '.uploaded_copies // empty' "$RUN/seeder.json" 2>/dev/null | head -1)
    [ -n "$COPIES" ] && COPIES=$(printf '%.2f' "$COPIES") || COPIES="n/a"
    # a seeder with compressed pieces (issue 13) reports its zstd frames: wire vs raw bytes
    SW_Z=$(jq -r 'if .zstd and .zstd.sent_blocks > 0 then "\(.zstd.sent_blocks) \(.zstd.sent_frame_bytes) \(.zstd.sent_raw_bytes)" else empty end' \
        "$RUN/seeder.json" 2>/dev/null | head -1)
    last_done=0 last_exit=0
    : >"$RUN/receivers.txt"
    for ((i = 1; i <= n; i++)); do
        local tags=""
        [ "$KILLED" = "$i" ] && tags="b"
        receiver_result $i ""
        local st1=$R_STATE d1=$R_DONE e1=$R_EXIT
        if [ -n "$tags" ]; then receiver_result $i b; fi
        ver=$(verify_target $i)
        [ "$ver" = ok ] || bad=$((bad + 1))
        [ "$R_STATE" = OK ] || all_ok=0
        printf 'r%-2d %-10s complete %6s s  exit %6s s  target %s%s\n' $i "$R_STATE" "$R_DONE" "$R_EXIT" "$ver" \
            "$([ -n "$tags" ] && echo "   (first run: $st1 at $e1 s)")" >>"$RUN/receivers.txt"
        if [ "$R_DONE" != - ]; then last_done=$(calc "max($last_done, $R_DONE)"); else last_done=nan; fi
        if [ "$R_STATE" = OK ]; then last_exit=$(calc "max($last_exit, $R_EXIT)"); fi
        if [ "$R_STATE" != OK ]; then
            echo "--- r$i$tags ($R_STATE) log tail:" >>"$RUN/problems.txt"
            tail -20 "$RUN/r$i$tags.log" >>"$RUN/problems.txt"
        fi
    done
    [ "$seeder_rc" = 0 ] || { echo "--- seeder rc=$seeder_rc log tail:" >>"$RUN/problems.txt"; tail -20 "$RUN/seeder.log" >>"$RUN/problems.txt"; }
    SW_DONE=$last_done SW_EXIT=$last_exit SW_OK=$all_ok SW_BAD=$bad SW_SEEDER_RC=$seeder_rc
    [ $all_ok = 1 ] || SW_EXIT="STUCK/FAIL"
    [ "$special" = slow ] && shape_host "$n" $((RATE * 1000))
    for ((i = 1; i <= n; i++)); do rm -f "$TMP/t$i"; done
    SW_KILL_AT=$kill_at SW_KILL_BYTES=$kill_bytes
    return 0
}


ratio() { case $1 in *[!0-9.]*|"") echo "-" ;; *) calc "'%.2f' % ($1 / $IDEAL)" ;; esac; }

# ---------------------------------------------------------------------------- main
maxn=0
if [ $SKIP_MAIN = 0 ]; then for n in $COUNTS; do [ "$n" -gt $maxn ] && maxn=$n; done; fi
if [ $SLOW_ONE = 1 ] || [ "$LATE_JOIN" != 0 ] || [ $KILL_ONE = 1 ]; then
    [ "$SCEN_N" -gt $maxn ] && maxn=$SCEN_N
fi
[ $maxn -gt 0 ] || { echo "lan.sh: nothing to run" >&2; exit 2; }
[ $maxn -le 200 ] || { echo "lan.sh: at most 200 receivers" >&2; exit 2; }
# the hosts' addresses: the first maxn + 1 host addresses of SUBNET (h0 = the seeder)
ADDRS=$(python3 -c '
import ipaddress, sys
net = ipaddress.ip_network(sys.argv[1], strict=False)
n = int(sys.argv[2]) + 1
if net.version != 4 or net.num_addresses - 2 < n:
    sys.exit("lan.sh: --subnet %s: need an IPv4 subnet with %d host addresses" % (sys.argv[1], n))
print(net.prefixlen, " ".join(str(net.network_address + 1 + i) for i in range(n)))
' "$SUBNET" "$maxn") || exit 2
read -r PLEN ADDRS <<<"$ADDRS"
read -r -a IPS <<<"$ADDRS"

echo "lan.sh: temp dir $TMP; making the image ($IMAGE_KIND$([ "$IMAGE_KIND" = debian ] || echo ", $SIZE MB"))..." >&2
make_image || { echo "lan.sh: making the image failed; see $LOGS/imager.log" >&2; cat "$LOGS/imager.log" >&2; exit 1; }
[ $UDPZSTD = 1 ] && { zstd_size || { echo "lan.sh: partclone | zstd of the image failed" >&2; exit 1; }; }
setup_net $maxn || { echo "lan.sh: network setup failed" >&2; exit 1; }

say "blockswarm LAN bench: $(date -u +%FT%TZ), $(nproc) cores, kernel $(uname -r), git $(cd "$HERE/.." && git rev-parse --short HEAD 2>/dev/null)$(cd "$HERE/.." && git diff --quiet 2>/dev/null || echo +dirty)"
if [ "$LOSS_HOW" = netem ]; then
    say "links: $RATE Mbit/s both ways per host (htb on both veth ends), LOSSY: netem $NETEM limit 1000 under htb on every veth end, bridge in its own namespace"
elif [ "$LOSS_HOW" = drop-class ]; then
    say "links: $RATE Mbit/s both ways per host (htb on both veth ends, pfifo 300), LOSSY without netem (not in kernel $(uname -r)): 2% of packets at every veth end classified (cBPF, SKF_AD_RANDOM) into a drop class (pfifo limit 0); NO delay; bridge in its own namespace"
else
    say "links: $RATE Mbit/s both ways per host (htb on both veth ends, pfifo 300), bridge in its own namespace"
fi
say "image: $IMG_DESC"
say "image: $(calc "$DEVSIZE / 1048576") MiB, S = $S used bytes ($(calc "'%.1f' % ($S / 1e6)") MB), pieces $PIECE, ideal S/R = $IDEAL s"
say "blockswarm: seeder --expect N, receivers --verify --no-resume, -v logs; 'done' = last receiver's 'complete' line, 'exit' = last receiver exited 0 (after the seeder says done)"
say "ratio = exit / (S/R); per-receiver timeout = max(60, $TMO_FACTOR x S/R) s"
say "retx% = TCP segments retransmitted / sent, all hosts (drops in the link queues)"
say "cpu% = average busy of all cores (whole machine, /proc/stat), pk% = busiest second, own% = user+sys of the bench's own processes (kernel softirq work of the links not included)"
say ""

if [ $SKIP_MAIN = 0 ]; then
    fmt='%3s %10s %7s %7s %7s %5s %6s %6s %4s %4s %4s %5s %6s | %6s %5s %4s %4s %6s | %6s %5s %4s %4s %s'
    # shellcheck disable=SC2059  # fmt is ours
    hdr=$(printf "$fmt" N S_bytes done_s exit_s ideal_s ratio r_done copies cpu% pk% own% retx% verify \
        udp_s udp_r cpu% own% udp_ok zst_s zst_r cpu% own% zst_ok)
    say "$hdr"
    SUMMARY=() ZNOTES=()
    SW_FLAGS=("${BASE_FLAGS[@]}")
    for n in $COUNTS; do
        pt="-" pr="-" pok="-" prx="-"
        if [ $PLAIN_TOO = 1 ]; then
            SW_FLAGS=(--no-compress)
            run_swarm "$n" "plain-n$n" none
            SW_FLAGS=("${BASE_FLAGS[@]}")
            pt=$SW_EXIT; pr=$(ratio "$SW_EXIT"); pok="$((n - SW_BAD))/$n"; prx=$(cpu_avg "$LOGS/plain-n$n" "$n")
        fi
        run_swarm "$n" "swarm-n$n" none
        sc=$CPU_AVG spk=$CPU_PEAK sown=$CPU_OWN
        ver="$((n - SW_BAD))/$n"
        srx=$(cpu_avg "$LOGS/swarm-n$n" "$n")
        ut="-" ur="-" uc="-" uown="-" uok="-" urx="-"
        if [ $UDPCAST = 1 ]; then
            run_udpcast "$n" "udpcast-n$n"
            ut=$UDP_TIME; ur=$(ratio "$UDP_TIME"); uc=$CPU_AVG; uown=$CPU_OWN; uok="$UDP_GOOD/$n"; urx=$UDP_RXCPU
        fi
        zt="-" zr="-" zc="-" zown="-" zok="-" zrx="-"
        if [ $UDPZSTD = 1 ]; then
            run_udpzstd "$n" "udpzstd-n$n"
            zt=$ZST_TIME; zr=$(ratio "$ZST_TIME"); zc=$CPU_AVG; zown=$CPU_OWN; zok="$ZST_GOOD/$n"; zrx=$ZST_RXCPU
        fi
        # shellcheck disable=SC2059
        line=$(printf "$fmt" \
            "$n" "$S" "$SW_DONE" "$SW_EXIT" "$IDEAL" "$(ratio "$SW_EXIT")" "$(ratio "$SW_DONE")" \
            "$COPIES" "$sc" "$spk" "$sown" "$NET_RETX" "$ver" "$ut" "$ur" "$uc" "$uown" "$uok" \
            "$zt" "$zr" "$zc" "$zown" "$zok")
        say "$line"
        SUMMARY+=("$(printf '%3s | %6s %5s %6s | %6s %5s %6s | %6s %5s %6s | %6s %5s %6s | %7s %7s %7s %7s' "$n" \
            "$SW_EXIT" "$(ratio "$SW_EXIT")" "$ver" "$pt" "$pr" "$pok" "$ut" "$ur" "$uok" "$zt" "$zr" "$zok" "$srx" "$prx" "$urx" "$zrx")")
        [ -s "$LOGS/swarm-n$n/problems.txt" ] && say "    (problems in swarm-n$n: see logs/swarm-n$n/problems.txt)"
        if [ -n "$SW_Z" ]; then
            read -r zf zc zr <<<"$SW_Z"
            ZNOTES+=("N=$n: seeder sent $zf blocks as zstd frames, $zc wire bytes for $zr raw ($(calc "'%.2f' % ($zc / max(1, $zr))")); seeder uploaded $COPIES x S")
        fi
        [ -s "$LOGS/udpzstd-n$n/problems.txt" ] && say "    (problems in udpzstd-n$n: see logs/udpzstd-n$n/problems.txt)"
    done
    [ $UDPCAST = 1 ] && say "udpcast: $UDP_SETTINGS; udp_s = last udp-receiver exit, data compared with cmp"
    [ $UDPZSTD = 1 ] && say "udpcast+zstd: $ZST_SETTINGS; zst_s = last receiver pipe exit"
    say ""
    say "== summary: time in s and (time / (S/R)), S = $S used bytes, R = $RATE Mbit/s, S/R = $IDEAL s; rx_cpu = user+sys s per receiver (average)"
    [ $UDPZSTD = 1 ] && say "   zstd -$ZSTD_LEVEL stream: $ZSTD_BYTES bytes = S / $(calc "'%.2f' % ($S / max(1, $ZSTD_BYTES))")"
    say "$(printf '%3s | %-19s | %-19s | %-19s | %-19s | %s' '' blockswarm 'blockswarm plain' udpcast 'udpcast+zstd' 'rx_cpu (s per receiver)')"
    say "$(printf '%3s | %6s %5s %6s | %6s %5s %6s | %6s %5s %6s | %6s %5s %6s | %7s %7s %7s %7s' N time ratio ok time ratio ok time ratio ok time ratio ok ours plain udpcast udp+zst)"
    for l in "${SUMMARY[@]}"; do say "$l"; done
    for l in "${ZNOTES[@]}"; do say "   $l"; done
    say ""
fi

scenario_report() {   # name n
    local n=$2
    say "== scenario $1 (N=$n, the special receiver is r$n)"
    while IFS= read -r l; do say "   $l"; done <"$RUN/receivers.txt"
    local others_done others_exit
    others_done=$(head -n $((n - 1)) "$RUN/receivers.txt" | awk '{print $4}' | sort -g | tail -1)
    others_exit=$(head -n $((n - 1)) "$RUN/receivers.txt" | awk '{print $7}' | sort -g | tail -1)
    SO_DONE=${others_done:--} SO_EXIT=${others_exit:--}
    SP_LINE=$(tail -1 "$RUN/receivers.txt")
    say "   seeder: copies $COPIES, rc $SW_SEEDER_RC; CPU avg ${CPU_AVG}% peak ${CPU_PEAK}% own ${CPU_OWN}%; targets verified $((n - SW_BAD))/$n"
}

if [ $SLOW_ONE = 1 ]; then
    run_swarm "$SCEN_N" slow-one slow
    scenario_report slow-one "$SCEN_N"
    sp_done=$(echo "$SP_LINE" | awk '{print $4}')
    say "   FIGURE slow-one: others done at $SO_DONE s = $(ratio "$SO_DONE") x S/R (S/R = $IDEAL s); slow one (link $(calc "$RATE / 10") Mbit/s, ideal $(calc "'%.1f' % (10 * $IDEAL)") s) done at $sp_done s = $(calc "'%.2f' % ($sp_done / (10 * $IDEAL))" 2>/dev/null || echo -) x its ideal; all exit $SW_EXIT s"
    say ""
fi
if [ "$LATE_JOIN" != 0 ]; then
    run_swarm "$SCEN_N" late-join late
    scenario_report "late-join $LATE_JOIN" "$SCEN_N"
    sp_done=$(echo "$SP_LINE" | awk '{print $4}')
    after=$(calc "'%.1f' % ($sp_done - $LATE_JOIN)" 2>/dev/null || echo -)
    say "   FIGURE late-join: others done at $SO_DONE s = $(ratio "$SO_DONE") x S/R; late one joined at $LATE_JOIN s, done at $sp_done s = $after s after joining = $(ratio "$after") x S/R; all exit $SW_EXIT s"
    say ""
fi
if [ $KILL_ONE = 1 ]; then
    run_swarm "$SCEN_N" kill-one kill
    scenario_report kill-one "$SCEN_N"
    sp_state=$(echo "$SP_LINE" | awk '{print $2}'); sp_done=$(echo "$SP_LINE" | awk '{print $4}')
    say "   FIGURE kill-one: r$SCEN_N SIGKILLed at $SW_KILL_AT s with $(calc "'%.0f' % (${SW_KILL_BYTES:-0} / 1e6)") MB on its target, restarted 1 s later (resume scan on); others done at $SO_DONE s = $(ratio "$SO_DONE") x S/R; restarted one: $sp_state, done at $sp_done s; all exit $SW_EXIT s"
    say ""
fi
echo "report also in $LOGS/report.txt" >&2
