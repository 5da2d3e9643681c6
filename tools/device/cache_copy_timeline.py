#!/usr/bin/env python3
"""Where a copy-bound expert-cache run spends its time, from an nsys trace exported to SQLite.

Usage: cache_copy_timeline.py TRACE.sqlite [TAIL_FRACTION]

The trace: `nsys profile --cuda-graph-trace=node cache_engine_bench --only NAME ...` (one cached
configuration after the all-resident reference), exported with `nsys export --type sqlite`. Over
the last TAIL_FRACTION (default 0.5) of the cached configuration's span (from its first
host-to-device copy of 1 MiB or more on
the copy stream to the trace's last kernel) it prints:
- the compute stream (the stream of the last FrontKernel): busy time (union of its kernels) and
  its idle gaps (count, total, median, p90);
- the copy stream (the stream of the large host-to-device copies): busy time, copies, bytes;
- the decode stream (DecodeExpertKernel, the compressed host tier): kernels, their durations and
  the wait from the copy that precedes each decode on the copy stream to the decode's start.
Times in microseconds.
"""
import sqlite3
import statistics
import sys


def rows(db, query):
    try:
        return db.execute(query).fetchall()
    except sqlite3.OperationalError:
        return []


def union(intervals):
    total, end = 0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0


def main():
    db = sqlite3.connect(sys.argv[1])
    tail = float(sys.argv[2]) if len(sys.argv) > 2 else 0.5
    names = dict(rows(db, "SELECT id, value FROM StringIds"))
    kernels = [(s, e, st, names.get(n, str(n))) for s, e, st, n in rows(
        db, "SELECT start, end, streamId, shortName FROM CUPTI_ACTIVITY_KIND_KERNEL")]
    copies = [(s, e, st, b) for s, e, st, k, b in rows(
        db, "SELECT start, end, streamId, copyKind, bytes FROM CUPTI_ACTIVITY_KIND_MEMCPY")
        if k == 1 and b >= (1 << 20)]
    fronts = [k for k in kernels if "FrontKernel" in k[3]]
    if not fronts or not copies:
        sys.exit("no FrontKernel or no large host-to-device copy in the trace")
    compute = max(fronts)[2]
    copy_stream = max(copies)[2]
    t_begin = min(c[0] for c in copies if c[2] == copy_stream)
    t_end = max(k[1] for k in kernels)
    t0 = t_end - tail * (t_end - t_begin)
    span = (t_end - t0) / 1e3
    mine = sorted((s, e) for s, e, st, _ in kernels if st == compute and s >= t0)
    gaps = [b[0] - a[1] for a, b in zip(mine, mine[1:]) if b[0] > a[1]]
    print(f"window {span:.0f} us (the last {tail:.0%} of the cached run)")
    print(f"compute stream {compute}: busy {union(mine) / 1e3:.0f} us "
          f"({100 * union(mine) / 1e3 / span:.1f}%); idle gaps {len(gaps)}, total "
          f"{sum(gaps) / 1e3:.0f} us, median {statistics.median(gaps) / 1e3 if gaps else 0:.2f}, "
          f"p90 {pct(gaps, 0.9) / 1e3:.2f}, > 20 us: {sum(g for g in gaps if g > 20e3) / 1e3:.0f} us")
    cp = sorted(c for c in copies if c[2] == copy_stream and c[0] >= t0)
    busy = union([(s, e) for s, e, _, _ in cp])
    size = sum(c[3] for c in cp)
    print(f"copy stream {copy_stream}: busy {busy / 1e3:.0f} us ({100 * busy / 1e3 / span:.1f}%), "
          f"{len(cp)} copies, median {statistics.median([c[3] for c in cp]) / 2**20:.2f} MiB, "
          f"{size / busy if busy else 0:.1f} GB/s while busy")
    dec = sorted((s, e) for s, e, _, n in kernels if "DecodeExpert" in n and s >= t0)
    if dec:
        durs = [(e - s) / 1e3 for s, e in dec]
        waits = []
        ends = [c[1] for c in cp]
        j = 0
        for s, _ in dec:
            while j + 1 < len(ends) and ends[j + 1] <= s:
                j += 1
            if ends and ends[j] <= s:
                waits.append((s - ends[j]) / 1e3)
        print(f"decode kernels: {len(dec)}, duration median {statistics.median(durs):.2f} us, "
              f"p90 {pct(durs, 0.9):.2f}, max {max(durs):.2f}; busy {union(dec) / 1e3:.0f} us; "
              f"start after the preceding copy's end: median "
              f"{statistics.median(waits) if waits else 0:.2f} us, p90 {pct(waits, 0.9):.2f}")


if __name__ == "__main__":
    main()
