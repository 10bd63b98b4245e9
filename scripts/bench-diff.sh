#!/usr/bin/env bash
# `pbsfs diff` of two split (metadata-mode) snapshots of a 100k-entry tree, against listing
# the snapshots, all measured in the same run:
#   diff A B                                   (the figure)
#   find A '*' + find B '*'                    (two listings from the metadata streams)
#   find A none + find B none                  (the same walks, printing nothing)
#   find MOUNT -ls of A, twice                 (two listings through a mount of A)
# The tree is DIRS directories x 1000 tiny files (gen-small-files-tree.py); B is A after 1 %
# of the files changed. The target: diff well under two listings.
# Every figure is the best of ROUNDS (default 3) runs, page cache warm (the datastore is
# read by every command alike).
#
# Usage: scripts/bench-diff.sh [DIRS (default 100)] [WORKDIR (default target/bench-diff)]
# BENCH_BIN=PATH measures that binary instead of target/release/pbsfs; KEEP=1 keeps WORKDIR.
set -euo pipefail

DIRS=${1:-100}
WORK=${2:-target/bench-diff}
ROUNDS=${ROUNDS:-3}
cd "$(dirname "$0")/.."
if [ -n "${BENCH_BIN:-}" ]; then
    BIN=$BENCH_BIN
else
    cargo build --release --quiet --bin pbsfs
    BIN=$PWD/target/release/pbsfs
fi
rm -rf "$WORK"
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
cleanup() {
    "$BIN" umount "$WORK/mnt" 2>/dev/null || true
    if [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

DS=$WORK/datastore
pbsfs() { "$BIN" --repository "$DS" "$@"; }
python3 scripts/gen-small-files-tree.py "$WORK/tree" --dirs "$DIRS" >/dev/null
pbsfs init "$DS" >/dev/null
push() { pbsfs -q push "root.pxar:$WORK/tree" --backup-id diff-bench --change-detection-mode metadata >/dev/null; }
push
sleep 1
python3 scripts/gen-small-files-tree.py "$WORK/tree" --change 1 >/dev/null
sleep 1
push
mapfile -t SNAPS < <(pbsfs --output-format json snapshots | python3 -c '
import json, sys
for s in json.load(sys.stdin):
    print(s["snapshot"])')
A=${SNAPS[0]}
B=${SNAPS[1]}
entries=$(pbsfs find "$A" '*' 2>/dev/null | tail -n +2 | wc -l)
changes=$(pbsfs diff "$A" "$B" 2>/dev/null | wc -l)
echo "snapshots $A and $B: $entries entries each, $changes changes"

now() { date +%s.%N; }
best() { printf '%s\n' "$@" | sort -g | head -1; }
time_of() { local t0; t0=$(now); "$@" >/dev/null 2>&1; echo "$(now) - $t0" | bc; }
mount_list_twice() {
    local t0 t
    t=0
    for _ in 1 2; do
        mkdir -p "$WORK/mnt"
        t0=$(now)
        pbsfs mount "$A" "$WORK/mnt"
        find "$WORK/mnt" -ls >/dev/null
        t=$(echo "$t + $(now) - $t0" | bc)
        "$BIN" umount "$WORK/mnt"
    done
    echo "$t"
}
diffs=() finds=() walks=() mounts=()
for _ in $(seq "$ROUNDS"); do
    diffs+=("$(time_of pbsfs diff "$A" "$B")")
    finds+=("$(echo "$(time_of pbsfs find "$A" '*') + $(time_of pbsfs find "$B" '*')" | bc)")
    walks+=("$(echo "$(time_of pbsfs find "$A" none) + $(time_of pbsfs find "$B" none)" | bc)")
    mounts+=("$(mount_list_twice)")
done
d=$(best "${diffs[@]}")
f=$(best "${finds[@]}")
w=$(best "${walks[@]}")
m=$(best "${mounts[@]}")
printf '%-40s %8.3f s\n' "diff A B" "$d"
printf '%-40s %8.3f s   ratio diff/this %.2f\n' "find A '*' + find B '*'" "$f" "$(echo "$d / $f" | bc -l)"
printf '%-40s %8.3f s   ratio diff/this %.2f\n' "find A none + find B none" "$w" "$(echo "$d / $w" | bc -l)"
printf '%-40s %8.3f s   ratio diff/this %.2f\n' "mount A + find -ls, twice" "$m" "$(echo "$d / $m" | bc -l)"
