#!/usr/bin/env bash
# Late batches into a large table: ingest N rows (30 days, one batch), then RUNS batches of
# LATE rows each (default 1% of N) over the same days, and a 50,000-row batch (a stream's
# micro-batch). Every batch is deduplicated against the whole table: the rows/s of each
# ingest and its steps are reported; JSON in bench/results/.
# Usage: bench/late.sh [N] [RUNS]   (defaults 100,000,000 rows, 3; env BIN, BENCH_TMP, LATE, KEEP=1)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000000}
RUNS=${2:-3}
LATE=${LATE:-$(( N / 100 ))}
BIN=${BIN:-target/release/pipeline}
[ -x "$BIN" ] || { echo "build first: make release" >&2; exit 1; }
tmp=$(mktemp -d "${BENCH_TMP:-/tmp}/pipeline-late.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$tmp"' EXIT
d="$tmp/data"
ingest() { # label: one ingest, its report as one JSON line
  sync
  "$BIN" --data-dir "$d" --no-progress --json ingest | python3 -c '
import json, sys
r = json.load(sys.stdin)
print(json.dumps({"label": sys.argv[1], "rows": r["rows_in"], "seconds": r["seconds"], "duplicates": r["duplicates"],
                  "rows_per_sec": r["rows_in"] / r["seconds"], "steps": dict(r["steps"]), "peak_rss_bytes": r["peak_rss_bytes"]}))' "$1"
}
echo "bench-late: $N rows, then $RUNS late batches of $LATE rows, in $tmp"
"$BIN" --data-dir "$d" --no-progress generate --rows "$N" --days 30 --customers 100000 > /dev/null
ingest table > "$tmp/runs.jsonl"
for i in $(seq "$RUNS"); do
  "$BIN" --data-dir "$d" --no-progress generate --rows "$LATE" --days 30 --customers 100000 --batch $((i + 1)) > /dev/null
  ingest late >> "$tmp/runs.jsonl"
done
"$BIN" --data-dir "$d" --no-progress generate --rows 50000 --days 30 --customers 100000 --batch $((RUNS + 2)) > /dev/null
ingest micro_batch >> "$tmp/runs.jsonl"
mkdir -p bench/results
result="bench/results/$(date -u +%Y%m%dT%H%M%SZ)-late-N${N}.json"
python3 - "$tmp/runs.jsonl" "$N" "$LATE" "$result" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'PY'
import json, statistics, sys
runs_file, n, late, result, rev = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
runs = [json.loads(l) for l in open(runs_file)]
lates = [r for r in runs if r["label"] == "late"]
doc = {"rows": n, "late_rows": late, "commit": rev, "runs": runs,
       "late_rows_per_sec_median": statistics.median(r["rows_per_sec"] for r in lates)}
json.dump(doc, open(result, "w"), indent=2)
for r in runs:
    steps = ", ".join(f"{k} {v:.2f}" for k, v in r["steps"].items() if v >= 0.005)
    print(f"{r['label']}: {r['rows']:,} rows in {r['seconds']:.2f} s = {r['rows_per_sec'] / 1e6:.2f}M rows/s "
          f"({r['duplicates']} duplicates; {steps}; peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB)")
print(f"late batches: median {doc['late_rows_per_sec_median'] / 1e6:.2f}M rows/s; written {result}")
PY
