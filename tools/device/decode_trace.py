#!/usr/bin/env python3
"""Summarises the decode chain's in-kernel timeline (kernels/gemm_trace.cuh, DecodeTraceLayout).

Usage: decode_trace.py FILE.bin [...]   (written by a -DMOE_GEMM_TRACE=ON build of
cuda_engine_bench with --decode-trace=PREFIX)

Per recorded forward (the last DecodeTraceLayout::kReplays of a point), times in us from the meta
kernel's start (or the front's first block's, when the front takes the meta): for each kernel of the chain (meta, front, gate/up, down + combine) the blocks'
entry, the end of their PDL wait and of their setup, and the warps' first unit and end (min /
median / max over blocks or warps); the gap from the previous forward's last warp to this
forward's meta kernel; and the smallest step seen between two timer readings (the timer's
resolution, if the recorded times are that dense).
"""
import array
import statistics
import sys

KERNELS, REPLAYS, MAX_BLOCKS, MAX_WARPS, HEADER = 4, 4, 512, 32, 8
ENTRY, WAITED, SET_UP, FIRST_UNIT = 0, 1, 2, 4
WARP_DONE = FIRST_UNIT + MAX_WARPS
BLOCK_WORDS = WARP_DONE + MAX_WARPS
REPLAY_WORDS = KERNELS * MAX_BLOCKS * BLOCK_WORDS
NAMES = ("meta", "front", "gate/up", "down+combine")
FRONT_STEPS = ("convert done", "first router pass summed", "partial sums in shared memory",
               "cluster phase 1 passed", "the pass's rows stored")
ROUTE_STEPS = ("scores", "selection scores", "groups", "top-k", "stores", "(its start)")


def col_of(blocks, w):
    return [rec[w] for rec in blocks if rec[w]]


def spread(values, t0):
    if not values:
        return "-"
    v = sorted((x - t0) / 1e3 for x in values)
    return f"{v[0]:6.2f} {statistics.median(v):6.2f} {v[-1]:6.2f}"


def replay_records(words, r):
    """Per kernel: list of block records (non-empty) of ring entry r."""
    out = []
    for k in range(KERNELS):
        blocks = []
        for b in range(MAX_BLOCKS):
            base = HEADER + r * REPLAY_WORDS + (k * MAX_BLOCKS + b) * BLOCK_WORDS
            rec = words[base:base + BLOCK_WORDS]
            if any(rec):
                blocks.append(rec)
        out.append(blocks)
    return out


def last_time(recs):
    return max((max(rec) for blocks in recs for rec in blocks), default=0)


def summarise(path):
    words = array.array("Q")
    with open(path, "rb") as f:
        words.frombytes(f.read())
    assert len(words) == HEADER + REPLAYS * REPLAY_WORDS, "layout differs from gemm_trace.cuh"
    count = words[0]
    print(f"== {path}: {count} forwards counted")
    if count == 0:
        return
    replays = []
    for r in range(REPLAYS):
        recs = replay_records(words, r)
        if recs[0]:  # t0: the meta kernel's start, or the front's first block's (it takes the meta)
            replays.append((recs[0][0][ENTRY], recs))
        elif recs[1]:
            replays.append((min(rec[ENTRY] for rec in recs[1]), recs))
    replays.sort(key=lambda x: x[0])
    stamps = sorted({x for _, recs in replays for blocks in recs for rec in blocks for x in rec if x})
    steps = [b - a for a, b in zip(stamps, stamps[1:]) if b > a]
    if steps:
        print(f"  smallest step between readings: {min(steps)} ns")
    prev_end = None
    for t0, recs in replays:
        end = last_time(recs)
        gap = f", gap after the previous forward {(t0 - prev_end) / 1e3:.2f} us" if prev_end else ""
        print(f"  forward at t0: span to the last warp {(end - t0) / 1e3:.2f} us{gap}")
        print(f"    {'kernel':13s} {'blocks':>6s} | {'entry min/med/max':>20s} | "
              f"{'waited':>20s} | {'set up':>20s} | {'first unit (warps)':>20s} | "
              f"{'warp done':>20s}")
        for k, blocks in enumerate(recs):
            if not blocks:
                continue
            col = lambda w: [rec[w] for rec in blocks if rec[w]]
            warps = lambda base: [rec[base + w] for rec in blocks for w in range(MAX_WARPS)
                                  if rec[base + w]]
            first = "(steps below)" if k == 1 else spread(warps(FIRST_UNIT), t0)
            print(f"    {NAMES[k]:13s} {len(blocks):6d} | {spread(col(ENTRY), t0):>20s} | "
                  f"{spread(col(WAITED), t0):>20s} | {spread(col(SET_UP), t0):>20s} | "
                  f"{first:>20s} | {spread(warps(WARP_DONE), t0):>20s}")
        if recs[1]:
            # The front's thread-0 steps (every block) and block 0's routing steps (its warp 0).
            for i, step in enumerate(FRONT_STEPS):
                print(f"      front {step:34s} {spread(col_of(recs[1], FIRST_UNIT + i), t0):>20s}")
            for i, step in enumerate(ROUTE_STEPS):
                print(f"      route {step:34s} {spread(col_of(recs[1], FIRST_UNIT + 8 + i), t0):>20s}")
            for rec in recs[1]:
                r = rec[FIRST_UNIT + 8:FIRST_UNIT + 16]
                if r[4] > r[5] > 0 and r[7] > r[6] > 0:
                    print(f"      routing block's SM clock: {(r[7] - r[6]) / (r[4] - r[5]):.2f} GHz "
                          f"({r[7] - r[6]} cycles in {r[4] - r[5]} ns)")
        prev_end = end


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for path in sys.argv[1:]:
        summarise(path)


if __name__ == "__main__":
    main()
