#!/usr/bin/env bash
# Installs imager, seeder and receiver with their man pages and shell completions.
#
#   scripts/install.sh                     # build (release) and install under /usr/local
#   PREFIX=/usr DESTDIR=/tmp/pkg scripts/install.sh   # staged install for a package
#   scripts/install.sh --no-build          # install what target/release already holds
#   PROFILE=debug scripts/install.sh       # the debug build instead (target/debug)
#
# Layout (all under $DESTDIR$PREFIX): bin/{imager,seeder,receiver},
# share/man/man1/*.1, share/bash-completion/completions/*, share/zsh/site-functions/_*,
# share/fish/vendor_completions.d/*.fish. The man pages and completions are generated from
# the programs' clap definitions by blockswarm-docgen.
set -euo pipefail
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
build=1
for a in "$@"; do
  case "$a" in
    --no-build) build=0 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
PROFILE=${PROFILE:-release}
case "$PROFILE" in
  release) flags=(--release) ;;
  debug) flags=() ;;
  *) echo "install.sh: PROFILE is release or debug, not $PROFILE" >&2; exit 2 ;;
esac
if [ "$build" = 1 ]; then
  cargo build "${flags[@]}" -p imager -p seeder -p receiver -p blockswarm-docgen
fi
rel="$target/$PROFILE"
for b in imager seeder receiver blockswarm-docgen; do
  [ -x "$rel/$b" ] || { echo "install.sh: $rel/$b not built (run without --no-build)" >&2; exit 1; }
done
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
"$rel/blockswarm-docgen" "$gen" >/dev/null
root="$DESTDIR$PREFIX"
install -d "$root/bin" "$root/share/man/man1" "$root/share/bash-completion/completions" \
  "$root/share/zsh/site-functions" "$root/share/fish/vendor_completions.d"
for b in imager seeder receiver; do
  install -m 0755 "$rel/$b" "$root/bin/$b"
  install -m 0644 "$gen/man1/$b.1" "$root/share/man/man1/$b.1"
  install -m 0644 "$gen/bash/$b" "$root/share/bash-completion/completions/$b"
  install -m 0644 "$gen/zsh/_$b" "$root/share/zsh/site-functions/_$b"
  install -m 0644 "$gen/fish/$b.fish" "$root/share/fish/vendor_completions.d/$b.fish"
done
echo "installed imager, seeder, receiver with man pages and completions under $root"
