#!/usr/bin/env python3
"""A deterministic small-file tree for the incremental benchmarks: DIRS directories of
FILES_PER_DIR tiny files (0-200 bytes, random) and optionally one large random file.

Usage: gen-small-files-tree.py DEST --dirs N [--files-per-dir N] [--large-mib N] [--seed N]
       gen-small-files-tree.py DEST --change PERCENT [--seed N]
The second form rewrites PERCENT % of the small files of an existing tree (same size, new
content, new mtime) so that a re-push has something to find.
"""
import argparse
import os
import random

parser = argparse.ArgumentParser()
parser.add_argument("dest")
parser.add_argument("--dirs", type=int, default=100)
parser.add_argument("--files-per-dir", type=int, default=1000)
parser.add_argument("--large-mib", type=int, default=0)
parser.add_argument("--seed", type=int, default=7)
parser.add_argument("--change", type=float, default=None, metavar="PERCENT")
args = parser.parse_args()
rng = random.Random(args.seed)

if args.change is not None:
    files = sorted(
        os.path.join(d, name)
        for d, _, names in os.walk(args.dest)
        for name in names
        if not name.startswith("large")
    )
    chosen = rng.sample(files, max(1, int(len(files) * args.change / 100)))
    for path in chosen:
        size = os.path.getsize(path)
        with open(path, "wb") as f:
            f.write(rng.randbytes(size))
    print(f"changed {len(chosen)} of {len(files)} files")
    raise SystemExit(0)

os.makedirs(args.dest)
for d in range(args.dirs):
    sub = os.path.join(args.dest, f"d{d:04d}")
    os.mkdir(sub)
    for i in range(args.files_per_dir):
        with open(os.path.join(sub, f"f{i:05d}"), "wb") as f:
            f.write(rng.randbytes(rng.randint(0, 200)))
if args.large_mib:
    with open(os.path.join(args.dest, "large"), "wb") as f:
        for _ in range(args.large_mib):
            f.write(rng.randbytes(1 << 20))
