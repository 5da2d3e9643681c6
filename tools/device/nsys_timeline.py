#!/usr/bin/env python3
"""Per-forward kernel timeline of a cuda_engine_bench run, from an nsys trace exported to SQLite.

Usage: nsys_timeline.py TRACE.sqlite [LABEL]

The trace: `nsys profile --cuda-graph-trace=node` of `cuda_engine_bench --report=... --tokens=N`
(one point a run, so that the last forwards are that point's graph replays), exported with
`nsys export --type sqlite` (tools/device/nsys_timeline.sh does all of it on the device machine).

A forward starts at its first kernel (StoreMetaKernel, or the decode front at 1 token). Over the
last 40 forwards whose kernels match the last one's: the median span (first start to last end),
and per kernel the median start and end relative to the forward's start, its duration and its
grid; then the median gap from a forward's last end to the next forward's first start. With PDL a
kernel starts before the one it waits for ends: its end, not its start, says what it costs.

When the trace holds GPU metrics (`nsys profile --gpu-metrics-devices=...`, tables GPU_METRICS and
TARGET_INFO_GPU_METRICS), it also prints per kernel of the pattern the mean of each sampled metric
over the samples that fall inside that kernel's runs in those forwards (clock, activity, DRAM
bandwidth: whatever the device's metric set has), and the samples' count. Kernels overlap under
PDL, so a sample inside two kernels counts for both.
"""
import bisect
import sqlite3
import statistics
import sys


def main():
    db = sys.argv[1]
    label = sys.argv[2] if len(sys.argv) > 2 else db
    con = sqlite3.connect(db)
    names = dict(con.execute("select id, value from StringIds"))
    rows = con.execute(
        "select start, end, shortName, gridX, gridY, gridZ, blockX "
        "from CUPTI_ACTIVITY_KIND_KERNEL order by start").fetchall()
    kernels = [(s, e, names.get(n, str(n)), (gx, gy, gz), bx) for s, e, n, gx, gy, gz, bx in rows]
    tail = kernels[-1000:]
    firsts = [i for i, k in enumerate(tail) if "Meta" in k[2] or "Front" in k[2]]
    forwards = [tail[a:b] for a, b in zip(firsts, firsts[1:])][-40:]
    print(f"== {label}: {len(kernels)} kernels in the trace")
    if not forwards:
        print("no forwards found; kernel names:", sorted({k[2] for k in tail})[:40])
        return 1
    pattern = [k[2] for k in forwards[-1]]
    same = [f for f in forwards if [k[2] for k in f] == pattern]
    med = statistics.median
    print(f"{len(same)} forwards of {len(pattern)} kernels; span (median) "
          f"{med([(f[-1][1] - f[0][0]) / 1e3 for f in same]):.1f} us")
    print(f"  {'kernel':<44} {'start':>8} {'end':>8} {'dur':>8}  grid x block")
    for j, name in enumerate(pattern):
        start = med([(f[j][0] - f[0][0]) / 1e3 for f in same])
        end = med([(f[j][1] - f[0][0]) / 1e3 for f in same])
        dur = med([(f[j][1] - f[j][0]) / 1e3 for f in same])
        grid = "x".join(str(g) for g in same[-1][j][3])
        print(f"  {name[:44]:<44} {start:8.1f} {end:8.1f} {dur:8.1f}  {grid} x {same[-1][j][4]}")
    gaps = [(forwards[i + 1][0][0] - forwards[i][-1][1]) / 1e3 for i in range(len(forwards) - 1)]
    if gaps:
        print(f"gap from a forward's last end to the next one's first start (median): "
              f"{med(gaps):.2f} us")
    print_metrics(con, same, pattern)
    return 0


def print_metrics(con, forwards, pattern):
    """Mean of each GPU metric over the samples inside each kernel of the pattern (see above)."""
    tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
    if not {"GPU_METRICS", "TARGET_INFO_GPU_METRICS"} <= tables:
        return
    names = {(t, i): name for t, i, name in con.execute(
        "select typeId, metricId, metricName from TARGET_INFO_GPU_METRICS")}
    lo = min(f[0][0] for f in forwards)
    hi = max(f[-1][1] for f in forwards)
    rows = con.execute(
        "select timestamp, typeId, metricId, value from GPU_METRICS "
        "where timestamp >= ? and timestamp <= ? order by timestamp", (lo, hi))
    # (timestamp, metric name, value); graphics metrics and the raw "[Avg]" counters say nothing
    # here.
    samples = [(ts, names.get((t, i), f"{t}:{i}"), v) for ts, t, i, v in rows]
    samples = [s for s in samples
               if not any(w in s[1] for w in ("Pixel", "Vertex")) and not s[1].endswith("[Avg]")]
    if not samples:
        print("GPU metrics: no samples inside the forwards")
        return
    metrics = sorted({s[1] for s in samples})
    # Per kernel index of the pattern: metric -> [sum, count].
    sums = [dict() for _ in pattern]
    for f in forwards:
        for j, k in enumerate(f):
            for _, m, v in samples_in(samples, k[0], k[1]):
                cell = sums[j].setdefault(m, [0.0, 0])
                cell[0] += v
                cell[1] += 1
    print(f"GPU metrics, mean over the samples inside each kernel ({len(samples)} samples):")
    for j, name in enumerate(pattern):
        cells = [(m, sums[j][m]) for m in metrics if m in sums[j]]
        if not cells:
            print(f"  {name[:44]:<44} (no sample)")
            continue
        n = max(c[1] for _, c in cells)
        print(f"  {name[:44]:<44} {n} samples")
        for m, (total, count) in cells:
            mean = total / count
            if "Frequency" in m and mean > 1e5:
                mean /= 1e6  # stored in Hz whatever the name says
            print(f"      {m[:60]:<60} {mean:10.1f}")


def samples_in(samples, start, end):
    """The samples (sorted by timestamp) with start <= timestamp <= end."""
    i = bisect.bisect_left(samples, (start,))
    while i < len(samples) and samples[i][0] <= end:
        yield samples[i]
        i += 1


if __name__ == "__main__":
    sys.exit(main())
