#!/usr/bin/env bash
# The main job on a built-in demo: makes a small ext4 image with files (some deleted, so free
# space is fragmented), runs `imager IMAGE | seeder --expect 3` and three receivers on
# 127.0.0.2..4 writing into three target files pre-filled with random bytes, then verifies
# each target (e2fsck -fn, every file compared, used runs compared).
# Run as root on Debian bookworm: bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release -q -p imager -p seeder -p receiver
B=$PWD/target/release
W=${DEMO_DIR:-$PWD/demo-work}
rm -rf "$W"; mkdir -p "$W/files"
trap 'jobs -p | xargs -r kill 2>/dev/null || true' EXIT

echo "== 1. a demo ext4 image (256 MiB, ~60 MiB of files, every third file deleted)"
for i in $(seq -w 1 60); do head -c $(( (RANDOM % 2048 + 1) * 1024 )) /dev/urandom > "$W/files/file$i"; done
truncate -s 256M "$W/source.img"
mkfs.ext4 -q -F -d "$W/files" "$W/source.img"
for i in $(seq -w 2 3 60); do debugfs -w -R "rm /file$i" "$W/source.img" >/dev/null 2>&1; done
"$B/imager" --map "$W/source.img" | grep -c '+$' | xargs printf "   used-block map: %s runs\n"

echo "== 2. imager | seeder (HTTP on 127.0.0.1:6880, BitTorrent on 127.0.0.1:6881)"
# The deployment token every URL carries (the seeder would make and keep one itself).
TOKEN=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
"$B/imager" "$W/source.img" | "$B/seeder" --listen 127.0.0.1:6881 --http 127.0.0.1:6880 \
    --token "$TOKEN" --expect 3 --quiet > "$W/seeder-status.json" 2> "$W/seeder.log" &
SEEDER=$!
URL=http://127.0.0.1:6880/t/$TOKEN/source.img.packed.torrent
for _ in $(seq 50); do curl -sf -o /dev/null "$URL" 2>/dev/null && break; sleep 0.2; done

echo "== 3. three receivers on 127.0.0.2..4"
PIDS=()
for h in 2 3 4; do
  head -c 256M /dev/urandom > "$W/target$h.img"
  "$B/receiver" --manifest "$URL" --target "$W/target$h.img" --listen "127.0.0.$h:6881" \
      --verify --quiet 2> "$W/receiver$h.log" &
  PIDS+=($!)
done
fail=0
for i in 0 1 2; do wait "${PIDS[$i]}" || { echo "receiver $((i+2)) failed:"; cat "$W/receiver$((i+2)).log"; fail=1; }; done
wait "$SEEDER" || { echo "seeder failed:"; cat "$W/seeder.log"; fail=1; }
[ $fail -eq 0 ] || exit 1
grep -h "complete:" "$W"/receiver*.log | sed 's/^/   /'
python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print("   seeder uploaded %.2f copies of %d bytes to %d receivers" % (s["uploaded_copies"], s["total_bytes"], s["completed"]))' "$W/seeder-status.json"

echo "== 4. verify every target"
for h in 2 3 4; do
  T="$W/target$h.img"
  e2fsck -fn "$T" >/dev/null 2>&1 || { echo "target$h: e2fsck -fn failed"; exit 1; }
  n=0
  for f in $(debugfs -R "ls -p /" "$W/source.img" 2>/dev/null | awk -F/ '$6 ~ /^file/ {print $6}'); do
    cmp -s <(debugfs -R "cat /$f" "$W/source.img" 2>/dev/null) <(debugfs -R "cat /$f" "$T" 2>/dev/null) \
      || { echo "target$h: /$f differs"; exit 1; }
    n=$((n+1))
  done
  [ $n -gt 0 ] || { echo "no files compared"; exit 1; }
  [ "$("$B/imager" --map "$T" | grep '+$')" = "$("$B/imager" --map "$W/source.img" | grep '+$')" ] \
      || { echo "target$h: used runs differ"; exit 1; }
  echo "   target$h.img: e2fsck clean, all $n files identical, used runs identical"
done
echo "demo OK (work files in $W)"
