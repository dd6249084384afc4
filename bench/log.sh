#!/usr/bin/env bash
# A table holding COMMITS commits (default 150,000: about two days of a stream at one commit a
# second, the log a stream keeps): the time of one 1,000-row ingest into it, beside the same
# ingest into a fresh table, and of `sql count(*)`. The commits are data-free (a commitInfo
# each) and the last one is checkpointed, as `maintain` or a stream leaves a table. Medians of
# RUNS runs each; JSON in bench/results/.
# Usage: bench/log.sh [COMMITS] [RUNS]   (env BIN, BENCH_TMP)
set -euo pipefail
cd "$(dirname "$0")/.."
COMMITS=${1:-150000}
RUNS=${2:-7}
BIN=${BIN:-target/release/pipeline}
[ -x "$BIN" ] || { echo "build first: make release" >&2; exit 1; }
tmp=$(mktemp -d "${BENCH_TMP:-/tmp}/pipeline-log.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# A data dir with one ingested batch; with COMMITS more commits to customer_transactions.
setup() {
  local d=$1 n=$2
  "$BIN" --data-dir "$d" --no-progress generate --rows 1000 --days 1 >/dev/null
  "$BIN" --data-dir "$d" --no-progress ingest >/dev/null
  [ "$n" -gt 0 ] || return 0
  python3 - "$d/customer_transactions/_delta_log" "$n" <<'PY'
import json, os, sys, glob, time
log, n = sys.argv[1], int(sys.argv[2])
last = max(int(os.path.basename(p)[:20]) for p in glob.glob(f"{log}/*.json"))
ts = int(time.time() * 1000)
for v in range(last + 1, last + 1 + n):
    with open(f"{log}/{v:020d}.json", "w") as f:
        f.write(json.dumps({"commitInfo": {"timestamp": ts, "operation": "WRITE",
                 "operationParameters": {"mode": "Append"}, "readVersion": v - 1}}) + "\n")
PY
  "$BIN" --data-dir "$d" --no-progress maintain --no-optimize >/dev/null
}

# Seconds of RUNS ingests of a new 1,000-row batch each, then of RUNS count(*) queries.
measure() {
  local d=$1
  for i in $(seq 2 $((RUNS + 1))); do
    "$BIN" --data-dir "$d" --no-progress generate --rows 1000 --days 1 --batch "$i" >/dev/null
    s=$(date +%s.%N); "$BIN" --data-dir "$d" --no-progress ingest >/dev/null; e=$(date +%s.%N)
    echo "ingest $(echo "$e - $s" | bc)"
  done
  for i in $(seq "$RUNS"); do
    s=$(date +%s.%N); "$BIN" --data-dir "$d" sql "SELECT count(*) FROM customer_transactions" >/dev/null; e=$(date +%s.%N)
    echo "sql $(echo "$e - $s" | bc)"
  done
}

echo "bench-log: $COMMITS commits, $RUNS runs each, in $tmp"
setup "$tmp/fresh" 0
setup "$tmp/long" "$COMMITS"
measure "$tmp/fresh" > "$tmp/fresh.txt"
measure "$tmp/long" > "$tmp/long.txt"
mkdir -p bench/results
result="bench/results/$(date -u +%Y%m%dT%H%M%SZ)-log-C${COMMITS}.json"
python3 - "$tmp" "$COMMITS" "$result" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'PY'
import json, statistics, sys
tmp, commits, result, rev = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def load(name):
    out = {}
    for line in open(f"{tmp}/{name}.txt"):
        k, v = line.split()
        out.setdefault(k, []).append(float(v))
    return out
fresh, long = load("fresh"), load("long")
doc = {"commits": commits, "commit": rev,
       "fresh": {k: {"median_s": statistics.median(v), "runs_s": v} for k, v in fresh.items()},
       "long": {k: {"median_s": statistics.median(v), "runs_s": v} for k, v in long.items()}}
doc["ratio"] = {k: round(doc["long"][k]["median_s"] / doc["fresh"][k]["median_s"], 2) for k in fresh}
json.dump(doc, open(result, "w"), indent=2)
for k in fresh:
    print(f"{k}: fresh table {doc['fresh'][k]['median_s']:.3f} s, {commits:,} commits {doc['long'][k]['median_s']:.3f} s (x{doc['ratio'][k]}), median of {len(fresh[k])}")
print(f"written {result}")
PY
