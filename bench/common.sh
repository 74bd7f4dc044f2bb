# Sourced by the bench scripts: services up, a release build, and a stampede
# of its own (database, topic prefix, groups, Redis keys named after $1) that
# is dropped on exit (database, topics, Redis keys) along with every process
# listed in $pids.
bash scripts/services.sh up
cargo build --release --locked
bin=target/release/stampede
tag=$1$(date +%s)
export STAMPEDE_DATABASE__URL=postgres://postgres@127.0.0.1:5432/$tag
export STAMPEDE_KAFKA__TOPIC_PREFIX=$tag.
export STAMPEDE_KAFKA__GROUP_ID=$tag
export STAMPEDE_REDIS__KEY_PREFIX=$tag
export STAMPEDE_LOG__FILTER=warn
"$bin" migrate >/dev/null
"$bin" topics create >/dev/null
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "$bin" topics delete --yes >/dev/null 2>&1 || true
  redis-cli -h 127.0.0.1 --scan --pattern "$tag:*" 2>/dev/null | xargs -r -n 1000 redis-cli -h 127.0.0.1 del >/dev/null 2>&1 || true
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS \"$tag\" WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT
