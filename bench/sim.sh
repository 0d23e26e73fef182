#!/usr/bin/env bash
# bench/sim.sh - one simulated room (swarm's policy core on modelled links, virtual clock):
#
#   bash bench/sim.sh --nodes N --switches S --seeders K --rate MBIT [--slow PCT] [--die PCT] [--seed X]
#
# more flags: --uplink MBIT (switch uplinks, default 1000), --size MB (default 200),
# --piece BYTES, --liars N, --latency-us US, --start-spread-ms MS; `--help` lists them.
# Builds sim/ in release first (CARGO_TARGET_DIR, default /tmp/target-bench). The last line:
#   sim nodes=N switches=S seeders=K rate=R p50=X p99=X max=X copies=X uplink=X
# with times as ratios to (bytes / link rate), copies = seeder block bytes / bytes, uplink =
# bytes over switch uplinks / (one copy per switch without a seeder). Exit 1 if a receiver
# did not finish or a check failed (see sim/src/main.rs). See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/target-bench}
cargo build --release -q -p blockswarm-sim
exec "$CARGO_TARGET_DIR/release/blockswarm-sim" "$@"
