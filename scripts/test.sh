#!/usr/bin/env bash
# README command 2 (and CI's .ci/run): install dependencies, build, and run every test:
#   1. release build (CUDA engine compiled for sm_80 and sm_90a when nvcc exists): all tests
#      (GPU tests skip with a reason where there is no GPU; Python tests use .venv's tritonclient);
#   2. ASan+UBSan build of the CPU code: all CPU tests;
#   3. TSan build of the concurrent components (scheduler, swarm, server): their tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$(date +%s)
scripts/install-deps.sh

step() { echo; echo "=== $* ($(($(date +%s) - start)) s)"; }

step "release build"
scripts/build.sh release
step "release tests"
(cd build && ctest --output-on-failure -j "$(nproc)" --timeout 600)

step "asan+ubsan build"
scripts/build.sh asan
step "asan+ubsan tests"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
   ctest --output-on-failure -j "$(nproc)" -LE "python|slow" --timeout 900)

step "tsan build"
mapfile -t tsan_targets < <(grep -v -E '^\s*(#|$)' tests/tsan_targets.txt)
scripts/build.sh tsan "${tsan_targets[@]}"
step "tsan tests"
(cd build-tsan && TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
   ctest --output-on-failure -j "$(nproc)" -L tsan --timeout 900)
step "all tests passed"
