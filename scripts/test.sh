#!/usr/bin/env bash
# Runs every check and test of stampede against real services (started or
# installed here when missing): formatting, lints, contract files, unit,
# property and integration tests (a real browser included: Chromium), then a
# short chaos round (scripts/chaos.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh up
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "[test] installing Chromium and ChromeDriver (Debian packages) for tests/browser.rs"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null
fi
echo "[test] scripts/check-services.sh (plain errors where Kafka cannot start)"
bash scripts/check-services.sh
echo "[test] cargo fmt --check"
cargo fmt --check
echo "[test] cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "[test] cargo test"
cargo test --locked --all-targets -- --test-threads "${STAMPEDE_TEST_THREADS:-4}"
echo "[test] a short chaos round on Apache Kafka: every fault kind once under load (scripts/chaos.sh)"
chaos_log=$(mktemp)
if CHAOS_ROUNDS=1 CHAOS_REQUESTS=60000 CHAOS_RATE=1000 CHAOS_KILLS=2 \
    CHAOS_BIN="$PWD/target/debug/stampede" bash scripts/chaos.sh >"$chaos_log" 2>&1; then
  grep '^\[chaos\]' "$chaos_log" | grep -v 'WARN\|ERROR'
  echo "chaos: 1 passed, 0 failed"
else
  tail -n 60 "$chaos_log"
  echo "chaos: 0 passed, 1 failed"
  exit 1
fi
