#!/usr/bin/env python3
"""A deterministic mixed tree for the benchmarks: 10 % small files (1-64 KiB, half random,
half log text) spread over directories, 45 % large random files, 45 % large compressible text.

Usage: gen-mixed-tree.py DEST SIZE_MIB [--seed N] [--dirs N] [--large-files N]
"""
import argparse
import os
import random

parser = argparse.ArgumentParser()
parser.add_argument("dest")
parser.add_argument("size_mib", type=int)
parser.add_argument("--seed", type=int, default=42)
parser.add_argument("--dirs", type=int, default=100)
parser.add_argument("--large-files", type=int, default=4, help="per kind (random, text)")
args = parser.parse_args()

root, total = args.dest, args.size_mib << 20
rng = random.Random(args.seed)
os.makedirs(root)
small_budget, written, i = total // 10, 0, 0
while written < small_budget:
    d = os.path.join(root, "small", f"{i % args.dirs:02d}")
    os.makedirs(d, exist_ok=True)
    n = rng.randint(1024, 65536)
    with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
        f.write(rng.randbytes(n) if i % 2 else (b"log line %d\n" % i) * (n // 12))
    written += n
    i += 1
words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
         for _ in range(5000)]
for kind in ("random", "text"):
    budget = total * 45 // 100
    for j in range(args.large_files):
        with open(os.path.join(root, f"{kind}-{j}"), "wb") as f:
            left = budget // args.large_files
            while left > 0:
                if kind == "random":
                    block = rng.randbytes(min(left, 8 << 20))
                else:
                    block = b" ".join(rng.choice(words) for _ in range(200000))[: min(left, 8 << 20)]
                f.write(block)
                left -= len(block)
