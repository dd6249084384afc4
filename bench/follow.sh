#!/usr/bin/env bash
# Continuous mode under load: `generate --follow` lands 1-second files at RATE rows/s for
# DURATION while `run --follow` ingests, aggregates and loads them into the CQL test server
# (same machine). Reports freshness p50/p99 (landing -> acknowledged by ScyllaDB), RSS after
# 30 s and at the end, the backlog, and each day's live file count; JSON in bench/results/.
# Usage: bench/follow.sh [RATE] [DURATION]   (defaults 50000 rows/s, 120s; env BENCH_TMP, KEEP=1)
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-50000}
DURATION=${2:-120s}
BIN=${BIN:-target/release/pipeline}
CQL=${CQL:-target/release/cql-test-server}
[ -x "$BIN" ] && [ -x "$CQL" ] || { echo "build first: make release" >&2; exit 1; }

tmp=$(mktemp -d "${BENCH_TMP:-/tmp}/pipeline-follow.XXXXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$CQL" --port "$port" > "$tmp/cql.log" 2>&1 &
cql_pid=$!
follow_pid=
trap 'kill $cql_pid $follow_pid 2>/dev/null; [ "${KEEP:-0}" = 1 ] || rm -rf "$tmp"' EXIT
for _ in $(seq 50); do grep -q listening "$tmp/cql.log" && break; sleep 0.1; done
export SCYLLA_URI=127.0.0.1:$port
data="$tmp/data"

echo "bench-follow: $RATE rows/s in 1-s files for $DURATION, data in $tmp, $(nproc) cores"
"$BIN" --data-dir "$data" --json --no-progress run --follow --interval 1s > "$tmp/batches.jsonl" 2> "$tmp/follow.err" &
follow_pid=$!
# RSS of the follow process, every second: "<seconds since start> <KiB>".
( s=0; while kill -0 $follow_pid 2>/dev/null; do
    awk -v s=$s '/VmRSS/{print s, $2}' /proc/$follow_pid/status 2>/dev/null || true
    sleep 1; s=$((s + 1)); done ) > "$tmp/rss.txt" &
"$BIN" --data-dir "$data" --json --no-progress generate --follow --rate "$RATE" --rows-per-file "$RATE" \
  --duration "$DURATION" --customers 100000 --dirty-rate 0.01 > "$tmp/producer.json"
# Let the last files through, then stop it as an operator would.
sleep 8
kill -TERM $follow_pid
wait $follow_pid
follow_pid=

mkdir -p bench/results
result="bench/results/$(date -u +%Y%m%dT%H%M%SZ)-follow-R${RATE}.json"
python3 - "$tmp" "$RATE" "$DURATION" "$result" <<'PY'
import json, os, sys, glob, collections
tmp, rate, duration, result = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
lines = [json.loads(l) for l in open(f"{tmp}/batches.jsonl") if l.strip()]
batches, summary = lines[:-1], lines[-1]
producer = json.load(open(f"{tmp}/producer.json"))
rss = [tuple(map(int, l.split())) for l in open(f"{tmp}/rss.txt") if l.strip()]
at30 = next((k for s, k in rss if s >= 30), None)
end = rss[-1][1] if rss else None
peak_after_30 = max((k for s, k in rss if s >= 30), default=None)
# Live files per day of customer_transactions: replay the commit files.
live = {}
log = f"{tmp}/data/customer_transactions/_delta_log"
for f in sorted(glob.glob(f"{log}/*.json")):
    for line in open(f):
        a = json.loads(line)
        if "add" in a: live[a["add"]["path"]] = a["add"]["partitionValues"].get("transaction_date")
        if "remove" in a: live.pop(a["remove"]["path"], None)
per_day = collections.Counter(live.values())
backlog = [b["backlog_files"] for b in batches]
half = len(batches) // 2
doc = {"rate": rate, "duration": duration, "cores": os.cpu_count(), "producer": producer,
       "summary": summary, "micro_batches": len(batches),
       "files_per_batch_first_half": sum(b["files"] for b in batches[:half]) / max(half, 1),
       "files_per_batch_second_half": sum(b["files"] for b in batches[half:]) / max(len(batches) - half, 1),
       "max_backlog_files": max(backlog, default=0),
       "rss_kib_at_30s": at30, "rss_kib_end": end, "rss_kib_peak_after_30s": peak_after_30,
       "rss_end_vs_30s": round(end / at30, 3) if at30 and end else None,
       "live_files_per_day": dict(per_day), "commits": len(glob.glob(f"{log}/*.json")),
       "checkpoints": len(glob.glob(f"{log}/*.checkpoint.parquet"))}
json.dump(doc, open(result, "w"), indent=2)
f = summary["freshness"]
print(f"producer: {producer['rows']:,} rows in {producer['files']} files, {producer['rows_per_sec']:,.0f} rows/s, {producer['late_ticks']} late tick(s)")
print(f"follow: {summary['micro_batches']} micro-batches, {summary['rows_in']:,} rows in, {summary['rows_loaded']:,} loaded, "
      f"{summary['errors']} error(s), backlog at end {summary['backlog_files']}, max backlog {doc['max_backlog_files']} file(s)")
print(f"files per micro-batch: first half {doc['files_per_batch_first_half']:.2f}, second half {doc['files_per_batch_second_half']:.2f}")
print(f"freshness over {f['files']} files: p50 {f['p50_s']:.2f} s, p99 {f['p99_s']:.2f} s, max {f['max_s']:.2f} s")
print(f"RSS: {at30/1024 if at30 else 0:.1f} MiB at 30 s, {end/1024 if end else 0:.1f} MiB at the end "
      f"(ratio {doc['rss_end_vs_30s']}), peak after 30 s {peak_after_30/1024 if peak_after_30 else 0:.1f} MiB")
print(f"live files per day: {dict(per_day)}; {doc['commits']} commits, {doc['checkpoints']} checkpoint(s)")
print(f"written {result}")
PY
