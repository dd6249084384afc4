#!/usr/bin/env bash
# The Kafka source at a sustained rate, beside the file source on the same machine: a producer
# sends RATE rows/s for DURATION seconds (ticks of RATE/2 rows; `generate --follow --to
# kafka://...` to a tansu broker on loopback, topics in memory, 3 partitions; or landing files),
# while `run --follow` ingests, aggregates and loads them into the CQL test server. Reports per
# source: rows ingested, the producer's achieved rate, freshness p50/p99/max (Kafka: message
# timestamp -> acknowledged by ScyllaDB; files: landing -> acknowledged), the backlog at the
# end, and `verify`. JSON in bench/results/.
# Usage: bench/kafka.sh [RATE] [DURATION_SECONDS]   (defaults 50000, 60; env BENCH_TMP, KEEP=1,
#        SOURCES="kafka files"; `kafka-arrow` is the Kafka source fed Arrow IPC messages)
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-50000}
DURATION=${2:-60}
BIN=${BIN:-target/release/pipeline}
CQL=${CQL:-target/release/cql-test-server}
TANSU=${TANSU:-/var/tmp/pipeline-tools/tansu-0.6.0/bin/tansu}
[ -x "$BIN" ] && [ -x "$CQL" ] || { echo "build first: make release" >&2; exit 1; }
[ -x "$TANSU" ] || { echo "needs tansu: make tansu" >&2; exit 1; }

tmp=$(mktemp -d "${BENCH_TMP:-/tmp}/pipeline-kafka.XXXXXX")
free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; [ "${KEEP:-0}" = 1 ] || rm -rf "$tmp"' EXIT
cql_port=$(free)
"$CQL" --port "$cql_port" > "$tmp/cql.log" 2>&1 &
pids+=($!)
kafka_port=$(free)
"$TANSU" broker --listener-url "tcp://127.0.0.1:$kafka_port" --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
  --storage-engine memory://tansu/ > "$tmp/tansu.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q listening "$tmp/cql.log" && (echo > "/dev/tcp/127.0.0.1/$kafka_port") 2>/dev/null && break; sleep 0.1; done
export SCYLLA_URI=127.0.0.1:$cql_port
tick=$((RATE / 2))

bench() { # $1: kafka|kafka-arrow|files
  local src=$1 data="$tmp/$1" keyspace="bench_${1//-/_}" source_args=() to_args=()
  case "$src" in
    kafka|kafka-arrow)
      source_args=(--source "kafka://127.0.0.1:$kafka_port/$src")
      to_args=(--to "kafka://127.0.0.1:$kafka_port/$src" --partitions 3)
      [ "$src" = kafka-arrow ] && to_args+=(--message-format arrow) ;;
  esac
  echo "== $src: $RATE rows/s for ${DURATION}s (ticks of $tick rows), $(nproc) cores"
  SCYLLA_KEYSPACE=$keyspace "$BIN" --data-dir "$data" --json --no-progress run --follow --interval 500ms \
    "${source_args[@]}" > "$tmp/$src.batches.jsonl" 2> "$tmp/$src.follow.err" &
  local follow=$!
  pids+=($follow)
  "$BIN" --data-dir "$data" --json --no-progress generate --follow "${to_args[@]}" --rate "$RATE" \
    --rows-per-file "$tick" --duration "${DURATION}s" --customers 100000 --dirty-rate 0.01 > "$tmp/$src.producer.json"
  sleep 8
  kill -TERM $follow
  wait $follow || true
  local rc=0
  SCYLLA_KEYSPACE=$keyspace "$BIN" --data-dir "$data" --no-progress verify > "$tmp/$src.verify.txt" 2>&1 || rc=$?
  echo "$rc" > "$tmp/$src.verify_rc"
}
for s in ${SOURCES:-kafka files}; do bench "$s"; done

mkdir -p bench/results
result="bench/results/$(date -u +%Y%m%dT%H%M%SZ)-kafka-R${RATE}-${DURATION}s.json"
python3 - "$tmp" "$RATE" "$DURATION" "$result" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "${SOURCES:-kafka files}" <<'PY'
import json, sys
tmp, rate, duration, result, rev, sources = sys.argv[1:]
doc = {"rate": int(rate), "duration_s": int(duration), "commit": rev, "sources": {}}
for src in sources.split():
    lines = [json.loads(l) for l in open(f"{tmp}/{src}.batches.jsonl") if l.strip()]
    summary = lines[-1]
    producer = json.load(open(f"{tmp}/{src}.producer.json"))
    f = summary["freshness"]
    doc["sources"][src] = {
        "producer_rows": producer["rows"], "producer_messages": producer.get("messages"),
        "producer_rows_per_sec": producer["rows_per_sec"], "late_ticks": producer["late_ticks"],
        "rows_in": summary["rows_in"], "rows_loaded": summary["rows_loaded"],
        "micro_batches": summary["micro_batches"], "errors": summary["errors"],
        "backlog_files_at_end": summary["backlog_files"],
        "freshness_p50_s": f["p50_s"], "freshness_p99_s": f["p99_s"], "freshness_max_s": f["max_s"],
        "verify_exit_code": int(open(f"{tmp}/{src}.verify_rc").read()),
    }
json.dump(doc, open(result, "w"), indent=2)
for src, s in doc["sources"].items():
    print(f"{src}: producer {s['producer_rows']:,} rows at {s['producer_rows_per_sec']:,.0f} rows/s "
          f"({s['late_ticks']} late ticks); ingested {s['rows_in']:,} rows in {s['micro_batches']} micro-batches, "
          f"{s['errors']} error(s), backlog at end {s['backlog_files_at_end']}; freshness p50 {s['freshness_p50_s']:.2f} s, "
          f"p99 {s['freshness_p99_s']:.2f} s, max {s['freshness_max_s']:.2f} s; verify exit {s['verify_exit_code']}")
print(f"written {result}")
PY
