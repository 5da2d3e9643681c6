#!/usr/bin/env bash
# Runs the CUDA engine's GPU checks and benchmark on the device machine, from a bundle made here:
#   ../shared/tools/device-bundle .device build-cuda/bin/{cuda_engine_test,tile_heuristics_test,cuda_engine_bench}
# then (device tool, carry [".device"]):  source .device/env.sh; tools/device/cuda_engine_run.sh [steps]
# Steps (default: info test bench): info, test, sanitize (memcheck + racecheck on a test subset),
# bench (full roofline report), quickbench (no deterministic column), wsbench (warp-specialised
# wgmma kernel vs the cp.async one at 512-16384 tokens), wsinvariance, abbench (a baseline binary
# bundled as cuda_engine_bench_base vs this tree's cuda_engine_bench at 512-16384 tokens,
# alternating, AB_ROUNDS rounds), abpoints (the same, alternating per point: AB_POINTS; summary by
# tools/device/ab_compare.py), decodeab (small-batch paths A/B at 1/8/64 tokens), decodencu
# (per-kernel ncu times of those paths), routerncu (the large-batch router kernel's ncu sections).
# Outputs go to $OUT.
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
steps=${*:-info test bench}
for step in $steps; do
  echo "=== $step ($(date -u +%H:%M:%S))"
  case $step in
    info)
      nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,driver_version --format=csv ;;
    test)
      tile_heuristics_test --gtest_brief=1 2>&1 | tail -3
      cuda_engine_test 2>&1 | tee "$out/cuda_engine_test.log" | grep -E "^\[ +(OK|FAILED|SKIPPED|PASSED) |Failure|error|Expected|Which is|actual|rel_err" | head -80 ;;
    sanitize)
      compute-sanitizer --tool memcheck --error-exitcode 3 cuda_engine_test \
        --gtest_filter='CudaEngine.WithoutGraphsAndDeterministic:CudaEngine.DeterministicIsBatchInvariant' > "$out/memcheck.log" 2>&1
      echo "memcheck rc=$?"; tail -4 "$out/memcheck.log"
      compute-sanitizer --tool racecheck --error-exitcode 3 cuda_engine_test \
        --gtest_filter='CudaEngine.WithoutGraphsAndDeterministic' > "$out/racecheck.log" 2>&1
      echo "racecheck rc=$?"; tail -4 "$out/racecheck.log" ;;
    ncu)  # per-kernel device time of one forward (2 forwards profiled) at 1 and 4096 tokens
      for t in 1 4096; do
        ncu --clock-control none --graph-profiling node -k regex:'Gemm|Route|Scan|Convert|Combine' \
          --launch-skip 120 --launch-count 20 --metrics gpu__time_duration.sum --csv \
          cuda_engine_bench --report=/tmp/ncu.jsonl --shapes=qwen3 --tokens=$t --no-det > "$out/ncu_qwen3_$t.csv" 2>&1
        echo "ncu tokens=$t rc=$?"
        grep gpu__time_duration "$out/ncu_qwen3_$t.csv" | awk -F'","' '{print $5, $(NF)}' | sed 's/"//g' | cut -c1-110 | head -12
      done ;;
    invariance)
      cuda_engine_bench --check-invariance 2>&1 | tee "$out/invariance.txt" ;;
    bench)
      cuda_engine_bench --report="$out/cuda_engine_bench.jsonl" 2>&1 | tee "$out/bench.txt" ;;
    narrowbench)
      cuda_engine_bench --report="$out/narrow.jsonl" --no-det --narrow --tokens=512,4096,16384 2>&1 | tee "$out/narrow.txt" ;;
    tallbench)
      cuda_engine_bench --report="$out/tall.jsonl" --no-det --tall --tokens=512,4096,16384 2>&1 | tee "$out/tall.txt" ;;
    wsbench)  # warp-specialised persistent wgmma kernel (--ws) vs the cp.async one, large batches
      for v in ws wide; do
        flag=--$v
        timeout ${WS_BENCH_TIMEOUT:-120} cuda_engine_bench --report="$out/$v.jsonl" --no-det $flag \
          --shapes=mixtral,qwen3,dsv2lite --tokens=512,4096,16384 > "$out/$v.txt" 2>&1
        echo "$v rc=$?"; cat "$out/$v.txt"
      done ;;
    abbench)  # baseline binary vs this tree, alternating (same card, same call)
      for r in $(seq 1 ${AB_ROUNDS:-1}); do
        for v in base new; do
          b=cuda_engine_bench; [ $v = base ] && b=cuda_engine_bench_base
          timeout ${AB_BENCH_TIMEOUT:-60} $b --report="$out/${v}_$r.jsonl" --no-det \
            --shapes=mixtral,qwen3,dsv2lite --tokens=512,4096,16384 > "$out/${v}_$r.txt" 2>&1
          echo "$v round $r rc=$?"; grep -v "^$" "$out/${v}_$r.txt" | tail -14
        done
      done ;;
    abpoints)  # baseline binary vs this tree alternating per point, so that a card's drift within
      # the call lands on both (session 27: all points of one binary, then the other's, drifted
      # 2-5% at 4096+ tokens). AB_POINTS: shape:tokens[,tokens] ...; AB_FLAGS: for both binaries.
      # Its own folder: abbench writes files of the same names.
      ab="$out/abpoints"
      mkdir -p "$ab"
      for r in $(seq 1 ${AB_ROUNDS:-3}); do
        for p in ${AB_POINTS:-qwen3:512,4096 dsv2lite:512,4096 mixtral:512,4096}; do
          for v in base new; do
            b=cuda_engine_bench; [ $v = base ] && b=cuda_engine_bench_base
            rm -f "$ab/point.jsonl"
            timeout ${AB_BENCH_TIMEOUT:-60} $b --report="$ab/point.jsonl" --no-det --expected-active \
              --shapes="${p%%:*}" --tokens="${p#*:}" ${AB_FLAGS:-} > /dev/null 2>&1 ||
              echo "$v $p round $r failed"
            [ -f "$ab/point.jsonl" ] && cat "$ab/point.jsonl" >> "$ab/${v}_$r.jsonl"
          done
        done
        echo "round $r done"
      done
      rm -f "$ab/point.jsonl"
      python3 "$(dirname "$0")/ab_compare.py" "$ab" base new ;;
    wsinvariance)
      timeout 60 cuda_engine_bench --ws --check-invariance 2>&1 | tee "$out/ws_invariance.txt" ;;
    decodeab)  # small batches: decode experts path at 1 token (default), everywhere it fits, never
      for v in default gemv-always no-gemv; do
        flag=; [ $v != default ] && flag=--$v
        timeout ${DECODE_BENCH_TIMEOUT:-90} cuda_engine_bench --report="$out/decode_$v.jsonl" --no-det \
          --tokens=1,8,64 $flag > "$out/decode_$v.txt" 2>&1
        echo "$v rc=$?"; grep -v "^  " "$out/decode_$v.txt"
      done ;;
    decodencu)  # per-kernel device time (ncu) of the small-batch kernels: shape:tokens:flag
      for c in ${DECODE_NCU:-qwen3:1: qwen3:1:--no-gemv qwen3:8:--gemv-always}; do
        IFS=: read -r sh t flag <<< "$c"
        f="$out/ncu_${sh}_${t}${flag:+_${flag#--}}.csv"
        timeout 60 ncu --clock-control none --graph-profiling node \
          -k regex:'Front|Decode|Gemm|Route|Scan|Convert|Combine' --launch-skip 150 --launch-count 12 \
          --metrics gpu__time_duration.sum --csv cuda_engine_bench --report=/tmp/ncu.jsonl \
          --shapes=$sh --tokens=$t --no-det $flag > "$f" 2>&1
        echo "ncu $c rc=$?"
        grep gpu__time_duration "$f" | awk -F'","' '{print $5, $(NF)}' | sed 's/"//g' | cut -c1-90 | head -12
      done ;;
    routerncu)  # the large-batch router kernel (kWgmmaWsNarrow) under ncu: ROUTER_NCU shape:tokens
      # (session 28: 18.9 us at Qwen3 4096 tokens, ~2.3 us a k-step against ~1.1 at 16384; the
      # cause not found). Its instance is the only WgmmaWsGemmKernel of these plans.
      for c in ${ROUTER_NCU:-qwen3:4096 qwen3:16384 dsv2lite:4096}; do
        sh=${c%%:*}; t=${c#*:}
        timeout 120 ncu --clock-control none --graph-profiling node -k regex:WgmmaWsGemmKernel \
          --launch-skip 5 --launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis \
          --section WarpStateStats --section SchedulerStats --section LaunchStats \
          cuda_engine_bench --report=/tmp/ncu.jsonl --shapes=$sh --tokens=$t --no-det \
          > "$out/ncu_router_${sh}_$t.txt" 2>&1
        echo "ncu router $c rc=$?"
        grep -E "Duration|DRAM Throughput|L2 Cache Throughput|Memory Throughput|Stall|Issued Warp" \
          "$out/ncu_router_${sh}_$t.txt" | head -20
      done ;;
    decodebench)
      cuda_engine_bench --report="$out/decode.jsonl" --no-det --tokens=1,8,64 2>&1 | tee "$out/decode.txt" ;;
    quickbench)
      cuda_engine_bench --report="$out/cuda_engine_bench.jsonl" --no-det 2>&1 | tee "$out/bench.txt" ;;
    *) echo "unknown step $step" ;;
  esac
done
