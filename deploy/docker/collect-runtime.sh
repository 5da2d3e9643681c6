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

# ldd lines: "libfoo.so.1 => /path/libfoo.so.1 (0x...)", "libfoo.so.1 => not found",
# "/lib64/ld-linux-x86-64.so.2 (0x...)", "linux-vdso.so.1 (0x...)".
declare -A path_of=()
missing=0
while read -r soname arrow path _; do
  case "$soname" in
    linux-vdso.so.*|libcuda.so.*|libnvidia-*) continue ;;
  esac
  if [[ "$arrow" != "=>" ]]; then path=$soname; fi  # the dynamic loader
  if [[ "$path" == "not" ]]; then
    echo "collect-runtime: $soname not found" >&2
    missing=1
    continue
  fi
  path_of[$soname]=$path
done < <(ldd "$binary")

# One dpkg query for every path and its symlink target ("pkg[:arch]: /path" lines).
declare -A owner=()
paths=()
for soname in "${!path_of[@]}"; do
  paths+=("${path_of[$soname]}" "$(readlink -f "${path_of[$soname]}")")
done
while IFS= read -r line; do
  pkg=${line%%: *}
  owner[${line#*: }]=${pkg%%:*}
done < <(dpkg -S "${paths[@]}" 2>/dev/null || true)

declare -A packages=()
for soname in "${!path_of[@]}"; do
  path=${path_of[$soname]}
  pkg=${owner[$path]:-${owner[$(readlink -f "$path")]:-}}
  if [[ -n "$pkg" ]]; then
    packages[$pkg]=1
  else
    cp -L "$path" "$out/lib/$soname"
  fi
done
if ((${#packages[@]})); then
  dpkg-query -W -f='${Package}=${Version}\n' "${!packages[@]}" | sort >"$out/packages.txt"
else
  : >"$out/packages.txt"
fi
echo "collect-runtime: $(wc -l <"$out/packages.txt") packages, $(ls "$out/lib" | wc -l) unpackaged libraries"
exit $missing
