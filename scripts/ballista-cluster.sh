#!/usr/bin/env bash
# A Ballista cluster on loopback, for trying the distributed engine by hand (issue 28): the
# scheduler on PORT and EXECUTORS (2) executors, each with its own ports and work dir, until
# Ctrl-C (then every process stops and the work dirs go). The executors read object storage
# with the AWS_* variables of this shell (e.g. a local SeaweedFS: AWS_ENDPOINT,
# AWS_ALLOW_HTTP=true, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), as ballista-core 55's
# object store registry builds its S3 client with AmazonS3Builder::from_env.
# Usage: scripts/ballista-cluster.sh [PORT]   (env EXECUTORS, BALLISTA_DIR)
set -euo pipefail
PORT=${1:-50050}
N=${EXECUTORS:-2}
BIN=${BALLISTA_DIR:-/var/tmp/pipeline-tools/ballista-55.0.0}/bin
for b in ballista-scheduler ballista-executor; do
  [ -x "$BIN/$b" ] || { echo "no $BIN/$b: make ballista installs it" >&2; exit 1; }
done
free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
api() { python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())' "$1" 2>/dev/null; }
work=$(mktemp -d "${TMPDIR:-/tmp}/ballista-cluster.XXXXXX")
pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap stop EXIT
trap 'exit 130' INT TERM

"$BIN/ballista-scheduler" --bind-host 127.0.0.1 --external-host 127.0.0.1 -p "$PORT" \
  > "$work/scheduler.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do api "http://127.0.0.1:$PORT/api/state" > /dev/null && break; sleep 0.1; done
api "http://127.0.0.1:$PORT/api/state" > /dev/null || { echo "the scheduler did not start:" >&2; cat "$work/scheduler.log" >&2; exit 1; }

for i in $(seq "$N"); do
  mkdir -p "$work/executor-$i"
  "$BIN/ballista-executor" --scheduler-host 127.0.0.1 --scheduler-port "$PORT" \
    --bind-host 127.0.0.1 --external-host 127.0.0.1 -p "$(free)" --bind-grpc-port "$(free)" \
    --bind-health-port "$(free)" --work-dir "$work/executor-$i" --concurrent-tasks 1 \
    > "$work/executor-$i.log" 2>&1 &
  pids+=($!)
done
registered=0
for _ in $(seq 200); do
  registered=$(api "http://127.0.0.1:$PORT/api/executors" | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0)
  [ "$registered" -ge "$N" ] && break
  sleep 0.1
done
[ "$registered" -ge "$N" ] || { echo "only $registered of $N executors registered:" >&2; tail -5 "$work"/executor-*.log >&2; exit 1; }
echo "Ballista cluster: scheduler df://127.0.0.1:$PORT (REST http://127.0.0.1:$PORT/api/executors), $N executors; logs in $work; Ctrl-C stops it"
wait
