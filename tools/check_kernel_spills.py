#!/usr/bin/env python3
"""Register spills of every CUDA kernel against a budget (ctest kernel_spills_test).

Reads ptxas -v's report of every kernel of kernels/*.cu and fails when one's spill stores exceed
its budget: 0 bytes unless BUDGETS below names the kernel. With --logs, the report is the build's
own (the <file>.cu.o.log that tools/compile_log.sh keeps beside each object: every arch the build
targets); a file without one is compiled here for sm_90a. A spill in a
GEMM's producer loop is a silent slowdown that no correctness test sees: in session 24 the
cp.async wgmma tile's 40-register producer began to spill 248-624 bytes and the large-batch router
ran ~4x slower for two sessions (benches/RESULTS.md, "Session 26"). When a change must spill more,
raise its budget here and say why in the commit.

  tools/check_kernel_spills.py --nvcc /usr/local/cuda/bin/nvcc [--source-dir .] [--jobs 2]
                               [--logs BUILD/kernels/CMakeFiles/moe_cuda_kernels.dir]
"""
import argparse
import concurrent.futures
import os
import re
import subprocess
import sys
import tempfile

# (regular expression on the demangled kernel name, spill-store bytes allowed), first match wins.
# The values are the spills of the tree that set them (nvcc 13.0, sm_90a; sm_80 spills nothing).
BUDGETS = [
    # The fused decode kernel with f32 activations (off by default).
    (r"DecodeFusedKernel<float,", 68),
    # The cp.async wgmma tile's producer runs on 40 registers: <T, GATED, B_ROWS, STAGES, PACKED>
    # (the 128-row instance of the router spills nothing).
    (r"WgmmaWsGemmKernel<[^,]+, true, 256, 4, false>", 4),
    (r"WgmmaWsGemmKernel<[^,]+, false, 256, 4, false>", 16),
    (r"WgmmaWsGemmKernel<[^,]+, false, 256, 4, true>", 76),
    (r"StreamGemmKernel<", 8),
]

PROPERTIES = re.compile(r"Function properties for (\S+)")
SPILLS = re.compile(r"(\d+) bytes spill stores")


def compile_file(nvcc, source_dir, path, out_dir):
    """ptxas -v output of one .cu file (stderr), or raises on a failed compile."""
    cmd = [
        nvcc, "-I" + source_dir, "-I" + os.path.join(source_dir, "include"),
        "-I" + os.path.join(source_dir, "src"), "-O2", "-DNDEBUG",
        "--generate-code=arch=compute_90a,code=[sm_90a]", "--expt-relaxed-constexpr",
        "-std=c++17", "-Xptxas=-v", "-x", "cu", "-c", path, "-o",
        os.path.join(out_dir, os.path.basename(path) + ".o")
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError("%s failed:\n%s" % (" ".join(cmd), result.stderr[-4000:]))
    return result.stdout + result.stderr


def kernel_spills(ptxas_output):
    """{mangled kernel name: spill-store bytes} from ptxas -v output."""
    spills, current = {}, None
    for line in ptxas_output.splitlines():
        m = PROPERTIES.search(line)
        if m:
            current = m.group(1)
            continue
        m = SPILLS.search(line)
        if m and current is not None:
            spills[current] = max(spills.get(current, 0), int(m.group(1)))
            current = None
    return spills


def demangle(names):
    result = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                            check=True)
    return result.stdout.splitlines()


def budget_of(name):
    for pattern, budget in BUDGETS:
        if re.search(pattern, name):
            return budget
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nvcc", required=True)
    parser.add_argument("--source-dir", default=".")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--logs", default=None,
                        help="directory of the build's <file>.cu.o.log compiler reports")
    args = parser.parse_args()
    source_dir = os.path.abspath(args.source_dir)
    kernels_dir = os.path.join(source_dir, "kernels")
    files = sorted(
        os.path.join(kernels_dir, f) for f in os.listdir(kernels_dir) if f.endswith(".cu"))
    if not files:
        print("no kernels/*.cu under %s" % source_dir)
        return 1
    spills = {}
    to_compile = []
    for f in files:
        log = os.path.join(args.logs, os.path.basename(f) + ".o.log") if args.logs else None
        if log and os.path.exists(log):
            with open(log, encoding="utf-8", errors="replace") as report:
                found = kernel_spills(report.read())
            for name, spilled in found.items():
                spills[name] = max(spills.get(name, 0), spilled)
        else:
            to_compile.append(f)
    with tempfile.TemporaryDirectory() as out_dir:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            outputs = pool.map(lambda f: compile_file(args.nvcc, source_dir, f, out_dir),
                               to_compile)
            for output in outputs:
                for name, spilled in kernel_spills(output).items():
                    spills[name] = max(spills.get(name, 0), spilled)
    if not spills:
        print("ptxas reported no kernels: is -Xptxas=-v honoured?")
        return 1
    names = sorted(spills)
    over = []
    for mangled, name in zip(names, demangle(names)):
        budget = budget_of(name)
        if spills[mangled] > budget:
            over.append((name, spills[mangled], budget))
    print("%d kernels of %d files checked (%d from the build's reports, %d compiled for sm_90a)" %
          (len(names), len(files), len(files) - len(to_compile), len(to_compile)))
    for name, spilled, budget in over:
        print("OVER BUDGET: %s spills %d bytes (budget %d)" % (name, spilled, budget))
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
