#!/usr/bin/env bash
# Read throughput of a pbsfs mount, as ratios against baselines measured in the same run:
#   disk  - the same tree extracted to local disk, read with tar (page cache dropped if root)
#   raw   - `pbsfs restore SNAPSHOT ARCHIVE -`: decoding the whole archive stream once
# Usage: scripts/bench-mount.sh [DATASTORE] [SNAPSHOT] [ARCHIVE]
set -euo pipefail
cd "$(dirname "$0")/.."
ds=${1:-../shared/fixtures/datastore}
snap=${2:-host/fixture-legacy/latest}
archive=${3:-root.pxar}
cargo build --release -q
bin=$PWD/target/release/pbsfs
work=$(mktemp -d)
trap '"$bin" umount "$work/mnt" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir "$work/mnt"

drop_caches() { sync; [ "$(id -u)" = 0 ] && echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
seconds() { local start end; start=$(date +%s.%N); "$@" > /dev/null; end=$(date +%s.%N); echo "$end - $start" | bc -l; }
read_tree() { tar cf - -C "$1" . | cat > /dev/null; }

"$bin" -r "$ds" restore "$snap" "$archive" "$work/out" --no-owner 2>/dev/null
bytes=$(du -sb --apparent-size "$work/out" | cut -f1)
drop_caches
t_disk=$(seconds read_tree "$work/out")
t_raw=$(seconds "$bin" -r "$ds" restore "$snap" "$archive" -)
"$bin" -r "$ds" mount "$snap" "$work/mnt" --archive "$archive"
drop_caches
t_cold=$(seconds read_tree "$work/mnt")
t_warm=$(seconds read_tree "$work/mnt")
"$bin" umount "$work/mnt"

mib() { echo "scale=1; $bytes / 1048576 / $1" | bc -l; }
echo "tree: $bytes bytes of $snap/$archive"
printf '%-28s %8.3f s  %8s MiB/s\n' "baseline: disk (tar)" "$t_disk" "$(mib "$t_disk")"
printf '%-28s %8.3f s  %8s MiB/s\n' "baseline: raw restore" "$t_raw" "$(mib "$t_raw")"
printf '%-28s %8.3f s  %8s MiB/s\n' "mount, first read (tar)" "$t_cold" "$(mib "$t_cold")"
printf '%-28s %8.3f s  %8s MiB/s\n' "mount, second read (tar)" "$t_warm" "$(mib "$t_warm")"
echo "ratio mount-first / disk:        $(echo "scale=2; $t_cold / $t_disk" | bc -l)"
echo "ratio mount-first / raw restore: $(echo "scale=2; $t_cold / $t_raw" | bc -l)"
echo "ratio mount-second / disk:       $(echo "scale=2; $t_warm / $t_disk" | bc -l)"
