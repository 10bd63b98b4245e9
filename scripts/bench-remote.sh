#!/usr/bin/env bash
# PBS server vs local datastore, measured in one run on the same tree:
#   push:  `pbsfs push` of a fresh tree into the test server on loopback (HTTPS, backup
#          protocol) vs into a local datastore directory
#   read:  cold sequential read (tar) of that snapshot through `pbsfs mount` served by the
#          test server (reader protocol) vs mounted from the local datastore
#   unchanged re-push (metadata mode) of a small-file tree (SMALL_DIRS, default 100,
#          directories x 1000 tiny files, gen-small-files-tree.py) into the test server vs into
#          the local datastore, each from a cold page cache, best of ROUNDS (default 2) taken
#          in turns; ratio time remote / local, with each push's peak RSS (/usr/bin/time)
# Ratios are throughput remote / local (target >= 0.6). Client and server share the cores.
# The server is examples/pbs_test_server.rs (tests/it/common/pbs_server.rs as a program).
#
# Usage: scripts/bench-remote.sh [SIZE_MIB (default 1024)] [WORKDIR (default target/bench-remote)]
# Deleted at the end unless KEEP=1; REUSE_TREE=1 keeps the trees of an earlier KEEP=1 run.
# BENCH_BIN=PATH measures that pbsfs binary instead of target/release/pbsfs (the test server
# is always this checkout's).
set -euo pipefail

SIZE_MIB=${1:-1024}
WORK=${2:-target/bench-remote}
SMALL_DIRS=${SMALL_DIRS:-100}
ROUNDS=${ROUNDS:-2}
cd "$(dirname "$0")/.."

cargo build --release --quiet --bin pbsfs --example pbs_test_server
BIN=${BENCH_BIN:-$PWD/target/release/pbsfs}
SERVER_BIN=$PWD/target/release/examples/pbs_test_server

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
TREE=$WORK/tree
SMALL_TREE=$WORK/small-tree
LOCAL=$WORK/local
REMOTE=$WORK/remote
SERVER_PID=
cleanup() {
    "$BIN" umount "$WORK/mnt" 2>/dev/null || true
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    if [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; else rm -rf "$LOCAL" "$REMOTE"; fi
}
trap cleanup EXIT
rm -rf "$LOCAL" "$REMOTE"

if [ "${REUSE_TREE:-0}" != 1 ] || [ ! -d "$TREE" ]; then
rm -rf "$TREE"
echo "generating a ${SIZE_MIB} MiB tree in $TREE ..."
python3 scripts/gen-mixed-tree.py "$TREE" "$SIZE_MIB" --seed 7 --dirs 50 --large-files 2
fi
if [ "${REUSE_TREE:-0}" != 1 ] || [ ! -d "$SMALL_TREE" ]; then
rm -rf "$SMALL_TREE"
echo "generating ${SMALL_DIRS} x 1000 small files in $SMALL_TREE ..."
python3 scripts/gen-small-files-tree.py "$SMALL_TREE" --dirs "$SMALL_DIRS"
fi
BYTES=$(du -sb --apparent-size "$TREE" | cut -f1)
MIB=$(awk "BEGIN{printf \"%.1f\", $BYTES/1048576}")
echo "tree: $MIB MiB, $(find "$TREE" -type f | wc -l) files; $(nproc) cores"

# Both datastores are created outside the measurement (65536 chunk directories each).
# A datastore must exist before a push names it (`pbsfs init`); a binary from before `init`
# existed creates it on the first push instead, so a failing init is not an error here.
new_datastore() { "$BIN" init "$1" >/dev/null 2>&1 || true; }
new_datastore "$LOCAL"
new_datastore "$REMOTE"
"$BIN" -r "$LOCAL" push --quiet --backup-id warmup --exclude '*' "$TREE" >/dev/null
"$BIN" -r "$REMOTE" push --quiet --backup-id warmup --exclude '*' "$TREE" >/dev/null

"$SERVER_BIN" "$REMOTE" >"$WORK/server.info" &
SERVER_PID=$!
for _ in $(seq 100); do
    [ "$(wc -l <"$WORK/server.info")" -ge 5 ] && break
    sleep 0.1
done
info() { sed -n "s/^$1=//p" "$WORK/server.info"; }
REPO="$(info auth-id)@127.0.0.1:$(info port):$(info store)"
export PBS_PASSWORD; PBS_PASSWORD=$(info secret)
export PBS_FINGERPRINT; PBS_FINGERPRINT=$(info fingerprint)
unset PBS_REPOSITORY PBS_NAMESPACE

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
# Seconds a command takes (its output discarded).
seconds() {
    local start end
    start=$(date +%s.%N)
    "$@" >/dev/null
    end=$(date +%s.%N)
    echo "$end - $start" | bc -l
}
read_tree() { tar cf - -C "$1" . | cat >/dev/null; }
mount_read() {
    mkdir -p "$WORK/mnt"
    "$BIN" -r "$1" mount host/bench/latest "$WORK/mnt"
    drop_caches
    seconds read_tree "$WORK/mnt"
    "$BIN" umount "$WORK/mnt"
}

drop_caches
T_PUSH_LOCAL=$(seconds "$BIN" -r "$LOCAL" push --quiet --backup-id bench --backup-time 1000 "$TREE")
drop_caches
T_PUSH_REMOTE=$(seconds "$BIN" -r "$REPO" push --quiet --backup-id bench --backup-time 1000 "$TREE")
T_READ_LOCAL=$(mount_read "$LOCAL")
T_READ_REMOTE=$(mount_read "$REPO")

# The small-file tree: a first push into each (not measured), then unchanged re-pushes.
# A push into a group that has a snapshot must start in a later second (snapshot times).
"$BIN" -r "$LOCAL" push --quiet --backup-id small "$SMALL_TREE"
"$BIN" -r "$REPO" push --quiet --backup-id small "$SMALL_TREE"
min() { awk -v a="$1" -v b="$2" 'BEGIN{print (b == "" || a < b) ? a : b}'; }
max() { awk -v a="$1" -v b="$2" 'BEGIN{print (b == "" || a > b) ? a : b}'; }
declare -A BEST PEAK
# repush KEY REPOSITORY: an unchanged re-push from a cold page cache; keeps the best time
# and the highest peak RSS (KiB) under KEY; the push's summary goes to $WORK/KEY.out.
repush() {
    local t rss
    sleep 1
    drop_caches
    /usr/bin/time -f "%e %M" -o "$WORK/time.out" "$BIN" -r "$2" push --backup-id small \
        --change-detection-mode metadata "$SMALL_TREE" >"$WORK/$1.out"
    read -r t rss <"$WORK/time.out"
    BEST[$1]=$(min "$t" "${BEST[$1]:-}")
    PEAK[$1]=$(max "$rss" "${PEAK[$1]:-}")
}
for round in $(seq "$ROUNDS"); do
    if ((round % 2)); then
        repush local "$LOCAL"
        repush remote "$REPO"
    else
        repush remote "$REPO"
        repush local "$LOCAL"
    fi
done

mibs() { echo "scale=1; $BYTES / 1048576 / $1" | bc -l; }
ratio() { echo "scale=2; $1 / $2" | bc -l; }
printf '%-34s %8.2f s %8s MiB/s\n' "push to local datastore" "$T_PUSH_LOCAL" "$(mibs "$T_PUSH_LOCAL")"
printf '%-34s %8.2f s %8s MiB/s\n' "push to test server" "$T_PUSH_REMOTE" "$(mibs "$T_PUSH_REMOTE")"
printf '%-34s %8.2f s %8s MiB/s\n' "cold mount read, local datastore" "$T_READ_LOCAL" "$(mibs "$T_READ_LOCAL")"
printf '%-34s %8.2f s %8s MiB/s\n' "cold mount read, test server" "$T_READ_REMOTE" "$(mibs "$T_READ_REMOTE")"
echo "ratio push server/local: $(ratio "$T_PUSH_LOCAL" "$T_PUSH_REMOTE")"
echo "ratio read server/local: $(ratio "$T_READ_LOCAL" "$T_READ_REMOTE")"
echo
echo "unchanged re-push of $(find "$SMALL_TREE" | wc -l) small-file entries, best of $ROUNDS:"
printf '%-34s %8.2f s %6d MiB peak RSS\n' "into the local datastore" "${BEST[local]}" "$((PEAK[local] / 1024))"
printf '%-34s %8.2f s %6d MiB peak RSS\n' "into the test server" "${BEST[remote]}" "$((PEAK[remote] / 1024))"
grep -E 'files, |not read' "$WORK/remote.out" | sed 's/^/  server: /' || true
echo "ratio unchanged re-push time server/local: $(ratio "${BEST[remote]}" "${BEST[local]}")"
