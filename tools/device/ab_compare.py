#!/usr/bin/env python3
"""Compares cuda_engine_bench A/B runs: DIR/<variant>_<round>.jsonl, one JSON line per point.

  ab_compare.py DIR [VARIANT...] [--field=mean_us]

Prints, per (shape, tokens), each variant's values round by round and its best against the first
variant's best. Without VARIANTs: every variant found, in name order.
"""
import collections
import glob
import json
import os
import re
import sys


def main(argv):
  field = "mean_us"
  args = []
  for a in argv[1:]:
    if a.startswith("--field="):
      field = a.split("=", 1)[1]
    else:
      args.append(a)
  if not args:
    print(__doc__.strip())
    return 2
  folder, variants = args[0], args[1:]
  runs = collections.defaultdict(lambda: collections.defaultdict(list))
  found = set()
  for path in sorted(glob.glob(os.path.join(folder, "*_*.jsonl"))):
    m = re.match(r"(.+)_(\d+)\.jsonl$", os.path.basename(path))
    if not m:
      continue
    variant, rnd = m.group(1), int(m.group(2))
    found.add(variant)
    with open(path) as f:
      for line in f:
        line = line.strip()
        if line:
          row = json.loads(line)
          if field in row:
            runs[(row["shape"], row["tokens"])][variant].append((rnd, row[field]))
  variants = variants or sorted(found)
  for key in sorted(runs):
    by_variant = runs[key]
    if variants[0] not in by_variant:
      continue
    base = min(v for _, v in by_variant[variants[0]])
    cells = []
    for variant in variants:
      values = [v for _, v in sorted(by_variant.get(variant, []))]
      if values:
        cells.append(f"{variant}: " + " / ".join(f"{v:.1f}" for v in values) +
                     f" ({(min(values) / base - 1) * 100:+.1f}%)")
    print(f"{key[0]:>10} {key[1]:>6} | " + " | ".join(cells))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
