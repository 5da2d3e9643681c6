#!/bin/sh
# Compiler launcher of the CUDA kernels (kernels/CMakeLists.txt): runs the compile command it is
# given and keeps what the command printed (ptxas -v's registers and spills of every kernel) beside
# its object file, as <object>.log, for tools/check_kernel_spills.py --logs (so that the spill check
# reads the build's own report instead of compiling every kernel again). The output still goes to
# the build's log, and the exit status is the command's.
out=
prev=
for arg in "$@"; do
  if [ "$prev" = "-o" ]; then out=$arg; fi
  prev=$arg
done
if [ -z "$out" ]; then exec "$@"; fi
"$@" >"$out.log.tmp" 2>&1
rc=$?
cat "$out.log.tmp" >&2
mv -f "$out.log.tmp" "$out.log"
exit $rc
