#!/usr/bin/env bash
# Continuous mode under load: `generate --follow` lands 1-second files at RATE rows/s for
# DURATION while `run --follow` ingests, aggregates and loads them into the CQL test server
# (same machine). Then, as an operator would check it: `verify` against the CQL test server,
# and a batch run over the same landing files in a fresh data dir, whose tables must equal the
# stream's. Reports freshness p50/p99 (landing -> acknowledged by ScyllaDB) over the session
# and over its last 10 minutes, micro-batch times and RSS by window (minutes 2-12 against the
# last 10 when the run is long enough, else the first and second half), the data dir against
# the tables' live files, the backlog; JSON in bench/results/.
# Usage: bench/follow.sh [RATE] [DURATION]   (defaults 50000 rows/s, 120s; env BENCH_TMP, KEEP=1,
#        FOLLOW_ARGS="--vacuum-retention 30min"). With KEEP=1, bench/windows.py BENCH_TMP/pipeline-follow.*/batches.jsonl
#        shows every window's micro-batch and step medians (what grows over a long run).
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-50000}
DURATION=${2:-120s}
BIN=${BIN:-target/release/pipeline}
CQL=${CQL:-target/release/cql-test-server}
PY=python3
[ -x target/seaweedfs-venv/bin/python ] && PY=target/seaweedfs-venv/bin/python
[ -x "$BIN" ] && [ -x "$CQL" ] || { echo "build first: make release" >&2; exit 1; }
$PY -c 'import deltalake' 2>/dev/null || { echo "needs delta-rs's Python binding: make seaweedfs" >&2; exit 1; }

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
# shellcheck disable=SC2086
"$BIN" --data-dir "$data" --json --no-progress run --follow --interval 1s ${FOLLOW_ARGS:-} \
  > "$tmp/batches.jsonl" 2> "$tmp/follow.err" &
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
du_data=$(du -sb --exclude=_raw --exclude=_scratch "$data" | cut -f1)
# Kept in a file too: a batch run below that fails (a full disk) must not lose it.
echo "$du_data" > "$tmp/du_data.txt"

echo "checking: verify, then a batch run over the same landing files"
verify_rc=0
"$BIN" --data-dir "$data" --no-progress verify > "$tmp/verify.txt" 2>&1 || verify_rc=$?
# Measured above: now the stream's replaced files go (contents unchanged), to make room for the
# batch run's tables and its spill (a 60-minute run at 50,000 rows/s needs ~35 GB for them,
# beside the stream's ~13 GB: have 55 GB free before a 60-minute run).
"$BIN" --data-dir "$data" --no-progress maintain --vacuum --retention-hours 0 --no-optimize > "$tmp/vacuum.txt" 2>&1
mkdir -p "$tmp/batch"
cp -al "$data/_raw" "$tmp/batch/_raw"
s=$(date +%s.%N)
"$BIN" --data-dir "$tmp/batch" --no-progress --json run --stages ingest,aggregate,profiles > "$tmp/batch.json"
batch_s=$(echo "$(date +%s.%N) - $s" | bc)
# Each table's content, in one order, hashed: the stream's against the batch run's.
for d in data batch; do
  for q in \
    "transactions|SELECT count(*), count(DISTINCT transaction_date), sum(amount), min(transaction_ts), max(transaction_ts) FROM customer_transactions" \
    "quarantine|SELECT rejection_reason, count(*) FROM customer_transactions_quarantine GROUP BY 1 ORDER BY 1" \
    "aggregates|SELECT * FROM customer_daily_aggregates ORDER BY customer_id, transaction_date" \
    "profiles|SELECT * FROM customer_profiles ORDER BY customer_id"; do
    "$BIN" --data-dir "$tmp/$d" sql --format csv "${q#*|}" | sha256sum | cut -c1-16 > "$tmp/$d.${q%%|*}.hash"
  done
done

mkdir -p bench/results
result="bench/results/$(date -u +%Y%m%dT%H%M%SZ)-follow-R${RATE}-${DURATION}.json"
$PY - "$tmp" "$RATE" "$DURATION" "$result" "$du_data" "$verify_rc" "$batch_s" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'PY'
import json, os, sys, glob, statistics
from deltalake import DeltaTable
tmp, rate, duration, result, du_data, verify_rc, batch_s, rev = sys.argv[1:]
rate, du_data, verify_rc, batch_s = int(rate), int(du_data), int(verify_rc), float(batch_s)
lines = [json.loads(l) for l in open(f"{tmp}/batches.jsonl") if l.strip()]
batches, summary = [b for b in lines[:-1] if "batch" in b], lines[-1]
producer = json.load(open(f"{tmp}/producer.json"))
rss = [tuple(map(int, l.split())) for l in open(f"{tmp}/rss.txt") if l.strip()]
end = max((b["at_s"] for b in batches), default=0)
long_run = end >= 24 * 60
# Windows: minutes 2-12 and the last 10 (a run of 24 minutes or more), else the halves.
early = (120, 720) if long_run else (0, end / 2)
late = (end - 600, end + 1) if long_run else (end / 2, end + 1)
def within(w, t): return w[0] <= t < w[1]
def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))] if v else None
def window(w):
    bs = [b for b in batches if within(w, b["at_s"])]
    fresh = [f for b in bs for f in b.get("freshness_s", [])]
    kib = [k for s, k in rss if within(w, s)]
    return {"from_s": round(w[0]), "to_s": round(w[1]), "micro_batches": len(bs),
            "micro_batch_median_s": statistics.median([b["seconds"] for b in bs]) if bs else None,
            "freshness_p50_s": pct(fresh, 0.50), "freshness_p99_s": pct(fresh, 0.99),
            "rss_max_mib": round(max(kib) / 1024, 1) if kib else None,
            "steps_median_s": {k: round(statistics.median([dict(b["steps"]).get(k, 0) for b in bs]), 3)
                               for k in ["ingest", "aggregate", "load", "profiles", "load_profiles"]} if bs else {},
            "ingest_steps_median_s": {k: round(statistics.median([dict(b["ingest_steps"]).get(k, 0) for b in bs]), 3)
                                      for k in ["open", "decide", "commit", "housekeeping"]} if bs else {}}
w_early, w_late = window(early), window(late)
# Live files of every table (delta-rs Python), against the data dir without landing and scratch.
live = {}
for log in glob.glob(f"{tmp}/data/**/_delta_log", recursive=True):
    root = os.path.dirname(log)
    live[os.path.relpath(root, f"{tmp}/data")] = int(sum(DeltaTable(root).get_add_actions(flatten=True).column("size_bytes").to_pylist()))
live_bytes = sum(live.values())
hashes = {t: (open(f"{tmp}/data.{t}.hash").read().strip(), open(f"{tmp}/batch.{t}.hash").read().strip())
          for t in ["transactions", "quarantine", "aggregates", "profiles"]}
ratio = lambda a, b: round(a / b, 3) if a and b else None
doc = {"rate": rate, "duration": duration, "cores": os.cpu_count(), "commit": rev, "producer": producer,
       "summary": summary, "micro_batches": len(batches),
       "windows": {"early": w_early, "late": w_late},
       "late_vs_early": {"micro_batch_median": ratio(w_late["micro_batch_median_s"], w_early["micro_batch_median_s"]),
                         "rss_max": ratio(w_late["rss_max_mib"], w_early["rss_max_mib"])},
       "max_backlog_files": max((b["backlog_files"] for b in batches), default=0),
       "data_dir_bytes": du_data, "live_table_bytes": live_bytes, "live_bytes_by_table": live,
       "data_dir_vs_live": ratio(du_data, live_bytes),
       "verify_exit_code": verify_rc, "batch_run_seconds": batch_s,
       "tables_equal_a_batch_run": {t: a == b for t, (a, b) in hashes.items()}}
json.dump(doc, open(result, "w"), indent=2)
f = summary["freshness"]
print(f"producer: {producer['rows']:,} rows in {producer['files']} files, {producer['rows_per_sec']:,.0f} rows/s")
print(f"follow: {summary['micro_batches']} micro-batches, {summary['rows_in']:,} rows in, {summary['rows_loaded']:,} loaded, "
      f"{summary['errors']} error(s), backlog at end {summary['backlog_files']}, max backlog {doc['max_backlog_files']} file(s)")
print(f"freshness over {f['files']} files: p50 {f['p50_s']:.2f} s, p99 {f['p99_s']:.2f} s, max {f['max_s']:.2f} s")
for name, w in [("early", w_early), ("late", w_late)]:
    print(f"{name} window {w['from_s']}-{w['to_s']} s: {w['micro_batches']} micro-batches, median {w['micro_batch_median_s']} s, "
          f"freshness p50 {w['freshness_p50_s']} s p99 {w['freshness_p99_s']} s, RSS max {w['rss_max_mib']} MiB")
    print(f"  steps (median s): {w['steps_median_s']}; ingest: {w['ingest_steps_median_s']}")
print(f"late/early: micro-batch median x{doc['late_vs_early']['micro_batch_median']}, RSS max x{doc['late_vs_early']['rss_max']}")
print(f"data dir (tables) {du_data / 2**20:,.0f} MiB, live files {live_bytes / 2**20:,.0f} MiB: x{doc['data_dir_vs_live']}")
print(f"verify exit {verify_rc}; batch run over the same landing files {batch_s:.1f} s; tables equal: {doc['tables_equal_a_batch_run']}")
print(f"written {result}")
PY
