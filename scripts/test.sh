#!/usr/bin/env bash
# Runs Wrenn's whole test suite on a Debian machine, installing what it needs:
# Debian packages, the Rust build, and a Python venv with the real SDKs.
#
#   ./scripts/test.sh
#
# Environment:
#   CARGO_TARGET_DIR   build directory (default /var/tmp/wrenn-target, kept
#                      between runs so rebuilds are incremental; emptied
#                      when it grows past WRENN_TARGET_MAX_GB, default 40)
#   WRENN_TEST_VENV    Python venv for the SDK tests (default /var/tmp/wrenn-test-venv)
#   WRENN_TEST_DATA    data directory holding the test `base` template, built
#                      with debootstrap on first use (default /var/tmp/wrenn-test-data)
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/wrenn-target}"
VENV="${WRENN_TEST_VENV:-/var/tmp/wrenn-test-venv}"
DATA="${WRENN_TEST_DATA:-/var/tmp/wrenn-test-data}"
step() { printf '\n==> %s\n' "$*"; }

step "Debian packages"
# debootstrap builds the base template; nftables, iproute2 and e2fsprogs are
# the namespace runtime's firewall, links and disks; lxcfs its sandboxes' own
# /proc/meminfo and CPUs; bubblewrap and crun are what the agent benchmark
# compares against.
packages=(ca-certificates gcc procps postgresql debootstrap nftables iproute2 e2fsprogs lxcfs curl bubblewrap crun)
python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing Debian packages: ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
echo "ok"

step "Python venv with the SDKs under test ($VENV)"
if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -r tests/sdk/requirements.txt
"$VENV/bin/pip" install -q --disable-pip-version-check --ignore-requires-python wrenn==0.3.0
echo "ok"

step "Build"
# A kept build directory grows with every change built into it (stale
# artifacts, incremental sessions: 70 GB after a day's work was seen, on a
# disk left 92 % full). Past WRENN_TARGET_MAX_GB (default 40) it is emptied
# first, at the cost of one build from nothing (about 15 minutes).
max_gb="${WRENN_TARGET_MAX_GB:-40}"
if [[ -d "$CARGO_TARGET_DIR" ]]; then
  used_kb=$(du -sk "$CARGO_TARGET_DIR" | cut -f1)
  if (( used_kb > max_gb * 1024 * 1024 )); then
    echo "$CARGO_TARGET_DIR holds $((used_kb / 1024 / 1024)) GB (over $max_gb): emptying it"
    cargo clean
  fi
fi
cargo build --workspace --bins --tests

step "The base template for sandbox tests ($DATA)"
"$CARGO_TARGET_DIR/debug/wrenn" --data-dir "$DATA" template build base
export WRENN_TEST_TEMPLATES="$DATA/templates"

step "A throwaway PostgreSQL for the store tests"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PGDIR=$(mktemp -d /var/tmp/wrenn-test-pg.XXXXXX)
chown postgres "$PGDIR"
runuser -u postgres -- "$PGBIN/initdb" -D "$PGDIR/data" -A trust -U wrenn >/dev/null
PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/log" -w \
  -o "-k $PGDIR -p $PGPORT -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
stop_pg() { runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDIR/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$PGDIR"; }
trap stop_pg EXIT
export WRENN_TEST_PG_URL="postgres://wrenn@127.0.0.1:$PGPORT/postgres"
# The chaos test runs (and kills) a PostgreSQL of its own from these.
export WRENN_TEST_PGBIN="$PGBIN"
echo "PostgreSQL on 127.0.0.1:$PGPORT"

step "Rust tests (unit and integration)"
cargo test --workspace

step "SDK tests (e2b and wrenn from PyPI against the real binaries)"
WRENN_ENVD_BIN="$CARGO_TARGET_DIR/debug/envd" WRENN_BIN="$CARGO_TARGET_DIR/debug/wrenn" \
  "$VENV/bin/python" -m pytest tests/sdk -q -p no:cacheprovider
