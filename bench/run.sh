#!/usr/bin/env bash
# Benchmark the stages at N rows in a fresh temporary data dir (whole-process numbers).
# Usage: bench/run.sh [N]   (env: BENCH_TMP for the temp parent, KEEP=1 to keep the data)
# Prints a table per stage (wall s, rows/s, output bytes, peak RSS) and writes the same as
# JSON to bench/results/<utc time>-N<rows>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000000}
BIN=${BIN:-target/release/pipeline}
CQL=${CQL:-target/release/cql-test-server}
[ -x "$BIN" ] && [ -x "$CQL" ] || { echo "build first: make release" >&2; exit 1; }

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
stage() { # name, args...   (env DATA: the data dir, default $tmp/data)
  local name=$1; shift
  local t0 t1
  # Flush the previous stage's writes first, so their writeback is not billed to this stage.
  sync
  t0=$(date +%s.%N)
  /usr/bin/time -f "%U %S" -o "$out/$name.cpu" \
    "$BIN" --data-dir "${DATA:-$tmp/data}" --json --no-progress "$@" > "$out/$name.json"
  t1=$(date +%s.%N)
  echo "$t0 $t1" > "$out/$name.wall"
}
# CPU seconds (user+system) the CQL test server has used so far.
server_cpu() { awk '{printf "%.2f", ($14 + $15) / '"$(getconf CLK_TCK)"'}' "/proc/$cql_pid/stat"; }

echo "bench: N=$N rows, data in $tmp, $(nproc) cores"
stage generate generate --rows "$N" --days 30 --customers 100000 --rows-per-file 1000000
stage ingest ingest
stage aggregate aggregate
stage profiles profiles
# Load into the in-memory CQL test server: this measures our client side (driver, retries,
# Delta reads) with the server sharing the same two cores, not a ScyllaDB cluster.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$CQL" --port "$port" > "$tmp/cql.log" 2>&1 &
cql_pid=$!
trap 'kill $cql_pid 2>/dev/null; [ "${KEEP:-0}" = 1 ] || rm -rf "$tmp"' EXIT
for _ in $(seq 50); do grep -q listening "$tmp/cql.log" && break; sleep 0.1; done
export SCYLLA_URI=127.0.0.1:$port
s0=$(server_cpu); stage load load; s1=$(server_cpu); echo "$s0 $s1" > "$out/load.server_cpu"
# A late batch for one day of thirty, then the incremental aggregate that recomputes it.
stage generate_late generate --batch 2 --rows $(( N / 30 )) --days 1 --start-date 2024-01-15 --customers 100000
stage ingest_late ingest
stage aggregate_1day aggregate
stage profiles_1day profiles
s0=$(server_cpu); stage load_1day load; s1=$(server_cpu); echo "$s0 $s1" > "$out/load_1day.server_cpu"

# Discovery: a no-op ingest and a one-file ingest once 100, then 10,000 files have landed
# (10 rows each), each in its own data dir.
for landed in 100 10000; do
  d="$tmp/discovery-$landed"
  "$BIN" --data-dir "$d" --no-progress generate --rows $(( landed * 10 )) --days 1 --rows-per-file 10 > /dev/null
  "$BIN" --data-dir "$d" --no-progress ingest > /dev/null
  DATA="$d" stage "discovery_${landed}_noop" ingest
  "$BIN" --data-dir "$d" --no-progress generate --rows 10 --days 1 --batch 2 --start-date 2024-01-02 > /dev/null
  DATA="$d" stage "discovery_${landed}_one" ingest
done

# `sql`: top 10 customers by approved spend over every transaction, then the same query in
# DuckDB (from PyPI, in a venv under target/; skipped if it cannot be installed) over the
# same snapshot's files (the live files of the Delta log).
TOP10="SELECT customer_id, sum(amount) AS spend FROM customer_transactions WHERE status = 'approved' GROUP BY customer_id ORDER BY spend DESC, customer_id LIMIT 10"
sync
t0=$(date +%s.%N)
/usr/bin/time -f "%U %S %M" -o "$out/sql_top10.cpu" "$BIN" --data-dir "$tmp/data" sql "$TOP10" --format csv > "$out/sql_top10.csv"
t1=$(date +%s.%N); echo "$t0 $t1" > "$out/sql_top10.wall"
venv=target/bench-venv
if [ -x "$venv/bin/python" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q duckdb; } > /dev/null 2>&1; then
  "$venv/bin/python" - "$tmp/data/customer_transactions" "$TOP10" "$out" <<'PY'
import duckdb, glob, json, os, sys, time
table, query, out = sys.argv[1:4]
live = {}
for f in sorted(glob.glob(f"{table}/_delta_log/*.json")):
    for line in open(f):
        a = json.loads(line)
        if "add" in a: live[a["add"]["path"]] = 1
        if "remove" in a: live.pop(a["remove"]["path"], None)
files = [os.path.join(table, p) for p in live]
con = duckdb.connect()
t = time.time()
listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
con.execute(f"CREATE VIEW customer_transactions AS SELECT * FROM read_parquet([{listing}])")
rows = con.execute(query).fetchall()
wall = time.time() - t
json.dump({"wall_seconds": wall, "version": duckdb.__version__,
           "rows": [[r[0], str(r[1])] for r in rows]}, open(f"{out}/duckdb_top10.json", "w"))
PY
else
  echo "duckdb could not be installed (pip install duckdb into $venv): no DuckDB comparison" >&2
fi

mkdir -p bench/results
result="bench/results/$(date -u +%Y%m%dT%H%M%SZ)-N${N}.json"
python3 - "$out" "$N" "$result" <<'PY'
import json, os, sys
out, n, result = sys.argv[1], int(sys.argv[2]), sys.argv[3]
stages = []
names = ["generate", "ingest", "aggregate", "profiles", "load", "generate_late", "ingest_late", "aggregate_1day",
         "profiles_1day", "load_1day",
         "discovery_100_noop", "discovery_100_one", "discovery_10000_noop", "discovery_10000_one"]
for name in names:
    rep = json.load(open(f"{out}/{name}.json"))
    t0, t1 = map(float, open(f"{out}/{name}.wall").read().split())
    wall = t1 - t0
    rows = rep.get("rows_in", rep.get("rows_read", rep.get("rows_written", rep.get("rows", 0))))
    written = rep.get("bytes_written", rep.get("bytes", 0))
    user, sys_ = map(float, open(f"{out}/{name}.cpu").read().split()[-2:])
    st = {"stage": name, "rows": rows, "wall_seconds": round(wall, 3),
          "rows_per_sec": round(rows / wall) if wall else None,
          "output_bytes": written, "peak_rss_bytes": rep["peak_rss_bytes"],
          "cpu_seconds": round(user + sys_, 2), "report": rep}
    if os.path.exists(f"{out}/{name}.server_cpu"):
        a, b = map(float, open(f"{out}/{name}.server_cpu").read().split())
        st["server_cpu_seconds"] = round(b - a, 2)
    stages.append(st)
t0, t1 = map(float, open(f"{out}/sql_top10.wall").read().split())
user, sys_, rss = open(f"{out}/sql_top10.cpu").read().split()[-3:]
ours = [l.split(",") for l in open(f"{out}/sql_top10.csv").read().split("\n")[1:] if l]
sql = {"query": "top 10 customers by approved spend", "wall_seconds": round(t1 - t0, 3),
       "cpu_seconds": round(float(user) + float(sys_), 2), "peak_rss_bytes": int(rss) * 1024}
if os.path.exists(f"{out}/duckdb_top10.json"):
    duck = json.load(open(f"{out}/duckdb_top10.json"))
    sql["duckdb"] = {"version": duck["version"], "wall_seconds": round(duck["wall_seconds"], 3),
                     "same_answer": [[int(a), b] for a, b in ours] == [[int(a), b] for a, b in duck["rows"]]}
doc = {"n": n, "cores": os.cpu_count(), "stages": stages, "sql_top10": sql}
json.dump(doc, open(result, "w"), indent=2)
print(f"{'stage':<15}{'rows':>12}{'wall s':>9}{'rows/s':>13}{'output MiB':>12}{'peak RSS MiB':>14}{'CPU s':>8}")
for s in stages:
    print(f"{s['stage']:<15}{s['rows']:>12,}{s['wall_seconds']:>9.2f}{s['rows_per_sec']:>13,}"
          f"{s['output_bytes']/2**20:>12.1f}{s['peak_rss_bytes']/2**20:>14.1f}{s['cpu_seconds']:>8.2f}")
for s in stages:
    if "server_cpu_seconds" in s:
        lat = s["report"]["latency_ms"]
        print(f"{s['stage']}: client CPU {s['cpu_seconds']:.2f} s, test-server CPU {s['server_cpu_seconds']:.2f} s "
              f"(of {2 * s['wall_seconds']:.2f} core-s); latency ms p50 {lat['p50']:.2f} p99 {lat['p99']:.2f}; "
              f"retries {s['report']['retries']} (load measured against the in-memory CQL test server)")
full = next(s for s in stages if s["stage"] == "aggregate")["wall_seconds"]
incr = next(s for s in stages if s["stage"] == "aggregate_1day")["wall_seconds"]
print(f"incremental aggregate (1 of 30 days) / full: {incr / full:.3f}")
pf = next(s for s in stages if s["stage"] == "profiles")
pi = next(s for s in stages if s["stage"] == "profiles_1day")
print(f"profiles: full {pf['wall_seconds']:.2f} s, after the 1-day late batch {pi['wall_seconds']:.2f} s "
      f"({pi['report']['mode']}, {pi['report']['customers_recomputed']:,} customers): ratio {pi['wall_seconds'] / pf['wall_seconds']:.3f}")
line = f"sql top-10 customers over {n:,} transactions: {sql['wall_seconds']:.2f} s ({sql['peak_rss_bytes']/2**20:.0f} MiB)"
if "duckdb" in sql:
    d = sql["duckdb"]
    line += (f"; DuckDB {d['version']} {d['wall_seconds']:.2f} s on the same files: ratio ours/DuckDB "
             f"{sql['wall_seconds'] / d['wall_seconds']:.2f}, same answer: {d['same_answer']}")
print(line)
w = {s["stage"]: s["wall_seconds"] for s in stages}
print(f"discovery, landed 100 -> 10,000 files: no-op ingest {w['discovery_100_noop']:.2f} -> {w['discovery_10000_noop']:.2f} s, "
      f"one-file ingest {w['discovery_100_one']:.2f} -> {w['discovery_10000_one']:.2f} s")
print(f"written {result}")
PY
