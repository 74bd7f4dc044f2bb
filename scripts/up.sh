#!/usr/bin/env bash
# Brings stampede up on this machine: services, build, migrations, topics,
# then `stampede run` (gateway on 127.0.0.1:8080 + every worker) in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh up
echo "[up] building stampede (release)"
cargo build --release --locked
bin=target/release/stampede
"$bin" migrate
"$bin" topics create
echo "[up] starting stampede: gateway http://127.0.0.1:8080, workers charge, coupon, order, stats (ctrl-c stops)"
exec "$bin" run
