#!/usr/bin/env bash
# Runs every check and test of stampede against real services (started or
# installed here when missing): formatting, lints, contract files, unit,
# property and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh up
echo "[test] scripts/check-services.sh (plain errors where Kafka cannot start)"
bash scripts/check-services.sh
echo "[test] cargo fmt --check"
cargo fmt --check
echo "[test] cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "[test] cargo test"
cargo test --locked --all-targets -- --test-threads "${STAMPEDE_TEST_THREADS:-4}"
