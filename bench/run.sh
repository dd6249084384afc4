#!/usr/bin/env bash
# Benchmark the stages at N rows in a fresh temporary data dir (whole-process numbers).
# Usage: bench/run.sh [N]   (env: BENCH_TMP for the temp parent, KEEP=1 to keep the data)
# Prints a table per stage (wall s, rows/s, output bytes, peak RSS) and writes the same as
# JSON to bench/results/<utc time>-N<rows>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000000}
BIN=${BIN:-target/release/pipeline}
[ -x "$BIN" ] || { echo "build first: make build" >&2; exit 1; }

tmp=$(mktemp -d "${BENCH_TMP:-/tmp}/pipeline-bench.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$tmp"' EXIT
avail=$(df -Pk "$tmp" | awk 'NR==2{print $4}')
need=$(( N / 1000 * 200 / 1024 ))  # ~200 bytes/row across raw + Delta, in KiB
if [ "$avail" -lt "$need" ]; then
  echo "not enough disk in $tmp: ${avail} KiB free, ~${need} KiB needed (set BENCH_TMP)" >&2
  exit 1
fi

out="$tmp/reports"
mkdir -p "$out"
stage() { # name, args...
  local name=$1; shift
  local t0 t1
  # Flush the previous stage's writes first, so their writeback is not billed to this stage.
  sync
  t0=$(date +%s.%N)
  "$BIN" --data-dir "$tmp/data" --json --no-progress "$@" > "$out/$name.json"
  t1=$(date +%s.%N)
  echo "$t0 $t1" > "$out/$name.wall"
}

echo "bench: N=$N rows, data in $tmp, $(nproc) cores"
stage generate generate --rows "$N" --days 30 --customers 100000 --rows-per-file 1000000
stage ingest ingest
stage aggregate aggregate
# A late batch for one day of thirty, then the incremental aggregate that recomputes it.
stage generate_late generate --batch 2 --rows $(( N / 30 )) --days 1 --start-date 2024-01-15 --customers 100000
stage ingest_late ingest
stage aggregate_1day aggregate

mkdir -p bench/results
result="bench/results/$(date -u +%Y%m%dT%H%M%SZ)-N${N}.json"
python3 - "$out" "$N" "$result" <<'PY'
import json, os, sys
out, n, result = sys.argv[1], int(sys.argv[2]), sys.argv[3]
stages = []
for name in ["generate", "ingest", "aggregate", "generate_late", "ingest_late", "aggregate_1day"]:
    rep = json.load(open(f"{out}/{name}.json"))
    t0, t1 = map(float, open(f"{out}/{name}.wall").read().split())
    wall = t1 - t0
    rows = rep.get("rows_in", rep.get("rows_read", rep.get("rows", 0)))
    written = rep.get("bytes_written", rep.get("bytes", 0))
    stages.append({"stage": name, "rows": rows, "wall_seconds": round(wall, 3),
                   "rows_per_sec": round(rows / wall) if wall else None,
                   "output_bytes": written, "peak_rss_bytes": rep["peak_rss_bytes"], "report": rep})
doc = {"n": n, "cores": os.cpu_count(), "stages": stages}
json.dump(doc, open(result, "w"), indent=2)
print(f"{'stage':<10}{'rows':>14}{'wall s':>9}{'rows/s':>13}{'output MiB':>12}{'peak RSS MiB':>14}")
for s in stages:
    print(f"{s['stage']:<10}{s['rows']:>14,}{s['wall_seconds']:>9.2f}{s['rows_per_sec']:>13,}"
          f"{s['output_bytes']/2**20:>12.1f}{s['peak_rss_bytes']/2**20:>14.1f}")
full = next(s for s in stages if s["stage"] == "aggregate")["wall_seconds"]
incr = next(s for s in stages if s["stage"] == "aggregate_1day")["wall_seconds"]
print(f"incremental aggregate (1 of 30 days) / full: {incr / full:.3f}")
print(f"written {result}")
PY
