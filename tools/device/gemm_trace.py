#!/usr/bin/env python3
"""Summarises the cluster GEMM's in-kernel timeline (kernels/gemm_trace.cuh).

Usage: gemm_trace.py FILE.bin [...]   (written by a -DMOE_GEMM_TRACE=ON build of
cuda_engine_bench with --gemm-trace=PREFIX)

Per launch slot (gate/up, down): blocks, kernel span, and per block (median over blocks) the
share of its time that the tracing consumer warp waited for stage data, spent in epilogues, and
that the producer waited for a free stage; the load latency (issue to data ready) of stages the
consumer had to wait for; the spread of block end times and the SM time idle after them (the
tail), with the item end times of the first, median and last block to end. When both slots hold a
launch (the last forward's two GEMMs), also the gap from gate/up's last block end to down's first
block start (negative: they overlap).
"""
import array
import statistics
import sys

SLOTS, MAX_BLOCKS, MAX_STEPS, MAX_ITEMS, HEADER = 2, 160, 2048, 256, 8
PROD_WAIT = HEADER
PROD_ISSUE = PROD_WAIT + MAX_STEPS
CONS_WAIT = PROD_ISSUE + MAX_STEPS
CONS_READY = CONS_WAIT + MAX_STEPS
EPI_START = CONS_READY + MAX_STEPS
EPI_END = EPI_START + MAX_ITEMS
BLOCK_WORDS = EPI_END + MAX_ITEMS


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


def summarise(path):
    words = array.array("Q")
    with open(path, "rb") as f:
        words.frombytes(f.read())
    assert len(words) == SLOTS * MAX_BLOCKS * BLOCK_WORDS, "layout differs from gemm_trace.cuh"
    print(f"== {path}")
    spans = {}
    for slot, name in enumerate(("gate/up", "down")):
        blocks = []
        for b in range(MAX_BLOCKS):
            base = (slot * MAX_BLOCKS + b) * BLOCK_WORDS
            rec = words[base:base + BLOCK_WORDS]
            if rec[0] == 0 or rec[2] == 0:
                continue
            blocks.append((b, rec))
        if not blocks:
            continue
        t0 = min(r[0] for _, r in blocks)
        t1 = max(r[2] for _, r in blocks)
        spans[slot] = (t0, t1)
        ends = [(r[2] - t0) / 1e3 for _, r in blocks]
        starts = [(r[0] - t0) / 1e3 for _, r in blocks]
        shares = {"cons_wait": [], "epilogue": [], "prod_wait": []}
        lat, cadence, ghz, steps_all, items_all = [], [], [], [], []
        for _, r in blocks:
            span_clk = r[3] - r[1]
            span_ns = r[2] - r[0]
            if span_clk <= 0 or span_ns <= 0:
                continue
            f = span_clk / span_ns  # cycles per ns
            ghz.append(f)
            steps = min(r[4], MAX_STEPS)
            items = min(r[5], MAX_ITEMS)
            steps_all.append(r[4])
            items_all.append(r[5])
            # Ping-pong: the tracing warp skips the other warpgroup's k-steps (left at zero).
            cw = sum(r[CONS_READY + i] - r[CONS_WAIT + i] for i in range(steps)
                     if r[CONS_WAIT + i])
            pw = sum(r[PROD_ISSUE + i] - r[PROD_WAIT + i] for i in range(steps)
                     if r[PROD_WAIT + i] and r[PROD_ISSUE + i])
            ep = sum(r[EPI_END + i] - r[EPI_START + i] for i in range(items))
            # Past kMaxSteps the k-step arrays stop: their shares are of the recorded time.
            step_clk = span_clk if steps == r[4] else r[CONS_READY + steps - 1] - r[1]
            shares["cons_wait"].append(cw / max(step_clk, 1))
            shares["prod_wait"].append(pw / max(step_clk, 1))
            shares["epilogue"].append(ep / span_clk)
            for i in range(steps):
                waited = r[CONS_READY + i] - r[CONS_WAIT + i]
                if r[CONS_WAIT + i] == 0:
                    continue
                if waited > 200 and r[PROD_ISSUE + i]:
                    lat.append((r[CONS_READY + i] - r[PROD_ISSUE + i]) / f / 1e3)
                if i > 0 and r[CONS_WAIT + i - 1]:
                    cadence.append((r[CONS_READY + i] - r[CONS_READY + i - 1]) / f / 1e3)
        med = lambda v: statistics.median(v) if v else float("nan")
        print(f"  {name}: {len(blocks)} blocks, span {(t1 - t0) / 1e3:.1f} us, "
              f"SM clock {med(ghz):.2f} GHz, k-steps/block {min(steps_all)}-{max(steps_all)}, "
              f"items/block {min(items_all)}-{max(items_all)}")
        print(f"    block start spread {max(starts):.2f} us; end: min {min(ends):.1f} "
              f"median {med(ends):.1f} max {max(ends):.1f} us")
        print(f"    share of block time (median over blocks): consumer waits for data "
              f"{100 * med(shares['cons_wait']):.1f}%, epilogue {100 * med(shares['epilogue']):.1f}%, "
              f"producer waits for a free stage {100 * med(shares['prod_wait']):.1f}%")
        print(f"    stage cadence (consumer, us): median {med(cadence):.3f} p10 {pct(cadence, .1):.3f} "
              f"p90 {pct(cadence, .9):.3f}")
        print(f"    load latency when the consumer waited (issue -> ready, us): n {len(lat)} "
              f"median {med(lat):.2f} p10 {pct(lat, .1):.2f} p90 {pct(lat, .9):.2f}")
        # The tail: SM time after each block's end until the GEMM's last one, and when the tracing
        # warpgroup's items ended in the blocks that end first, at the median and last.
        idle = sum(t1 - r[2] for _, r in blocks) / (len(blocks) * max(t1 - t0, 1))
        print(f"    tail: {100 * idle:.1f}% of the blocks' time idle after their end")
        by_end = sorted(blocks, key=lambda br: br[1][2])
        for label, (_, r) in (("first", by_end[0]), ("median", by_end[len(by_end) // 2]),
                              ("last", by_end[-1])):
            f = (r[3] - r[1]) / max(r[2] - r[0], 1)
            off = (r[0] - t0) / 1e3
            item_ends = [off + (r[EPI_END + i] - r[1]) / f / 1e3
                         for i in range(min(r[5], MAX_ITEMS)) if r[EPI_END + i]]
            print(f"    {label} block to end ({(r[2] - t0) / 1e3:.1f} us): its warpgroup's items "
                  f"ended at " + " ".join(f"{e:.1f}" for e in item_ends))
    if 0 in spans and 1 in spans:
        (g0, g1), (d0, d1) = spans[0], spans[1]
        print(f"  gate/up's last block end -> down's first block start: {(d0 - g1) / 1e3:.2f} us "
              f"(gate/up start -> down end: {(d1 - g0) / 1e3:.1f} us)")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        summarise(p)
