#!/usr/bin/env bash
# One device call that checks a whole tree on the GPU before a release: every GPU test, a
# compute-sanitizer pass over the newest kernels, the full roofline table and an ncu profile of the
# large-batch GEMMs. Bundle made here (see tools/device/cuda_engine_run.sh for the workflow):
#   cuda_engine_test decode_path_test expert_cache_engine_test host_tier_test tile_heuristics_test
#   cuda_engine_bench
# then on the device machine: source <bundle>/env.sh; tools/device/release_check.sh
# Every step has its own timeout so that one hang cannot eat the call. Outputs go to $OUT.
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
step() { echo "=== $1 ($(date -u +%H:%M:%S))"; }

step info
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv

step tests
for t in tile_heuristics_test cuda_engine_test decode_path_test expert_cache_engine_test \
  host_tier_test; do
  command -v "$t" > /dev/null || { echo "$t: not in the bundle"; continue; }
  timeout 180 "$t" > "$out/$t.log" 2>&1
  echo "$t rc=$? $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$out/$t.log" | tr '\n' ' ')"
  grep -E '^\[  FAILED  \]|Failure' "$out/$t.log" | head -10
done

step sanitize  # memcheck of the decode experts kernels and the cached forward (1 token .. 600)
timeout 150 compute-sanitizer --tool memcheck --error-exitcode 3 cuda_engine_test \
  --gtest_filter='CudaEngine.DecodeExpertsPath' > "$out/memcheck.log" 2>&1
echo "memcheck decode rc=$?"; tail -2 "$out/memcheck.log"
timeout 150 compute-sanitizer --tool memcheck --error-exitcode 3 expert_cache_engine_test \
  --gtest_filter='ExpertCacheEngine.Qwen2MoeSharedExpertBitwiseUnderBudgets' >> "$out/memcheck.log" 2>&1
echo "memcheck cache rc=$?"; tail -2 "$out/memcheck.log"
timeout 120 compute-sanitizer --tool memcheck --error-exitcode 3 cuda_engine_test \
  --gtest_filter='CudaEngine.ClusterTile' >> "$out/memcheck.log" 2>&1
echo "memcheck cluster tile rc=$?"; tail -2 "$out/memcheck.log"

step bench
timeout 240 cuda_engine_bench --report="$out/bench.jsonl" --no-det > "$out/bench.txt" 2>&1
echo "bench rc=$?"; cat "$out/bench.txt" | grep -v "^\s*$" | tail -40

step bench-cluster  # the TMA-multicast cluster tile (an option) at the large-batch points
timeout 90 cuda_engine_bench --report="$out/bench_cluster.jsonl" --no-det --cluster \
  --shapes=mixtral,qwen3,dsv2lite --tokens=512,4096,16384 > "$out/bench_cluster.txt" 2>&1
echo "bench-cluster rc=$?"; grep -E "^(mixtral|qwen3|dsv2lite|cluster) " "$out/bench_cluster.txt"

step ncu  # the large-batch GEMMs at Qwen3 4096 tokens: time, tensor pipe, L2 and DRAM throughput
timeout 90 ncu --clock-control none -k regex:'Gemm' --launch-skip 60 --launch-count 6 \
  --metrics gpu__time_duration.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,lts__t_bytes.sum.per_second,dram__bytes.sum.per_second,sm__warps_active.avg.pct_of_peak_sustained_active \
  --csv cuda_engine_bench --report=/tmp/ncu.jsonl --shapes=qwen3 --tokens=4096 --no-det > "$out/ncu_gemm.csv" 2>&1
echo "ncu rc=$?"
grep -E 'gpu__time|sm__pipe|lts__t|dram__|warps_active' "$out/ncu_gemm.csv" | awk -F'","' '{print substr($5,1,40), $(NF-2), $(NF-1), $NF}' | sed 's/"//g' | head -30
