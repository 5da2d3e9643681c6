#!/usr/bin/env bash
# Serves the embedded model with the CUDA engine on the device machine and drives it with the
# daemon's own client and moe-loadgen; checks the engine the daemon chose from /metrics.
#   ../shared/tools/device-bundle .device build/bin/{moe-swarm,moe-loadgen}
#   (device tool, carry [".device"]):  source .device/env.sh; tools/device/serve_run.sh
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
export MOE_CACHE_DIR=/tmp/moe-cache
moe-swarm serve --port 50051 --metrics-port 9091 --engine auto >"$out/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null' EXIT
for _ in $(seq 1 120); do
  curl -sf http://127.0.0.1:9091/readyz >/dev/null && break
  sleep 0.5
done
grep -E "stage 3|ready" "$out/serve.log"
echo "=== client"
moe-swarm client --address 127.0.0.1:50051 --layer 0 --tokens 4 --routing 2>&1 | tail -12
moe-swarm client --address 127.0.0.1:50051 --api kserve --layer 1 --tokens 3 --dtype f16 2>&1 | tail -3
echo "=== loadgen"
for c in 1 8 64; do
  moe-loadgen --target 127.0.0.1:50051 --concurrency $c --tokens 1-16 --warmup 0.5 --duration 3 \
    --metrics-url http://127.0.0.1:9091/metrics --label "cuda-c$c" --json-out "$out/loadgen.jsonl" 2>&1 | tail -12
done
moe-loadgen --target 127.0.0.1:50051 --concurrency 1 --tokens 1 --warmup 0.5 --duration 2 --label cuda-1tok 2>&1 | tail -8
curl -s http://127.0.0.1:9091/metrics | grep -E "^moe_build_info|^moe_gpu_memory" | head
echo "=== drain"
kill -TERM $pid; wait $pid; echo "serve exit=$?"
tail -4 "$out/serve.log"
