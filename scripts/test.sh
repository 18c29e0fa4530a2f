#!/usr/bin/env bash
# Runs Herald's whole test suite on a fresh machine: installs what is missing (redis-server,
# openssl, chromium, and Python's `redis` package for the interoperability test), then runs
# every test.
# Tests start their own redis-server processes on free loopback ports; nothing else is needed.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v redis-server >/dev/null 2>&1; then
  echo "== installing redis-server"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server >/dev/null
  # The Debian package starts a system Redis on 6379; the tests do not use it.
fi
if ! command -v openssl >/dev/null 2>&1; then
  echo "== installing openssl (the TLS test makes its own certificates)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq openssl >/dev/null
fi
if ! command -v chromium >/dev/null 2>&1; then
  echo "== installing chromium (the gateway's status page test loads it headless)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium >/dev/null
fi
if ! python3 -c 'import redis' >/dev/null 2>&1; then
  echo "== installing Python's redis package (for the protocol interoperability test)"
  python3 -m pip install -q redis 2>/dev/null || python3 -m pip install -q --break-system-packages redis
fi

echo "== cargo test"
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked

echo "== examples (embedded broker; those that say \"Needs Redis\" are built by cargo test only)"
for example in crates/herald/examples/*.rs; do
  grep -q "Needs Redis" "$example" && continue
  name=$(basename "$example" .rs)
  echo "-- $name"
  cargo run --quiet --locked -p herald --example "$name" >/dev/null
done
