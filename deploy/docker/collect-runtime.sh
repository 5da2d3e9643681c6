#!/usr/bin/env bash
# Lists what a dynamically linked binary needs at run time, for the slim runtime stage of
# Dockerfile.gpu / deploy/docker/Dockerfile.cpu:
#   OUT/packages.txt  Debian packages owning its shared libraries, pinned to the versions the build
#                     stage installed (so the runtime stage installs exactly those, nothing else)
#   OUT/lib/          shared libraries owned by no package (the CUDA toolkit's libcudart,
#                     libcublas, libcublasLt under /usr/local/cuda), copied with their SONAMEs
# The NVIDIA driver library (libcuda.so.1) is deliberately left out: the NVIDIA container toolkit
# mounts the host driver's copy into GPU containers at run time.
#   usage: deploy/docker/collect-runtime.sh BINARY OUT
set -euo pipefail
binary=$1
out=$2
mkdir -p "$out/lib"
: >"$out/packages.txt"
declare -A seen=()
missing=0
while read -r line; do
  # ldd lines: "libfoo.so.1 => /path/libfoo.so.1 (0x...)", "libfoo.so.1 => not found",
  # "/lib64/ld-linux-x86-64.so.2 (0x...)", "linux-vdso.so.1 (0x...)".
  soname=$(awk '{print $1}' <<<"$line")
  path=$(awk '$2 == "=>" {print $3}' <<<"$line")
  case "$soname" in
    linux-vdso.so.*|libcuda.so.*|libnvidia-*) continue ;;
  esac
  if [[ "$path" == "not" ]]; then
    echo "collect-runtime: $soname not found" >&2
    missing=1
    continue
  fi
  [[ -n "$path" ]] || path=$soname  # the dynamic loader line
  real=$(readlink -f "$path")
  if owner=$(dpkg -S "$path" 2>/dev/null || dpkg -S "$real" 2>/dev/null); then
    pkg=${owner%%:*}
    [[ -n "${seen[$pkg]:-}" ]] && continue
    seen[$pkg]=1
    echo "$pkg=$(dpkg-query -W -f='${Version}' "$pkg")" >>"$out/packages.txt"
  else
    cp -L "$path" "$out/lib/$soname"
  fi
done < <(ldd "$binary")
sort -o "$out/packages.txt" "$out/packages.txt"
echo "collect-runtime: $(wc -l <"$out/packages.txt") packages, $(ls "$out/lib" | wc -l) unpackaged libraries"
exit $missing
