#!/usr/bin/env python3
"""Windows of a `run --follow` session's micro-batches, to see what grows over a long run.

Reads the JSON lines `run --follow --json` prints (bench/follow.sh keeps them as
BENCH_TMP/pipeline-follow.*/batches.jsonl with KEEP=1) and prints, per window of MINUTES: the
micro-batches, their median time, the share of the time the loop was busy, files per
micro-batch, stream seconds per 1,000 rows, freshness p99, and the median of each step.
Then minutes 2-12 and the last 10 minutes, the windows issue 24's targets compare.

Usage: bench/windows.py BATCHES_JSONL [MINUTES]   (default 5)
"""
import json
import statistics
import sys


def main():
    path = sys.argv[1]
    step = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    lines = [json.loads(line) for line in open(path) if line.strip()]
    batches = [b for b in lines if "batch" in b and b.get("at_s") is not None]
    if not batches:
        sys.exit(f"{path}: no micro-batches")
    end = max(b["at_s"] for b in batches) / 60
    for start in range(0, int(end) + 1, step):
        window(batches, start, start + step)
    print("--")
    window(batches, 2, 12)
    window(batches, max(int(end) - 10, 0), int(end))


def window(batches, a, z):
    w = [b for b in batches if a * 60 <= b["at_s"] < z * 60]
    if not w:
        return
    busy = sum(b["seconds"] for b in w) / ((z - a) * 60)
    rows = sum(b["rows_in"] for b in w)
    per_1k = 1e6 * sum(b["seconds"] for b in w) / max(rows, 1)
    fresh = sorted(f for b in w for f in b.get("freshness_s", []))
    p99 = fresh[int(len(fresh) * 0.99)] if fresh else None
    steps = {}
    for b in w:
        for k, v in b.get("ingest_steps", []):
            steps.setdefault(k, []).append(v)
        for k, v in b.get("steps", []):
            steps.setdefault(k, []).append(v)
    medians = {k: round(statistics.median(v), 3) for k, v in steps.items()}
    print(
        f"min {a:>3}-{z:<3} n={len(w):<4} median={statistics.median(b['seconds'] for b in w):.3f}s "
        f"busy={busy:.0%} files={statistics.mean(b['files'] for b in w):.2f} "
        f"ms/1k rows={per_1k:.1f} p99={p99} steps={medians}"
    )


if __name__ == "__main__":
    main()
