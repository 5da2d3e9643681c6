#!/usr/bin/env bash
# Kernel timelines of cuda_engine_bench points on the device machine, through nsys.
#   tools/device/nsys_timeline.sh LIBDIR OUTDIR SHAPE:TOKENS... [-- BENCH FLAGS]
# LIBDIR: libdw.so.1 and the libraries it needs that the device machine lacks, copied from the
# build machine (Debian 12), because the device's nsys (the one under Nsight Compute) converts its
# raw trace with a QdstrmImporter that needs them:
#   mkdir -p LIBDIR && cp -L /usr/lib/x86_64-linux-gnu/libdw.so.1 \
#     /lib/x86_64-linux-gnu/{libelf.so.1,liblzma.so.5,libbz2.so.1.0} LIBDIR
# Per point: nsys profile --cuda-graph-trace=node of `cuda_engine_bench --no-det` at that shape
# and token count, imported and exported to SQLite, summarised by nsys_timeline.py into
# OUTDIR/timeline_SHAPE_TOKENS.txt; the trace files are deleted (with --gpu-metrics-devices added
# they grew to ~0.5 GB a point, too large to come back). cuda_engine_bench must be on PATH
# (source .device/env.sh first); NSYS overrides the nsys found under /opt/nvidia.
# NSYS_GPU_METRICS=HZ also samples the GPU's metrics (clock, activity, DRAM bandwidth) at HZ
# samples a second; nsys_timeline.py then adds their means per kernel of the forward.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
libdir=$(cd "$1" && pwd)
out=$2
shift 2
points=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do points+=("$1"); shift; done
[ $# -gt 0 ] && shift
mkdir -p "$out"
nsys=${NSYS:-$(find /opt/nvidia -path '*target-linux-x64/nsys' -type f 2>/dev/null | head -1)}
importer=$(find /opt/nvidia -name QdstrmImporter -type f 2>/dev/null | head -1)
for p in "${points[@]}"; do
  shape=${p%:*}
  tokens=${p#*:}
  base="$out/trace_${shape}_$tokens"
  metrics=()
  [ -n "${NSYS_GPU_METRICS:-}" ] &&
    metrics=(--gpu-metrics-devices=0 "--gpu-metrics-frequency=$NSYS_GPU_METRICS")
  timeout 120 "$nsys" profile --cuda-graph-trace=node "${metrics[@]}" -o "$base" cuda_engine_bench --no-det \
    --shapes="$shape" --tokens="$tokens" --report="$base.jsonl" "$@" > "$base.log" 2>&1
  LD_LIBRARY_PATH="$libdir:${LD_LIBRARY_PATH:-}" timeout 60 "$importer" -i "$base.qdstrm" \
    >> "$base.log" 2>&1
  timeout 60 "$nsys" export --type sqlite -o "$base.sqlite" "$base.nsys-rep" >> "$base.log" 2>&1
  python3 "$here/nsys_timeline.py" "$base.sqlite" "${shape} ${tokens}" \
    > "$out/timeline_${shape}_$tokens.txt" 2>&1
  cat "$out/timeline_${shape}_$tokens.txt"
  rm -f "$base.qdstrm" "$base.nsys-rep" "$base.sqlite"
done
