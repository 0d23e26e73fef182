#!/usr/bin/env bash
# Builds `receiver` as one static binary for rescue/PXE systems: no C library of the imager is
# linked in, glibc is linked statically. Output: target/x86_64-unknown-linux-gnu/release/receiver
set -euo pipefail
cd "$(dirname "$0")/.."
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p receiver --target "$TRIPLE"
BIN="target/$TRIPLE/release/receiver"
deps=$(ldd "$BIN" 2>&1 || true)
if ! grep -Eq "statically linked|not a dynamic executable" <<<"$deps"; then
  echo "error: $BIN is dynamically linked:" >&2; echo "$deps" >&2; exit 1
fi
if nm -D "$BIN" 2>/dev/null | grep -q ext2fs; then echo "error: libext2fs linked into receiver" >&2; exit 1; fi
"$BIN" --version
echo "static receiver: $BIN ($(du -h "$BIN" | cut -f1))"
strip -o target/receiver-static "$BIN"
echo "stripped copy: target/receiver-static ($(du -h target/receiver-static | cut -f1))"
