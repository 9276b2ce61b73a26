#!/usr/bin/env bash
# Starts Wrenn on this machine: checks what building it needs, builds `wrenn`
# and `envd` (release; nothing to do when they are up to date), installs them
# in /usr/local/bin (so that every `wrenn …` in the README works as pasted),
# then runs `wrenn up` with the arguments given to this script.
#
# Needs: Debian 12 (or similar), root, Rust 1.88 or later (rustup), gcc.
# Environment: CARGO_TARGET_DIR (build directory, default ./target),
#              WRENN_PREFIX (where the binaries go, default /usr/local/bin).
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { printf 'wrenn: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || fail "Wrenn runs sandboxes with namespaces, cgroups and veths: run this as root"
command -v cargo >/dev/null 2>&1 || [[ -x "$HOME/.cargo/bin/cargo" ]] ||
  fail "Rust is not installed. Install Rust 1.88 or later with rustup (Debian's rustc is too old):
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y && . \"\$HOME/.cargo/env\""
command -v cargo >/dev/null 2>&1 || . "$HOME/.cargo/env"
version=$(rustc --version | awk '{print $2}')
if [[ "$(printf '%s\n' 1.88.0 "$version" | sort -V | head -1)" != 1.88.0 ]]; then
  fail "Rust $version is too old; Wrenn needs 1.88 or later: rustup update stable"
fi
if ! command -v cc >/dev/null 2>&1; then
  echo "Installing gcc (the Rust build links with it)."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc
fi

target="${CARGO_TARGET_DIR:-target}"
prefix="${WRENN_PREFIX:-/usr/local/bin}"
echo "Building wrenn and envd (release; the first build takes several minutes)."
cargo build --release --locked -p wrenn
# envd static and not position-independent: it runs in any template
# (no loader, no libc of the template's needed), starts without relocating
# itself, and its pages are shared by every sandbox (no private, relocated
# copy of its data in each).
# --target keeps these flags off build scripts and proc macros.
triple=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
  cargo build --release --locked -p envd --target "$triple"
install -d "$prefix"
# envd next to wrenn: the agent finds it there.
install -m 0755 "$target/release/wrenn" "$target/$triple/release/envd" "$prefix/"
exec "$prefix/wrenn" up "$@"
