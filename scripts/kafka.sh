#!/usr/bin/env bash
# Apache Kafka (KRaft, no ZooKeeper) from its jars on Maven Central: no Docker,
# no tarball. The release is pinned in scripts/kafka/pom.xml; the jars are
# resolved once with Maven into a cache directory, so every later start runs
# without the network.
#
#   scripts/kafka.sh up              one combined broker+controller on 127.0.0.1:9092
#   scripts/kafka.sh down | status
#   scripts/kafka.sh cluster up      three brokers (127.0.0.1:19092-19094), RF 3, min ISR 2
#   scripts/kafka.sh cluster down | status
#   scripts/kafka.sh cluster kill N  SIGKILL node N (1-3); `cluster start N` brings it back
#   scripts/kafka.sh jars            only resolve (and cache) the jars
#
# Environment:
#   STAMPEDE_SERVICES_DIR  where data, logs and pid files go (default .services)
#   STAMPEDE_CACHE_DIR     where the jars are cached (default ~/.cache/stampede)
#   STAMPEDE_KAFKA_PORT    the single node's port (default 9092; its controller
#                          listens on the next one)
#   KAFKA_HEAP             single node heap (default 768m); cluster nodes use 320m
#   KAFKA_JIT              tiered (default, the release's): the JVM compiles
#                          hot code with C1, then the hottest with C2; c1:
#                          with C1 only (see kafka_jvm_opts)
#
# Data lives under $STAMPEDE_SERVICES_DIR/kafka (single node) and
# $STAMPEDE_SERVICES_DIR/kafka-cluster/node-N: it survives a broker restart;
# remove the directory for a fresh broker.
#
# Sourced by other scripts (scripts/services.sh, scripts/chaos.sh) for its
# functions; run directly for the commands above.

kafka_here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kafka_state=${STAMPEDE_SERVICES_DIR:-$kafka_here/.services}
kafka_cache=${STAMPEDE_CACHE_DIR:-$HOME/.cache/stampede}
kafka_pom=$kafka_here/scripts/kafka/pom.xml
kafka_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$kafka_pom")
kafka_libs=$kafka_cache/kafka-$kafka_version/libs
# The largest message the broker takes: what a worker may have to dead-letter
# (a request up to kafka.max_message_bytes, default 64 KiB, plus headers) fits
# with room; the producers' own limit (message.max.bytes) is the same 1 MB.
kafka_message_max_bytes=1048588
cluster_nodes="1 2 3"

ksay() { printf '[kafka] %s\n' "$*"; }
kfail() { printf '[kafka] ERROR: %s\n' "$*" >&2; exit 1; }

kafka_apt_install() {
  command -v apt-get >/dev/null || kfail "apt-get not found: install $* yourself"
  if [ -z "${kafka_apt_updated:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    kafka_apt_updated=1
  fi
  ksay "installing $* (Debian packages)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

java_major() {
  java -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit}'
}

kafka_need_java() {
  command -v java >/dev/null || kafka_apt_install openjdk-17-jre-headless
  local major
  major=$(java_major)
  [ -n "$major" ] || kfail "could not read the Java version from 'java -version'"
  if (( major < 17 )); then
    kfail "Apache Kafka $kafka_version needs Java 17 or newer; 'java' here is Java $major ($(command -v java)). Install openjdk-17-jre-headless and put it first on PATH (or set JAVA_HOME)."
  fi
}

# Resolves the broker's jars into $kafka_libs (once; a marker says complete).
kafka_jars() {
  if [ -f "$kafka_libs/.complete" ]; then return; fi
  kafka_need_java
  command -v mvn >/dev/null || kafka_apt_install maven
  ksay "resolving Apache Kafka $kafka_version from Maven Central (once; about 80 MB, cached in $kafka_libs)"
  rm -rf "$kafka_libs"
  mkdir -p "$kafka_libs" "$kafka_state"
  local log=$kafka_state/kafka-jars.log
  if ! mvn -B -f "$kafka_pom" dependency:copy-dependencies \
      -DoutputDirectory="$kafka_libs" -DincludeScope=runtime >"$log" 2>&1; then
    if grep -qiE 'Could not transfer|Unknown ?host|Connection (refused|timed out)|Network is unreachable|No route to host|resolve dependencies.*central' "$log"; then
      kfail "cannot reach Maven Central to fetch Apache Kafka $kafka_version (log: $log)"
    fi
    tail -n 20 "$log" >&2
    kfail "Maven could not resolve Apache Kafka $kafka_version (log: $log)"
  fi
  ls "$kafka_libs"/kafka_2.13-"$kafka_version".jar >/dev/null 2>&1 || kfail "kafka_2.13-$kafka_version.jar missing after resolution (log: $log)"
  touch "$kafka_libs/.complete"
  ksay "cached $(ls "$kafka_libs" | wc -l) jars"
}

# The JVM options of the release's kafka-run-class.sh, into the array jvm;
# with KAFKA_JIT=c1, C1 only (-XX:TieredStopAtLevel=1). Measured on two
# shared cores (bench/FINDINGS.md, "The broker's compiler"): with the default, C2's
# compiles took 28-72% of the broker's CPU over short orders runs,
# run after run; with C1 only the broker spent about half as much per order
# and per passthrough message, but a third more per small produce request
# (the gateway's), where C2's code is faster.
kafka_jvm_opts() { # heap
  local jit=()
  case ${KAFKA_JIT:-tiered} in
    c1) jit=(-XX:TieredStopAtLevel=1) ;;
    tiered) ;;
    *) ksay "ERROR: KAFKA_JIT must be c1 or tiered, not '$KAFKA_JIT'"; return 1 ;;
  esac
  jvm=(-Xms"$1" -Xmx"$1" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent "${jit[@]}"
    -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$kafka_here/scripts/kafka/log4j2.properties"
    -cp "$kafka_libs/*")
}

kafka_java() { # heap, main class, args...
  local jvm
  kafka_jvm_opts "$1" || return 1; shift
  java "${jvm[@]}" "$@"
}

kafka_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Whether a Kafka broker on 127.0.0.1:PORT answers metadata, with at least N brokers.
kafka_answers() { python3 "$kafka_here/scripts/kafka/metadata.py" brokers "127.0.0.1:$1" "${2:-1}" >/dev/null 2>&1; }

kafka_wait() { # port, brokers, seconds, log
  # A broker with many partitions spends minutes loading them; while its log
  # grows it is making progress, so the deadline moves (up to 15 minutes).
  local deadline=$((SECONDS + $3)) cap=$((SECONDS + 900)) size=0 now told=$SECONDS
  until kafka_answers "$1" "$2"; do
    now=$(stat -c %s "$4" 2>/dev/null || echo 0)
    if (( now != size )); then
      size=$now
      deadline=$((SECONDS + $3 < cap ? SECONDS + $3 : cap))
    fi
    if (( SECONDS >= deadline )); then
      [ -f "$4" ] && tail -n 30 "$4" >&2
      kfail "no Kafka metadata answer with $2 broker(s) on 127.0.0.1:$1 within $3 s of its last log line (log: $4)"
    fi
    if (( SECONDS - told >= 30 )); then
      told=$SECONDS
      ksay "still starting on 127.0.0.1:$1 (loading its partitions; log: $4)"
    fi
    sleep 0.5
  done
}

# Who holds a TCP port, for the error message.
port_holder() {
  if command -v ss >/dev/null; then
    ss -ltnpH "sport = :$1" 2>/dev/null | sed -n 's/.*users:((\(.*\))).*/\1/p' | head -n 1
  fi
}

# Writes a node's server.properties. Args: dir, node id, broker port,
# controller port, voters, replication factor, min ISR.
kafka_properties() {
  local dir=$1 id=$2 port=$3 cport=$4 voters=$5 rf=$6 isr=$7
  cat >"$dir/server.properties" <<EOF
# Written by scripts/kafka.sh; rewritten at every start.
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
# Topics are made by 'stampede topics create', never by a stray producer.
auto.create.topics.enable=false
num.partitions=8
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=16
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
# A group starts at once, and tests may use short session timeouts.
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
message.max.bytes=$kafka_message_max_bytes
replica.fetch.max.bytes=$kafka_message_max_bytes
# Two cores shared with everything else.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=24
EOF
}

kafka_pidfile() { echo "$1/kafka.pid"; }

kafka_running() { # dir
  local pidfile
  pidfile=$(kafka_pidfile "$1")
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

# Formats (first time only) and starts one node. Args: dir, node id, broker
# port, controller port, voters, rf, isr, heap, cluster id file.
kafka_node_start() {
  local dir=$1 id=$2 port=$3 cport=$4 voters=$5 rf=$6 isr=$7 heap=$8 idfile=$9
  if kafka_running "$dir"; then return; fi
  if kafka_port_open "$port"; then
    kfail "port $port is held by something else ($(port_holder "$port" || true)); stop it or free the port"
  fi
  if kafka_port_open "$cport"; then
    kfail "controller port $cport is held by something else ($(port_holder "$cport" || true))"
  fi
  mkdir -p "$dir/data"
  kafka_properties "$dir" "$id" "$port" "$cport" "$voters" "$rf" "$isr"
  if [ ! -f "$dir/data/meta.properties" ]; then
    if [ ! -s "$idfile" ]; then
      kafka_java 128m kafka.tools.StorageTool random-uuid | tail -n 1 >"$idfile"
    fi
    kafka_java 256m kafka.tools.StorageTool format --ignore-formatted \
      -t "$(cat "$idfile")" -c "$dir/server.properties" >"$dir/format.log" 2>&1 \
      || { cat "$dir/format.log" >&2; kfail "formatting node $id failed"; }
  fi
  ksay "starting Apache Kafka $kafka_version node $id on 127.0.0.1:$port (data $dir/data)"
  local jvm
  kafka_jvm_opts "$heap" || return 1
  nohup java "${jvm[@]}" kafka.Kafka "$dir/server.properties" >"$dir/kafka.log" 2>&1 </dev/null &
  echo $! >"$(kafka_pidfile "$dir")"
}

kafka_node_stop() { # dir, signal
  local pidfile pid
  pidfile=$(kafka_pidfile "$1")
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "-${2:-TERM}" "$pid" 2>/dev/null || true
    # A controlled shutdown hands leadership over first: give it time.
    local deadline=$((SECONDS + 60))
    while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$pidfile"
}

# --- single node on 9092 -----------------------------------------------------

single_dir=$kafka_state/kafka
single_port=${STAMPEDE_KAFKA_PORT:-9092}

kafka_up() {
  if kafka_running "$single_dir" && kafka_answers $single_port; then ksay "Apache Kafka already running on 127.0.0.1:$single_port"; return; fi
  if ! kafka_running "$single_dir" && kafka_port_open $single_port; then
    if kafka_answers $single_port; then ksay "a Kafka broker (not started here) already answers on 127.0.0.1:$single_port: using it"; return; fi
    kfail "port $single_port is held by something else ($(port_holder $single_port || true)), which does not answer as a Kafka broker; stop it or free the port"
  fi
  kafka_need_java
  kafka_jars
  mkdir -p "$single_dir"
  kafka_node_start "$single_dir" 1 $single_port $((single_port + 1)) "1@127.0.0.1:$((single_port + 1))" 1 1 "${KAFKA_HEAP:-768m}" "$single_dir/cluster.id"
  kafka_wait $single_port 1 120 "$single_dir/kafka.log"
  ksay "Apache Kafka $kafka_version answers on 127.0.0.1:$single_port"
}

kafka_down() {
  if kafka_running "$single_dir"; then kafka_node_stop "$single_dir" TERM; ksay "stopped Apache Kafka (127.0.0.1:$single_port)"; fi
}

kafka_status() {
  if kafka_answers $single_port; then
    local how="not started by this script"
    kafka_running "$single_dir" && how="kafka.Kafka, pid $(cat "$(kafka_pidfile "$single_dir")")"
    ksay "Apache Kafka: up on 127.0.0.1:$single_port ($how)"
  else
    ksay "Apache Kafka: down"
    return 1
  fi
}

# --- three-node cluster for fault runs ----------------------------------------

cluster_dir=$kafka_state/kafka-cluster
cluster_port() { echo $((19091 + $1)); }
cluster_cport() { echo $((19191 + $1)); }
cluster_brokers() { echo "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094"; }
cluster_voters() {
  local v="" n
  for n in $cluster_nodes; do v="$v${v:+,}$n@127.0.0.1:$(cluster_cport "$n")"; done
  echo "$v"
}

cluster_start_node() {
  kafka_node_start "$cluster_dir/node-$1" "$1" "$(cluster_port "$1")" "$(cluster_cport "$1")" \
    "$(cluster_voters)" 3 2 "${KAFKA_CLUSTER_HEAP:-320m}" "$cluster_dir/cluster.id"
}

kafka_cluster_up() {
  kafka_need_java
  kafka_jars
  mkdir -p "$cluster_dir"
  local n
  for n in $cluster_nodes; do cluster_start_node "$n"; done
  kafka_wait 19092 3 180 "$cluster_dir/node-1/kafka.log"
  ksay "three-broker cluster answers: $(cluster_brokers) (replication factor 3, min.insync.replicas 2)"
}

kafka_cluster_down() {
  local n
  for n in $cluster_nodes; do
    if kafka_running "$cluster_dir/node-$n"; then kafka_node_stop "$cluster_dir/node-$n" TERM; ksay "stopped cluster node $n"; fi
  done
}

kafka_cluster_status() {
  local n up=0
  for n in $cluster_nodes; do
    if kafka_running "$cluster_dir/node-$n" && kafka_port_open "$(cluster_port "$n")"; then up=$((up + 1)); ksay "cluster node $n: up on 127.0.0.1:$(cluster_port "$n")"; else ksay "cluster node $n: down"; fi
  done
  (( up > 0 ))
}

kafka_main() {
  case "${1:-}" in
    up) kafka_up ;;
    down) kafka_down ;;
    status) kafka_status ;;
    jars) kafka_jars ;;
    cluster)
      case "${2:-}" in
        up) kafka_cluster_up ;;
        down) kafka_cluster_down ;;
        status) kafka_cluster_status ;;
        kill) [[ "${3:-}" =~ ^[123]$ ]] || kfail "cluster kill takes a node number, 1-3"
              kafka_node_stop "$cluster_dir/node-$3" KILL; ksay "killed cluster node $3" ;;
        start) [[ "${3:-}" =~ ^[123]$ ]] || kfail "cluster start takes a node number, 1-3"
               cluster_start_node "$3"; kafka_wait "$(cluster_port "$3")" 3 120 "$cluster_dir/node-$3/kafka.log"; ksay "cluster node $3 back" ;;
        *) echo "usage: $0 cluster up|down|status|kill N|start N" >&2; exit 2 ;;
      esac ;;
    -h|--help|help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) echo "usage: $0 up|down|status|jars|cluster up|down|status|kill N|start N (--help)" >&2; exit 2 ;;
  esac
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  kafka_main "$@"
fi
