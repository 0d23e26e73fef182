#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests (real filesystems, real
# partclone, real BitTorrent peers on 127.0.0.x), and the static receiver build.
# Needs root (loop mounts, FUSE) and Debian's packages; installs the missing ones.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export BLOCKSWARM_REQUIRE_FS_TOOLS=1     # a missing tool fails a test instead of skipping it
echo "== cargo fmt" && cargo fmt --all -- --check
echo "== cargo clippy" && cargo clippy --workspace --all-targets -- -D warnings
echo "== build" && cargo build --workspace --bins
echo "== tests" && cargo test --workspace 2>&1 | tee /tmp/blockswarm-test.log
echo "== partclone-sys without the ntfs feature" && cargo test -p partclone-sys --test errors
echo "== static receiver" && bash scripts/build-static-receiver.sh
# One summary line for CI readers.
# Counted from cargo's own result lines (a failing test has already stopped the script above
# through pipefail; the count is still read, not assumed).
counts=$(grep -E '^test result: ' /tmp/blockswarm-test.log | awk '{p+=$4; f+=$6} END {print p+0, f+0}')
read -r passed failed <<<"$counts"
echo "blockswarm: ${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
