#!/usr/bin/env bash
# Aggregate memory in N: for each N, a data dir of N rows (generate --days 30 --customers
# 100000, then ingest), then `aggregate --full` (a full rebuild, in passes of whole days):
# its peak RSS (the report's, the process's high-water mark), seconds and rows. The issue-24
# target: peak RSS <= 1 GiB and flat from 30M to 100M rows. JSON in bench/results/.
# Usage: bench/aggregate.sh [N...]   (default "30000000 100000000"; env BIN, BENCH_TMP)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${*:-30000000 100000000}
BIN=${BIN:-target/release/pipeline}
[ -x "$BIN" ] || { echo "build first: make release" >&2; exit 1; }
tmp=$(mktemp -d "${BENCH_TMP:-/tmp}/pipeline-aggregate.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
out="bench/results/$(date -u +%Y%m%dT%H%M%SZ)-aggregate.json"
for n in $SIZES; do
  d="$tmp/data-$n"
  echo "bench-aggregate: $n rows in $d" >&2
  "$BIN" --data-dir "$d" --no-progress generate --rows "$n" --days 30 --customers 100000 > /dev/null
  "$BIN" --data-dir "$d" --no-progress ingest > /dev/null
  sync
  "$BIN" --data-dir "$d" --no-progress --json aggregate --full > "$tmp/r-$n.json"
  rm -rf "$d"
done
python3 - "$out" "$(git rev-parse --short HEAD)" "$tmp" $SIZES <<'PY'
import json, sys
out, commit, tmp, sizes = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
runs = []
for n in sizes:
    r = json.load(open(f"{tmp}/r-{n}.json"))
    runs.append({"source_rows": int(n), "rows_read": r["rows_read"], "passes": r["passes"],
                 "rows_written": r["rows_written"], "seconds": round(r["seconds"], 2),
                 "peak_rss_mib": round(r["peak_rss_bytes"] / 2**20, 1)})
    print(f"{int(n):>12,} rows: {r['passes']} passes, {r['seconds']:.1f} s, peak RSS {r['peak_rss_bytes'] / 2**20:,.0f} MiB")
peaks = [r["peak_rss_mib"] for r in runs]
doc = {"what": "aggregate --full (release build)", "commit": commit, "cores": 2, "runs": runs,
       "peak_rss_max_mib": max(peaks), "peak_rss_last_vs_first": round(peaks[-1] / peaks[0], 3)}
json.dump(doc, open(out, "w"), indent=2)
print(f"peak RSS max {max(peaks):,.0f} MiB, last/first x{doc['peak_rss_last_vs_first']}; {out}")
PY
