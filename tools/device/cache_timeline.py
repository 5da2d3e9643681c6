#!/usr/bin/env python3
"""Per-layer GPU timeline of the expert cache's forwards, from an nsys trace exported to SQLite.

Usage: cache_timeline.py TRACE.sqlite [LAYERS] [--all-streams]

The trace: `nsys profile --cuda-graph-trace=node cache_engine_bench --only NAME ...` (one cached
configuration after the all-resident reference), exported with `nsys export --type sqlite`. A
layer forward of one token starts with the decode front kernel (FrontKernel; the lookahead's
fronts right after it are labelled "(lookahead)") on the compute stream (the stream of the trace's
last front: the cached engine, which runs after the all-resident one). Over the last LAYERS
(default 200) layer windows whose operations (kernels, copies and memsets of that stream) match
the last window's: the median window span (front start to next front start), and per operation
its median start and end relative to the window's start, its duration, and the median idle time
of the stream before it. --all-streams: a window also holds the kernels of the engine's other
streams that start inside it (a graph's branches run on streams of their own), marked "[s N]".
"""
import sqlite3
import statistics
import sys


def rows(db, query):
    try:
        return db.execute(query).fetchall()
    except sqlite3.OperationalError:
        return []  # a table the trace does not have (no memsets, ...)


def main():
    all_streams = "--all-streams" in sys.argv
    argv = [a for a in sys.argv if a != "--all-streams"]
    db = sqlite3.connect(argv[1])
    last = int(argv[2]) if len(argv) > 2 else 200
    names = dict(rows(db, "SELECT id, value FROM StringIds"))
    ops = []  # (start, end, stream, name)
    for start, end, stream, short in rows(
            db, "SELECT start, end, streamId, shortName FROM CUPTI_ACTIVITY_KIND_KERNEL"):
        ops.append((start, end, stream, names.get(short, str(short))))
    for start, end, stream, kind, size in rows(
            db, "SELECT start, end, streamId, copyKind, bytes FROM CUPTI_ACTIVITY_KIND_MEMCPY"):
        ops.append((start, end, stream, f"memcpy kind {kind} ({size} B)"))
    for start, end, stream, size in rows(
            db, "SELECT start, end, streamId, bytes FROM CUPTI_ACTIVITY_KIND_MEMSET"):
        ops.append((start, end, stream, f"memset ({size} B)"))
    fronts = [o for o in ops if "FrontKernel" in o[3]]
    if not fronts:
        sys.exit("no FrontKernel in the trace")
    stream = max(fronts)[2]  # the stream of the last front: the engine that ran last
    mine = sorted(o for o in ops if o[2] == stream)
    # A layer starts at its own front; the lookahead's fronts (ExpertCacheOptions::lookahead_front,
    # one per depth) follow it at once and are labelled as such.
    is_front = ["FrontKernel" in o[3] for o in mine]
    starts = [i for i, f in enumerate(is_front) if f and (i == 0 or not is_front[i - 1])]
    for i in range(1, len(mine)):
        if is_front[i] and is_front[i - 1]:
            mine[i] = mine[i][:3] + (mine[i][3] + " (lookahead)",)
    others = sorted(o for o in ops if o[2] != stream) if all_streams else []
    windows = []
    j = 0
    for a, b in zip(starts, starts[1:]):
        ops_in = list(mine[a:b])
        if others:
            t0, t1 = mine[a][0], mine[b][0]
            while j < len(others) and others[j][0] < t0:
                j += 1
            k = j
            while k < len(others) and others[k][0] < t1:
                o = others[k]
                ops_in.append(o[:3] + (f"{o[3]} [s {o[2]}]",))
                k += 1
            ops_in.sort()
        windows.append((ops_in, mine[a - 1][1] if a > 0 else None, mine[b][0]))
    if not windows:
        sys.exit("fewer than two layer windows")
    pattern = [o[3] for o in windows[-1][0]]
    chosen = [w for w in windows[-last:] if [o[3] for o in w[0]] == pattern]
    print(f"stream {stream}: {len(windows)} layer windows; {len(chosen)} of the last "
          f"{min(last, len(windows))} match the last one's {len(pattern)} operations")
    spans = [(nxt - w[0][0]) / 1e3 for w, _, nxt in chosen]
    print(f"window span (front to next front) median {statistics.median(spans):.2f} us, "
          f"min {min(spans):.2f}, max {max(spans):.2f}")
    print(f"{'operation':60s} {'start':>8s} {'end':>8s} {'dur':>7s} {'idle before':>11s}")
    for k, name in enumerate(pattern):
        st, en, du, idle = [], [], [], []
        for w, prev_end, _ in chosen:
            t0 = w[0][0]
            o = w[k]
            st.append((o[0] - t0) / 1e3)
            en.append((o[1] - t0) / 1e3)
            du.append((o[1] - o[0]) / 1e3)
            before = w[k - 1][1] if k > 0 else prev_end
            if before is not None:
                idle.append(max(0, o[0] - before) / 1e3)
        med = statistics.median
        print(f"{name[:60]:60s} {med(st):8.2f} {med(en):8.2f} {med(du):7.2f} "
              f"{(med(idle) if idle else 0):11.2f}")


if __name__ == "__main__":
    main()
