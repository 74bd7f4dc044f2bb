#!/usr/bin/env bash
# Checks that scripts/kafka.sh fails plainly (a message, a non-zero exit) where
# it cannot start Apache Kafka: Maven Central unreachable, a Java older than
# 17, a port held by something that is not a Kafka broker. Run by
# scripts/test.sh; touches nothing of the running services (own folders,
# own ports).
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
holder=""
trap '[ -n "$holder" ] && kill "$holder" 2>/dev/null; rm -rf "$scratch"' EXIT
failures=0

# expect NAME PATTERN command...: the command must exit non-zero and say PATTERN.
expect() {
  local name=$1 pattern=$2; shift 2
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  if (( rc != 0 )) && grep -q -- "$pattern" <<<"$out"; then
    echo "PASS $name"
  else
    echo "FAIL $name (exit $rc): $out"
    failures=$((failures + 1))
  fi
}

# Maven Central out of reach: every repository mirrored to a closed port, an
# empty local repository and jar cache.
mkdir -p "$scratch/home/.m2"
cat >"$scratch/home/.m2/settings.xml" <<'XML'
<settings><mirrors><mirror><id>nowhere</id><mirrorOf>*</mirrorOf><url>http://127.0.0.1:1/maven2</url></mirror></mirrors></settings>
XML
expect "Maven Central unreachable" "cannot reach Maven Central" \
  env MAVEN_OPTS="-Duser.home=$scratch/home" STAMPEDE_CACHE_DIR="$scratch/cache" \
  STAMPEDE_SERVICES_DIR="$scratch/svc1" bash scripts/kafka.sh jars

# A Java older than 17 first on PATH.
mkdir -p "$scratch/oldjava"
printf '#!/bin/sh\necho '\''openjdk version "11.0.21" 2023-10-17'\'' >&2\n' >"$scratch/oldjava/java"
chmod +x "$scratch/oldjava/java"
expect "Java older than 17" "needs Java 17 or newer" \
  env PATH="$scratch/oldjava:$PATH" STAMPEDE_KAFKA_PORT=19692 \
  STAMPEDE_SERVICES_DIR="$scratch/svc2" bash scripts/kafka.sh up

# The broker's port held by a plain TCP listener.
python3 -c 'import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", 19694)); s.listen(); time.sleep(120)' &
holder=$!
until (exec 3<>/dev/tcp/127.0.0.1/19694) 2>/dev/null; do sleep 0.1; done
expect "port held by something else" "is held by something else" \
  env STAMPEDE_KAFKA_PORT=19694 STAMPEDE_SERVICES_DIR="$scratch/svc3" bash scripts/kafka.sh up

echo "$((3 - failures)) passed, $failures failed"
(( failures == 0 ))
