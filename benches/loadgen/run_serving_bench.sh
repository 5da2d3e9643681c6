#!/usr/bin/env bash
# Serving benchmark of `moe-swarm serve` (CPU engine, embedded model) on loopback.
#
#   benches/loadgen/run_serving_bench.sh [BUILD_DIR]      (default: build-loadgen)
#
# Steps (bounded: about 2 minutes with the defaults, 3 at most):
#   1. moe-engine-bench: the engine alone at batch sizes 1..512, with 1 slot (engine-1slot.jsonl:
#      a lone batch's latency) and with the daemon's SLOTS slots driven at once
#      (engine-Nslot.jsonl: the engine's throughput as the daemon runs it); this also generates
#      the embedded model into a temporary cache dir.
#   2. `moe-swarm serve` twice in turn on free loopback ports, same cache dir:
#        a. --max-queue-delay-us 0: 1-token requests at concurrency 1 -> serving overhead with no
#           batching wait (p50 latency minus the engine's time for one token);
#        b. defaults (max_queue_delay_us 500): the same 1-token run, then closed loop at
#           concurrency 1, 8, 64 with 1-16 tokens per request (unary RPCs), concurrency 8 again
#           over one ForwardStream, then open-loop Poisson at OPEN_FRACTION of the
#           concurrency-64 throughput.
#      Each run scrapes /metrics before and after its window (mean batch size) and is compared
#      with the engine alone at that batch size (batching efficiency = served tokens/s / engine
#      tokens/s at the achieved mean batch size): concurrency-1 runs against the 1-slot baseline
#      (one batch at a time), the others against the SLOTS-slot one.
#      Right after each run the engine alone is timed again at the two batch sizes around the
#      achieved mean (PAIRED_MS each): the "paired" baseline, taken under the same background
#      load as the run (on a shared machine it drifts 2-3x within minutes).
#   3. A summary table; every run's JSON line is kept in $OUT_DIR/results.jsonl.
# The daemons are stopped (SIGTERM, then SIGKILL) on exit, whatever happens.
#
# Environment: DURATION (s per run, default 8), WARMUP (s, default 1), TOKENS (default 1-16),
# OPEN_FRACTION (default 0.5), RATE (open-loop req/s; overrides OPEN_FRACTION), OUT_DIR (default
# a new temp dir), MOE_SWARM / MOE_LOADGEN / MOE_ENGINE_BENCH (binaries; default BUILD_DIR/bin),
# SLOTS (engine slots of the daemon and the baseline, default 2 = the daemon's CPU default),
# SERVE_ARGS (extra `moe-swarm serve` flags, e.g. "--threads 2"), NICE (run the engine bench,
# the daemon and the load generator under `nice -n NICE`; e.g. -10 on a shared machine so that
# background jobs at nice >= 0 disturb the measurement less; needs the privilege to lower it).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build_dir="${1:-${repo_root}/build-loadgen}"
MOE_SWARM="${MOE_SWARM:-${build_dir}/bin/moe-swarm}"
MOE_LOADGEN="${MOE_LOADGEN:-${build_dir}/bin/moe-loadgen}"
MOE_ENGINE_BENCH="${MOE_ENGINE_BENCH:-${build_dir}/bin/moe-engine-bench}"
DURATION="${DURATION:-8}"
WARMUP="${WARMUP:-1}"
TOKENS="${TOKENS:-1-16}"
OPEN_FRACTION="${OPEN_FRACTION:-0.5}"
RATE="${RATE:-}"
SERVE_ARGS="${SERVE_ARGS:-}"
SLOTS="${SLOTS:-2}"
PAIRED_MS="${PAIRED_MS:-1000}"
NICE="${NICE:-}"
run_nice=()
if [[ -n "${NICE}" ]]; then run_nice=(nice -n "${NICE}"); fi

for bin in "${MOE_SWARM}" "${MOE_LOADGEN}" "${MOE_ENGINE_BENCH}"; do
  if [[ ! -x "${bin}" ]]; then
    echo "missing ${bin}: cmake --build ${build_dir} --target moe-swarm moe-loadgen moe-engine-bench" >&2
    exit 1
  fi
done
for tool in curl jq python3; do
  command -v "${tool}" > /dev/null || { echo "needs ${tool}" >&2; exit 1; }
done

work_dir="$(mktemp -d /tmp/moe-serving-bench.XXXXXX)"
OUT_DIR="${OUT_DIR:-${work_dir}}"
mkdir -p "${OUT_DIR}"
cache_dir="${work_dir}/cache"
results="${OUT_DIR}/results.jsonl"
engine1="${OUT_DIR}/engine-1slot.jsonl"
engineN="${OUT_DIR}/engine-${SLOTS}slot.jsonl"
: > "${results}"

daemon_pid=""
stop_daemon() {
  if [[ -n "${daemon_pid}" ]] && kill -0 "${daemon_pid}" 2> /dev/null; then
    kill -TERM "${daemon_pid}" 2> /dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "${daemon_pid}" 2> /dev/null || break
      sleep 0.1
    done
    kill -KILL "${daemon_pid}" 2> /dev/null || true
    wait "${daemon_pid}" 2> /dev/null || true
  fi
  daemon_pid=""
}
cleanup() {
  stop_daemon
  rm -rf "${cache_dir}"
  if [[ "${OUT_DIR}" != "${work_dir}" ]]; then rm -rf "${work_dir}"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# CPU seconds (user + system) of a process, from /proc.
cpu_seconds() {
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"
}

# start_daemon NAME [serve flags...]: starts `moe-swarm serve` and waits for /readyz.
start_daemon() {
  local name="$1"
  shift
  grpc_port="$(free_port)"
  metrics_port="$(free_port)"
  while [[ "${metrics_port}" == "${grpc_port}" ]]; do metrics_port="$(free_port)"; done
  # shellcheck disable=SC2086
  "${run_nice[@]}" "${MOE_SWARM}" serve --address 127.0.0.1 --port "${grpc_port}" \
    --metrics-address 127.0.0.1 --metrics-port "${metrics_port}" --cache-dir "${cache_dir}" \
    --slots "${SLOTS}" --log-level warn "$@" ${SERVE_ARGS} > "${OUT_DIR}/daemon-${name}.log" 2>&1 &
  daemon_pid=$!
  local ready_url="http://127.0.0.1:${metrics_port}/readyz"
  for _ in $(seq 1 600); do
    if curl -sf -o /dev/null "${ready_url}"; then
      echo "daemon ${name}: pid ${daemon_pid}, gRPC 127.0.0.1:${grpc_port}, metrics :${metrics_port}"
      return 0
    fi
    if ! kill -0 "${daemon_pid}" 2> /dev/null; then
      echo "daemon ${name} exited during start-up:" >&2
      tail -20 "${OUT_DIR}/daemon-${name}.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "daemon ${name} not ready after 60 s" >&2
  exit 1
}

# load LABEL BASELINE [moe-loadgen flags...]: one measured run against the current daemon.
load() {
  local label="$1" baseline="$2"
  shift 2
  local cpu0 cpu1
  cpu0="$(cpu_seconds "${daemon_pid}")"
  local loadavg
  loadavg="$(cut -d' ' -f1 /proc/loadavg)"
  "${run_nice[@]}" "${MOE_LOADGEN}" --label "${label}" --target "127.0.0.1:${grpc_port}" \
    --metrics-url "http://127.0.0.1:${metrics_port}/metrics" --engine-baseline "${baseline}" \
    --warmup "${WARMUP}" --duration "${DURATION}" --timeout 10 --json-out "${results}" "$@"
  cpu1="$(cpu_seconds "${daemon_pid}")"
  # Paired baseline: the engine alone at the batch sizes around the achieved mean, measured right
  # after the run (the machine's background load drifts within minutes), with the baseline's slots.
  local mean_batch slots sizes paired="${OUT_DIR}/paired.jsonl"
  mean_batch="$(tail -1 "${results}" | jq '.mean_batch_tokens // 1')"
  slots="$(jq -r '.slots' "${baseline}" | head -1)"
  sizes="$(python3 -c "import math; b = ${mean_batch}; print(','.join(sorted({str(max(1, math.floor(b))), str(max(1, math.ceil(b)))}, key=int)))")"
  "${run_nice[@]}" "${MOE_ENGINE_BENCH}" --cache-dir "${cache_dir}" --min-time-ms "${PAIRED_MS}" \
    --slots "${slots}" --batch-sizes "${sizes}" --json-out "${paired}" > /dev/null
  # Attach the paired engine comparison, the daemon's CPU seconds over the run (warm-up included)
  # and the 1-minute load average before it to the run's JSON line.
  python3 - "${results}" "${cpu0}" "${cpu1}" "${loadavg}" "${paired}" << 'EOF'
import json, sys
path, paired = sys.argv[1], sys.argv[5]
cpu0, cpu1, loadavg = float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
lines = open(path).read().splitlines()
last = json.loads(lines[-1])
last["daemon_cpu_s"] = round(cpu1 - cpu0, 2)
last["loadavg_1m_before"] = loadavg
points = sorted((p["batch_tokens"], p["us_per_forward"], p["slots"])
                for p in map(json.loads, open(paired).read().splitlines()))
b = max(1.0, last.get("mean_batch_tokens", 1.0))
(b0, t0, slots), (b1, t1, _) = points[0], points[-1]
us = t0 if b1 == b0 else t0 + (b - b0) / (b1 - b0) * (t1 - t0)
last["paired_engine_slots"] = slots
last["paired_engine_us"] = us
last["paired_engine_tokens_per_s"] = slots * b / (us * 1e-6)
last["paired_efficiency"] = last["tokens_per_s"] / last["paired_engine_tokens_per_s"]
last["paired_p50_over_engine_us"] = last["latency_ms"]["p50"] * 1e3 - us
lines[-1] = json.dumps(last)
open(path, "w").write("\n".join(lines) + "\n")
print(f"  paired      engine alone ({slots} slot(s)) at {b:.2f} tokens/batch, measured now: "
      f"{us:.1f} us/forward, {last['paired_engine_tokens_per_s']:.1f} tokens/s -> efficiency "
      f"{last['paired_efficiency']:.2f}; p50 - engine time = {last['paired_p50_over_engine_us']:.1f} us")
EOF
  echo
}

started=$(date +%s)
echo "== machine: $(nproc) cores, $(uname -m), load average: $(cut -d' ' -f1-3 /proc/loadavg)${NICE:+, nice ${NICE}}"
echo "== results in ${OUT_DIR}"
echo
echo "== 1. engine alone (moe-engine-bench), 1 slot, then ${SLOTS} slots at once"
"${run_nice[@]}" "${MOE_ENGINE_BENCH}" --cache-dir "${cache_dir}" --min-time-ms 800 --slots 1 --json-out "${engine1}"
if [[ "${SLOTS}" != 1 ]]; then
  "${run_nice[@]}" "${MOE_ENGINE_BENCH}" --cache-dir "${cache_dir}" --min-time-ms 800 --slots "${SLOTS}" \
    --json-out "${engineN}"
fi
echo

echo "== 2a. serving overhead with no batching wait (--max-queue-delay-us 0)"
start_daemon nodelay --max-queue-delay-us 0
load "overhead, 1 token, c=1, delay 0" "${engine1}" --concurrency 1 --tokens 1
stop_daemon

echo "== 2b. default scheduler (max_queue_delay_us 500)"
start_daemon default
load "overhead, 1 token, c=1" "${engine1}" --concurrency 1 --tokens 1
load "closed c=1, ${TOKENS} tokens" "${engine1}" --concurrency 1 --tokens "${TOKENS}"
load "closed c=8, ${TOKENS} tokens" "${engineN}" --concurrency 8 --tokens "${TOKENS}"
load "closed c=64, ${TOKENS} tokens" "${engineN}" --concurrency 64 --tokens "${TOKENS}"
c64_rps="$(tail -1 "${results}" | jq '.requests_per_s')"
load "closed c=8, ${TOKENS} tokens, stream" "${engineN}" --concurrency 8 --tokens "${TOKENS}" \
  --api stream
if [[ -z "${RATE}" ]]; then
  RATE="$(python3 -c "print(max(1.0, round(${c64_rps} * ${OPEN_FRACTION}, 1)))")"
fi
load "open Poisson ${RATE} req/s, ${TOKENS} tokens" "${engineN}" --rate "${RATE}" --tokens "${TOKENS}"
stop_daemon

echo "== 3. summary ($(($(date +%s) - started)) s; load average now: $(cut -d' ' -f1-3 /proc/loadavg))"
{
  printf 'engine alone\tslots'
  jq -r '.batch_tokens' "${engine1}" | paste -sd'\t' | sed 's/^/\t/'
  for f in "${engine1}" "${engineN}"; do
    [[ -f "${f}" ]] || continue
    printf 'us/forward\t%s' "$(jq -r '.slots' "${f}" | head -1)"
    jq -r '.us_per_forward | round' "${f}" | paste -sd'\t' | sed 's/^/\t/'
    printf 'tokens/s\t%s' "$(jq -r '.slots' "${f}" | head -1)"
    jq -r '.tokens_per_s | round' "${f}" | paste -sd'\t' | sed 's/^/\t/'
  done
} | column -t -s $'\t'
echo
{
  printf 'run\treq/s\ttok/s\tp50 ms\tp90 ms\tp99 ms\tmax ms\tbatch\tdaemon us/batch\tslots\tengine us/batch\tengine tok/s\teff\tp50-engine us\teff (start)\terrors\tcpu d/c s\n'
  jq -r '[.label, (.requests_per_s | . * 10 | round / 10), (.tokens_per_s | round),
          (.latency_ms.p50 | . * 1000 | round / 1000), (.latency_ms.p90 | . * 1000 | round / 1000),
          (.latency_ms.p99 | . * 1000 | round / 1000), (.latency_ms.max | . * 1000 | round / 1000),
          (.mean_batch_tokens // 0 | . * 100 | round / 100), (.daemon_compute_us_per_batch // 0 | round),
          .paired_engine_slots, (.paired_engine_us | round), (.paired_engine_tokens_per_s | round),
          (.paired_efficiency | . * 100 | round / 100), (.paired_p50_over_engine_us | round),
          (.efficiency // 0 | . * 100 | round / 100),
          ((.errors | to_entries | map("\(.key)=\(.value)") | join(",")) | if . == "" then "0" else . end),
          "\(.daemon_cpu_s)/\(.client_cpu_s | . * 100 | round / 100)"] | @tsv' "${results}"
} | column -t -s $'\t'
