#!/usr/bin/env bash
# Push throughput against baselines measured in the same run on the same bytes:
#   tar -cf - TREE | zstd -1 -T0 >/dev/null      (read + compress on all cores)
#   find TREE -type f | xargs cat | sha256sum   (read + hash)
# Generates a mixed tree (many small files, large random, large compressible), pushes it
# into a fresh datastore (creation not timed), then pushes it again (metadata mode, nothing
# changed). Prints times, MiB/s, peak RSS and ratios.
#
# Usage: scripts/bench-push.sh [SIZE_MIB (default 2048)] [WORKDIR (default target/bench-push)]
# The work directory must not be on tmpfs if xattrs matter; it is deleted at the end unless
# KEEP=1.
set -euo pipefail

SIZE_MIB=${1:-2048}
WORK=${2:-target/bench-push}
cd "$(dirname "$0")/.."

cargo build --release --quiet
BIN=$PWD/target/release/pbsfs

rm -rf "$WORK"
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
TREE=$WORK/tree
DS=$WORK/ds

echo "generating a ${SIZE_MIB} MiB tree in $TREE ..."
python3 - "$TREE" "$SIZE_MIB" <<'EOF'
import os, random, sys
root, total = sys.argv[1], int(sys.argv[2]) << 20
rng = random.Random(42)
os.makedirs(root)
# 10 % small files (1-64 KiB) in 100 directories, 45 % large random, 45 % compressible text.
small_budget, written, i = total // 10, 0, 0
while written < small_budget:
    d = os.path.join(root, "small", f"{i % 100:02d}")
    os.makedirs(d, exist_ok=True)
    n = rng.randint(1024, 65536)
    with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
        f.write(rng.randbytes(n) if i % 2 else (b"log line %d\n" % i) * (n // 12))
    written += n; i += 1
words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
for kind in ("random", "text"):
    budget = total * 45 // 100
    for j in range(4):
        with open(os.path.join(root, f"{kind}-{j}"), "wb") as f:
            left = budget // 4
            while left > 0:
                if kind == "random":
                    block = rng.randbytes(min(left, 8 << 20))
                else:
                    block = b" ".join(rng.choice(words) for _ in range(200000))[: min(left, 8 << 20)]
                f.write(block); left -= len(block)
EOF
BYTES=$(du -sb "$TREE" | cut -f1)
MIB=$(awk "BEGIN{print $BYTES/1048576}")
echo "tree: $MIB MiB, $(find "$TREE" -type f | wc -l) files; $(nproc) cores"

# The datastore is created once, outside the measurement.
"$BIN" -r "$DS" push --quiet --backup-id warmup --exclude '*' "$TREE" >/dev/null

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }

# seconds, peak RSS KiB
measure() {
    local out
    out=$( { /usr/bin/time -f "%e %M" bash -c "$1" >/dev/null 2>/dev/null; } 2>&1 | tail -1)
    echo "$out"
}

drop_caches
read -r T_TAR RSS_TAR < <(measure "tar -cf - -C '$TREE' . | zstd -1 -T0 >/dev/null")
drop_caches
read -r T_SHA RSS_SHA < <(measure "cd '$TREE' && find . -type f -print0 | sort -z | xargs -0 cat | sha256sum")
drop_caches
read -r T_PUSH RSS_PUSH < <(measure "'$BIN' -r '$DS' push --quiet --backup-id bench --backup-time 1000 --change-detection-mode data '$TREE'")
drop_caches
read -r T_LEGACY RSS_LEGACY < <(measure "'$BIN' -r '$DS' push --quiet --backup-id bench-legacy --backup-time 1000 --change-detection-mode legacy '$TREE'")
drop_caches
read -r T_META RSS_META < <(measure "'$BIN' -r '$DS' push --quiet --backup-id bench --backup-time 2000 --change-detection-mode metadata '$TREE'")

rate() { awk "BEGIN{printf \"%.1f\", $MIB/($1>0?$1:0.001)}"; }
ratio() { awk "BEGIN{printf \"%.2f\", ($2>0?$2:0.001)/($1>0?$1:0.001)}"; }

printf '%-44s %8s %10s %10s\n' "run" "seconds" "MiB/s" "peak RSS"
printf '%-44s %8s %10s %7s MiB\n' "tar -cf - | zstd -1 -T0" "$T_TAR" "$(rate "$T_TAR")" "$((RSS_TAR / 1024))"
printf '%-44s %8s %10s %7s MiB\n' "cat | sha256sum" "$T_SHA" "$(rate "$T_SHA")" "$((RSS_SHA / 1024))"
printf '%-44s %8s %10s %7s MiB\n' "pbsfs push (data mode, new datastore)" "$T_PUSH" "$(rate "$T_PUSH")" "$((RSS_PUSH / 1024))"
printf '%-44s %8s %10s %7s MiB\n' "pbsfs push (legacy, all chunks known)" "$T_LEGACY" "$(rate "$T_LEGACY")" "$((RSS_LEGACY / 1024))"
printf '%-44s %8s %10s %7s MiB\n' "pbsfs push (metadata, unchanged tree)" "$T_META" "$(rate "$T_META")" "$((RSS_META / 1024))"
echo "push throughput / tar|zstd throughput: $(ratio "$T_PUSH" "$T_TAR")"
echo "push throughput / sha256sum throughput: $(ratio "$T_PUSH" "$T_SHA")"

"$BIN" -r "$DS" verify >/dev/null && echo "datastore verified"
if [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; fi
