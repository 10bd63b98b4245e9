#!/usr/bin/env bash
# Mount performance on a generated snapshot in a local datastore, each figure with a ratio to a
# baseline measured in the same run (machines here are noisy: compare ratios, not seconds).
#   cold sequential read of a 1 GiB file  vs  the same chunks read, decompressed and verified
#                                             in-process on all cores (no FUSE)
#   warm sequential read (page cache)     vs  reading a tmpfs copy
#   4 KiB random reads per second         (reported; baseline: the same on the tmpfs copy)
#   find -ls over 100k entries            vs  find -ls on the source tree (page cache dropped;
#                                             and with only inodes and dentries dropped; and
#                                             an in-memory tree of the same shape behind the
#                                             same FUSE adapter: the floor), with
#                                             where its time goes: find's own CPU time, the
#                                             mount process's CPU time, and (root, tracefs with
#                                             FUSE events) one more traced round counting the
#                                             FUSE requests by opcode and the time find waited
#                                             for their answers
#   peak RSS of the mount process         vs  --cache-size + 64 MiB
#   time to a ready mount of a legacy     vs  the same for a 1k-entry legacy archive (must
#   (v1 .pxar) archive of 1M entries          not grow with the entry count: opening reads
#                                             only the chunks holding the root's start and
#                                             end, two of up to 16 MiB for 1M empty files
#                                             against one of 13 KiB: some 50 ms apart)
# Each figure is the best of BENCH_ROUNDS (default 5) rounds, mount and baseline alike.
# The legacy archives take minutes to make: they are kept in BENCH_CACHE
# (default /var/tmp/pbsfs-bench-cache) between runs.
# BENCH_ONLY=ready, reads or find measures only that part: the ready mounts; the 1 GiB
# file's reads (and RSS); find -ls over the many files. BENCH_BIN=PATH measures that pbsfs
# binary instead of this tree's build (two builds: compare them in alternating runs).
# Usage: scripts/bench-mount.sh [SIZE_MIB=1024] [ENTRIES=100000]   (root: drops page caches)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
entries=${2:-100000}
rounds=${BENCH_ROUNDS:-5}
cache=256M
cargo build --release -q --bin pbsfs --example bench_chunk_read
cargo build --release -q -p pbsfs-mount --example tree_floor
bin=${BENCH_BIN:-$PWD/target/release/pbsfs}
only=${BENCH_ONLY:-}
# A datastore must exist before a push names it (`pbsfs init`); a binary from before `init`
# existed creates it on the first push instead, so a failing init is not an error here.
new_datastore() { "$bin" init "$1" >/dev/null 2>&1 || true; }
case "$only" in
    "" | ready | reads | find) ;;
    *) echo "BENCH_ONLY must be ready, reads or find" >&2; exit 2 ;;
esac
part() { [ -z "$only" ] || [ "$only" = "$1" ]; } # whether part $1 is measured
base=$PWD/target/release/examples/bench_chunk_read
floor=$PWD/target/release/examples/tree_floor
work=$(mktemp -d -p "${BENCH_DIR:-/var/tmp}")
cleanup() {
    "$bin" umount "$work/big-mnt" 2>/dev/null || true
    "$bin" umount "$work/many-mnt" 2>/dev/null || true
    "$bin" umount "$work/ready-mnt" 2>/dev/null || true
    umount "$work/floor-mnt" 2>/dev/null || true
    rm -rf "$work" /dev/shm/pbsfs-bench-copy
}
trap cleanup EXIT
mkdir -p "$work/big" "$work/many" "$work/big-mnt" "$work/many-mnt"
ds=$work/ds

drop_caches() { sync; [ "$(id -u)" = 0 ] && echo 3 > /proc/sys/vm/drop_caches || true; }
drop_inodes() { sync; [ "$(id -u)" = 0 ] && echo 2 > /proc/sys/vm/drop_caches || true; }
now() { date +%s.%N; }
ratio() { echo "scale=2; $1 / $2" | bc -l; }
best() { printf '%s\n' "$@" | sort -g | head -1; }
rounds_of() { printf '%.3f ' "$@"; }

# make_files ROOT COUNT DIGITS SIZES: COUNT files, 1000 to a directory, named f + DIGITS digits;
# file i holds i % SIZES bytes (SIZES 0: all empty).
make_files() {
    python3 - "$@" <<'PY'
import os, sys
root, count, digits, sizes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
per_dir = 1000
for i in range(count):
    d = os.path.join(root, "d%04d" % (i // per_dir))
    if i % per_dir == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%0*d" % (digits, i)), "w") as f:
        f.write("x" * (i % sizes if sizes else 0))
PY
}

# Time to a ready mount (`pbsfs mount` returns once the mount answers) of a legacy archive
# of 1M empty files in 1000 directories, against one of 1k: opening must not walk the tree.
ready_cache=${BENCH_CACHE:-/var/tmp/pbsfs-bench-cache}/legacy-ds
legacy_snapshot() { # ENTRIES: makes host/legacy-ENTRIES in the cached datastore once
    local n=$1 src=$work/legacy-src
    [ -d "$ready_cache/host/legacy-$n" ] && return
    echo "generating: a legacy archive of $n empty files (kept in $ready_cache)"
    rm -rf "$src"
    make_files "$src" "$n" 7 0
    mkdir -p "$(dirname "$ready_cache")"
    new_datastore "$ready_cache"
    "$bin" -r "$ready_cache" push "root.pxar:$src" --backup-id "legacy-$n" \
        --change-detection-mode legacy --quiet
    rm -rf "$src"
}
if part ready; then
    legacy_snapshot 1000
    legacy_snapshot 1000000
    mkdir -p "$work/ready-mnt"
    ready_small=() ready_large=()
    timed_mount() { # ENTRIES: seconds until `pbsfs mount` of host/legacy-ENTRIES returned
        local start t
        drop_caches
        start=$(now)
        "$bin" -r "$ready_cache" mount "host/legacy-$1/latest" "$work/ready-mnt"
        t=$(echo "$(now) - $start" | bc -l)
        ls "$work/ready-mnt" > /dev/null # it answers
        "$bin" umount "$work/ready-mnt"
        echo "$t"
    }
    for _ in $(seq "$rounds"); do
        ready_small+=("$(timed_mount 1000)")
        ready_large+=("$(timed_mount 1000000)")
    done
    t_ready_small=$(best "${ready_small[@]}")
    t_ready_large=$(best "${ready_large[@]}")
fi
report_ready() {
    echo "  ready mount, 1k     $(rounds_of "${ready_small[@]}")"
    echo "  ready mount, 1M     $(rounds_of "${ready_large[@]}")"
    printf '%-44s %9.3f s\n' "baseline: ready mount, legacy 1k entries" "$t_ready_small"
    printf '%-44s %9.3f s      ratio %s (no growth: only the root chunks are read)\n' "mount: ready mount, legacy 1M entries" \
        "$t_ready_large" "$(ratio "$t_ready_large" "$t_ready_small")"
}

if part reads; then
    echo "generating: a ${size_mib} MiB file (half random, half text)"
    head -c $((size_mib / 2))M /dev/urandom > "$work/big/file.bin"
    # (yes ends with SIGPIPE when head has enough: not an error)
    { yes "pbsfs benchmark line of fairly compressible text" || true; } | head -c $((size_mib / 2))M >> "$work/big/file.bin"
    new_datastore "$ds"
    "$bin" -r "$ds" push "big.pxar:$work/big" --backup-id big --change-detection-mode data --quiet
    bytes=$(stat -c %s "$work/big/file.bin")
fi
mib() { echo "scale=1; $bytes / 1048576 / $1" | bc -l; }
if part find; then
    echo "generating: $entries small files"
    make_files "$work/many" "$entries" 6 200
    new_datastore "$ds"
    "$bin" -r "$ds" push "many.pxar:$work/many" --backup-id many --change-detection-mode data --quiet
fi

# Each figure is the best of $rounds rounds, for the mount and its baseline alike, the two
# measured one after the other in every round: on these VMs a single run is at the mercy of
# the host (free memory handed back to the host costs up to 1 s/GiB to touch again), and
# noise only ever adds time. Every round is printed too.
if part reads; then
    mount_big() {
        "$bin" -r "$ds" mount host/big/latest "$work/big-mnt" --cache-size $cache
        pid=$(pgrep -n -f "mount host/big/latest $work/big-mnt")
    }
    timed_cat() {
        local start
        start=$(now); cat "$1" > /dev/null; echo "$(now) - $start" | bc -l
    }
    rss_big=0
    track_rss() {
        local rss
        rss=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
        if [ "$rss" -gt "$rss_big" ]; then rss_big=$rss; fi
    }

    # Cold sequential read. Baseline: every chunk of the payload index, decoded and verified
    # in-process on all cores. Mount: a fresh mount (empty chunk cache), page cache dropped.
    cold_base=() cold_mount=()
    for round in $(seq "$rounds"); do
        drop_caches
        read -r _ t < <("$base" "$ds" host/big/latest big.ppxar.didx)
        cold_base+=("$t")
        mount_big
        drop_caches
        cold_mount+=("$(timed_cat "$work/big-mnt/file.bin")")
        track_rss
        if [ "$round" -lt "$rounds" ]; then "$bin" umount "$work/big-mnt"; fi
    done
    t_base=$(best "${cold_base[@]}")
    t_cold=$(best "${cold_mount[@]}")

    # Warm sequential read, from the page cache; baseline: a tmpfs copy. Alternating reads,
    # best of five each (the first re-read of a file is slower for both: the kernel promotes
    # every page it touches a second time).
    cp "$work/big/file.bin" /dev/shm/pbsfs-bench-copy
    warm_mount=() warm_tmpfs=()
    for _ in 1 2 3 4 5; do
        warm_mount+=("$(timed_cat "$work/big-mnt/file.bin")")
        warm_tmpfs+=("$(timed_cat /dev/shm/pbsfs-bench-copy)")
    done
    t_warm=$(best "${warm_mount[@]}")
    t_tmpfs=$(best "${warm_tmpfs[@]}")

    # 4 KiB random reads for 5 seconds each, after dropping the page cache.
    random_reads() {
        python3 - "$1" <<'PY'
import os, random, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
rng = random.Random(1)
count, end = 0, time.time() + 5
while time.time() < end:
    os.pread(fd, 4096, rng.randrange(0, size - 4096) & ~4095)
    count += 1
print(count / 5)
PY
    }
    drop_caches
    rr_mount=$(random_reads "$work/big-mnt/file.bin")
    rr_tmpfs=$(random_reads /dev/shm/pbsfs-bench-copy)
    track_rss
    "$bin" umount "$work/big-mnt"
fi

# find -ls over the many-files snapshot: first run on a fresh mount after dropping the page
# cache (kernel inodes and chunk files cold), then a second run on the same mount (kernel
# caches warm), against the first run on the source tree.
# timed_find DIR: "wall user sys" seconds of `find DIR -ls`.
timed_find() {
    local TIMEFORMAT='%R %U %S'
    { time find "$1" -ls > /dev/null 2>&1; } 2>&1
}
cpu_seconds() { # PID: CPU time (user + system, all threads) the process has used so far
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f\n", ($14 + $15) / hz }' "/proc/$1/stat"
}
# The FUSE tracepoints (kernel 6.14+) time each request from the kernel's send to the
# daemon's answer: what find waited for, apart from its own work.
tracing=
for t in /sys/kernel/tracing /sys/kernel/debug/tracing; do
    if [ -w "$t/events/fuse/fuse_request_send/enable" ]; then tracing=$t; break; fi
done
traced_find() { # DIR: find -ls with the FUSE requests traced; prints them by opcode
    local old_kb connection
    # The trace names a mount by its device number as the kernel encodes it (major << 20 |
    # minor); other FUSE mounts on the machine are left out.
    connection=$(awk -v dir="$1" '$5 == dir { split($3, d, ":"); print d[1] * 1048576 + d[2] }' \
        /proc/self/mountinfo)
    old_kb=$(cat "$tracing/buffer_size_kb")
    echo 16384 > "$tracing/buffer_size_kb"
    echo > "$tracing/trace"
    echo 1 > "$tracing/events/fuse/fuse_request_send/enable"
    echo 1 > "$tracing/events/fuse/fuse_request_end/enable"
    read -r t_traced _ < <(timed_find "$1")
    echo 0 > "$tracing/events/fuse/fuse_request_send/enable"
    echo 0 > "$tracing/events/fuse/fuse_request_end/enable"
    python3 - "$tracing/trace" "$t_traced" "$connection" <<'PY'
import re, sys
sent, waits = {}, {}
pattern = re.compile(r" (\d+\.\d+): fuse_request_(send|end): connection (\d+) req (\d+)"
                     r"(?: opcode \d+ \((\w+)\))?")
for line in open(sys.argv[1]):
    m = pattern.search(line)
    if not m:
        continue
    if m[3] != sys.argv[3]:
        continue
    t, kind, key = float(m[1]), m[2], (m[3], m[4])
    if kind == "send":
        sent[key] = (t, m[5])
    elif key in sent:
        start, op = sent.pop(key)
        waits.setdefault(op, []).append(t - start)
total = sum(sum(w) for w in waits.values())
print("  traced round: find -ls %.3f s, of which waiting for FUSE answers %.3f s" % (float(sys.argv[2]), total))
for op, w in sorted(waits.items(), key=lambda kv: -sum(kv[1])):
    w.sort()
    print("    %-18s %7d requests  %.3f s waited  (median %.2f ms, max %.2f ms)"
          % (op.removeprefix("FUSE_"), len(w), sum(w), 1000 * w[len(w) // 2], 1000 * w[-1]))
PY
    echo > "$tracing/trace"
    echo "$old_kb" > "$tracing/buffer_size_kb"
}

if part find; then
    find_first=() find_cpu=() mount_cpu=() find_second=() find_disk=() find_inodes=() rss_many=0
    find_floor=()
    mkdir -p "$work/floor-mnt"
    for _ in $(seq "$rounds"); do
        drop_caches
        "$bin" -r "$ds" mount host/many/latest "$work/many-mnt" --cache-size $cache
        pid=$(pgrep -n -f "mount host/many/latest $work/many-mnt")
        cpu_before=$(cpu_seconds "$pid")
        read -r t user sys < <(timed_find "$work/many-mnt")
        find_first+=("$t")
        find_cpu+=("$(echo "$user + $sys" | bc -l)")
        mount_cpu+=("$(echo "$(cpu_seconds "$pid") - $cpu_before" | bc -l)")
        start=$(now); find "$work/many-mnt" -ls > /dev/null
        find_second+=("$(echo "$(now) - $start" | bc -l)")
        n=$(find "$work/many-mnt" | wc -l) # counted apart: a pipe would add its own cost
        rss=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
        if [ "$rss" -gt "$rss_many" ]; then rss_many=$rss; fi
        "$bin" umount "$work/many-mnt"
        drop_caches
        start=$(now); find "$work/many" -ls > /dev/null
        find_disk+=("$(echo "$(now) - $start" | bc -l)")
        # The same tree with its blocks in the page cache but no inodes or dentries in memory:
        # what the kernel alone takes to instantiate 100k inodes on a local file system, which
        # a FUSE mount's first find also pays (in find's own context, from readdirplus).
        drop_inodes
        start=$(now); find "$work/many" -ls > /dev/null
        find_inodes+=("$(echo "$(now) - $start" | bc -l)")
        # The floor: the same shape of tree in memory, answered at once by the same adapter.
        drop_caches
        "$floor" "$work/floor-mnt" "$entries" &
        floor_pid=$!
        until grep -q " $work/floor-mnt " /proc/mounts; do
            kill -0 "$floor_pid" 2>/dev/null || { echo "tree_floor did not mount" >&2; exit 1; }
            sleep 0.05
        done
        start=$(now); find "$work/floor-mnt" -ls > /dev/null
        find_floor+=("$(echo "$(now) - $start" | bc -l)")
        umount "$work/floor-mnt" 2>/dev/null || fusermount3 -u "$work/floor-mnt"
        wait "$floor_pid"
    done
    t_find=$(best "${find_first[@]}")
    t_find2=$(best "${find_second[@]}")
    t_find_disk=$(best "${find_disk[@]}")
    t_find_inodes=$(best "${find_inodes[@]}")
    t_find_floor=$(best "${find_floor[@]}")
    find_trace="  (no FUSE trace: needs root and tracefs with the fuse events)"
    if [ -n "$tracing" ] && [ "$(id -u)" = 0 ]; then
        drop_caches
        "$bin" -r "$ds" mount host/many/latest "$work/many-mnt" --cache-size $cache
        find_trace=$(traced_find "$work/many-mnt")
        "$bin" umount "$work/many-mnt"
    fi
fi

echo "rounds (seconds):"
if part reads; then
    echo "  cold, baseline      $(rounds_of "${cold_base[@]}")"
    echo "  cold, mount         $(rounds_of "${cold_mount[@]}")"
    echo "  warm, tmpfs         $(rounds_of "${warm_tmpfs[@]}")"
    echo "  warm, mount         $(rounds_of "${warm_mount[@]}")"
fi
if part find; then
    echo "  find -ls, mount     $(rounds_of "${find_first[@]}")"
    echo "    find's CPU        $(rounds_of "${find_cpu[@]}")"
    echo "    mount's CPU       $(rounds_of "${mount_cpu[@]}")"
    echo "  find -ls, source    $(rounds_of "${find_disk[@]}")  (inodes cold: $(rounds_of "${find_inodes[@]}"))"
    echo "  find -ls, in-memory $(rounds_of "${find_floor[@]}")"
fi
if part reads || part find; then echo "best of each:"; fi
if part reads; then
    printf '%-44s %9s MiB/s\n' "baseline: in-process chunk read, all cores" "$(mib "$t_base")"
    printf '%-44s %9s MiB/s   ratio %s (target >= 0.7)\n' "mount: cold sequential read" "$(mib "$t_cold")" "$(ratio "$t_base" "$t_cold")"
    printf '%-44s %9s MiB/s\n' "baseline: tmpfs copy read" "$(mib "$t_tmpfs")"
    printf '%-44s %9s MiB/s   ratio %s (target >= 1.0)\n' "mount: warm sequential read" "$(mib "$t_warm")" "$(ratio "$t_tmpfs" "$t_warm")"
    printf '%-44s %9.0f /s\n' "baseline: 4 KiB random reads, tmpfs" "$rr_tmpfs"
    printf '%-44s %9.0f /s     ratio %s\n' "mount: 4 KiB random reads (cold page cache)" "$rr_mount" "$(echo "scale=5; $rr_mount / $rr_tmpfs" | bc -l)"
    printf '%-44s %9s KiB  (limit: cache %s + 64 MiB = %s KiB)\n' "peak RSS, 1 GiB file mount" "$rss_big" "$cache" $(( (256 + 64) * 1024 ))
fi
if part find; then
    printf '%-44s %9.3f s      (%s entries)\n' "mount: find -ls, first" "$t_find" "$n"
    printf '%-44s %9.3f s\n' "mount: find -ls, second (kernel caches)" "$t_find2"
    printf '%-44s %9.3f s\n' "baseline: find -ls on the source tree, cold" "$t_find_disk"
    printf '%-44s %9.3f s\n' "baseline: same, blocks cached, inodes cold" "$t_find_inodes"
    printf '%-44s %9.3f s      ratio %s (the floor: 1.0)\n' "baseline: in-memory tree, same FUSE adapter" \
        "$t_find_floor" "$(ratio "$t_find" "$t_find_floor")"
    printf '%-44s %9s KiB\n' "peak RSS, $entries-entry mount" "$rss_many"
    echo "where the first find -ls goes (wall = find's CPU + waits for the mount + time off the CPU):"
    echo "$find_trace"
fi
if part ready; then report_ready; fi
