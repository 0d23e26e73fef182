#!/bin/sh
# Regenerates the checked-in FFI bindings src/bindings.rs from
# csrc/pcshim.h, using bindgen through the crate's `bindgen` feature
# (needs libclang: apt-get install libclang-dev).
#
# Run it after changing csrc/pcshim.h, then review and commit the diff.
# SPDX-License-Identifier: GPL-2.0-or-later
set -eu

here=$(cd "$(dirname "$0")" && pwd)
out="$here/src/bindings.rs"
# A fresh name each run changes the environment, which makes cargo rerun
# the build script even when nothing else changed.
tmp="$out.new.$$"

cd "$here"
trap 'rm -f "$tmp"' EXIT
# The build script copies what it generated to this path.  The crate itself
# may fail to compile against the old bindings; what counts is the file.
status=0
PARTCLONE_SYS_BINDINGS_OUT="$tmp" cargo build -p partclone-sys --features bindgen || status=$?
test -s "$tmp" || { echo "regen-bindings.sh: no bindings were generated" >&2; exit 1; }
# Same layout as `cargo fmt` would give, where rustfmt is installed.
if command -v rustfmt >/dev/null 2>&1; then rustfmt --edition 2021 "$tmp"; fi
mv "$tmp" "$out"
echo "regen-bindings.sh: wrote $out"
if [ "$status" -ne 0 ]; then
    echo "regen-bindings.sh: note: cargo build failed (status $status); fix the crate against the new bindings" >&2
fi
