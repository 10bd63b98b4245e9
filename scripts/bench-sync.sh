#!/usr/bin/env bash
# `pbsfs sync` benchmarks, each next to a baseline measured in the same run, on one snapshot
# of SIZE_MIB (default 1024) of random data (incompressible: chunks are stored as they are):
#   local -> local:  `pbsfs sync` into an empty datastore
#                vs  `cp -r` of the same chunk files (the prefix directories holding them),
#                    alone and followed by `sync` (pbsfs syncs before it writes the manifest)
#   local -> test server (loopback HTTPS, backup protocol): `pbsfs sync` into an empty
#                    datastore vs `pbsfs push` of the same tree into another empty one
# Each figure starts from a dropped page cache (as root; otherwise the cache is warm) and is
# the best of ROUNDS (default 2), the compared commands taken in turns. Ratios are speed
# sync / baseline (the targets are >= 0.8).
#
# Usage: scripts/bench-sync.sh [SIZE_MIB (default 1024)] [WORKDIR (default target/bench-sync)]
# Deleted at the end unless KEEP=1. BENCH_BIN=PATH measures that pbsfs binary instead of
# target/release/pbsfs (the test server is always this checkout's).
set -euo pipefail

SIZE_MIB=${1:-1024}
WORK=${2:-target/bench-sync}
ROUNDS=${ROUNDS:-2}
cd "$(dirname "$0")/.."

cargo build --release --quiet --bin pbsfs --example pbs_test_server
BIN=${BENCH_BIN:-$PWD/target/release/pbsfs}
SERVER_BIN=$PWD/target/release/examples/pbs_test_server

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
SERVER_PIDS=()
cleanup() {
    for pid in "${SERVER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT
unset PBS_REPOSITORY PBS_NAMESPACE PBS_FINGERPRINT PBS_PASSWORD

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
seconds() {
    local start end
    start=$(date +%s.%N)
    "$@" >/dev/null
    end=$(date +%s.%N)
    echo "$end - $start" | bc -l
}
min() { awk -v a="$1" -v b="$2" 'BEGIN{print (b == "" || a < b) ? a : b}'; }
# empty_store PATH: a datastore without snapshots or chunks; its 65536 chunk directories
# are made once, outside the measurements.
empty_store() {
    if [ -d "$1/.chunks" ]; then
        find "$1/.chunks" -mindepth 2 -type f -delete
        find "$1" -mindepth 1 -maxdepth 1 ! -name .chunks ! -name .lock -exec rm -rf {} +
    else
        "$BIN" init "$1" >/dev/null
    fi
}

SRC=$WORK/source
if [ ! -d "$SRC/host/bench" ]; then
    echo "making a ${SIZE_MIB} MiB snapshot of random data in $SRC ..."
    rm -rf "$WORK/tree" "$SRC"
    mkdir -p "$WORK/tree"
    head -c "$((SIZE_MIB << 20))" /dev/urandom >"$WORK/tree/random.bin"
    "$BIN" init "$SRC" >/dev/null
    "$BIN" -r "$SRC" push --quiet --backup-id bench --backup-time 1000 "$WORK/tree"
fi
CHUNK_DIRS=$(cd "$SRC/.chunks" && find . -mindepth 2 -type f -printf '%h\n' | sort -u)
CHUNK_BYTES=$(cd "$SRC/.chunks" && find . -mindepth 2 -type f -printf '%s\n' | awk '{s+=$1} END{print s}')
echo "snapshot: $(echo "$CHUNK_DIRS" | wc -l) chunk directories, $((CHUNK_BYTES >> 20)) MiB of chunk files; $(nproc) cores"

# start_server NAME: an empty datastore served by the test server; sets REPO_<NAME> and
# FP_<NAME> (its certificate's fingerprint).
start_server() {
    local store=$WORK/server-$1 info=$WORK/server-$1.info
    empty_store "$store"
    "$SERVER_BIN" "$store" >"$info" &
    SERVER_PIDS+=($!)
    for _ in $(seq 100); do
        [ "$(wc -l <"$info")" -ge 5 ] && break
        sleep 0.1
    done
    printf -v "REPO_$1" '%s@127.0.0.1:%s:%s' "$(sed -n 's/^auth-id=//p' "$info")" \
        "$(sed -n 's/^port=//p' "$info")" "$(sed -n 's/^store=//p' "$info")"
    printf -v "FP_$1" '%s' "$(sed -n 's/^fingerprint=//p' "$info")"
    # The test server's fixed token secret, the same for both.
    PBS_PASSWORD=$(sed -n 's/^secret=//p' "$info")
    export PBS_PASSWORD
}
start_server push
start_server sync

cp_chunks() {
    mkdir -p "$WORK/cp"
    (cd "$SRC/.chunks" && echo "$CHUNK_DIRS" | xargs cp -r -t "$WORK/cp")
}
cp_chunks_synced() { cp_chunks && sync; }
sync_local() { "$BIN" -r "$SRC" sync --quiet --to "$WORK/dest"; }
sync_server() { "$BIN" -r "$SRC" sync --quiet --to "$REPO_sync" --to-fingerprint "$FP_sync"; }
push_server() {
    "$BIN" -r "$REPO_push" --fingerprint "$FP_push" push --quiet --backup-id bench \
        --backup-time 1000 "$WORK/tree"
}
# Empties the destinations a measurement writes to (the servers' datastores: the group's
# snapshot and the chunks, with the servers running).
reset() {
    rm -rf "$WORK/cp"
    empty_store "$WORK/dest"
    empty_store "$WORK/server-push"
    empty_store "$WORK/server-sync"
}

declare -A BEST
measure() { # KEY COMMAND
    reset
    drop_caches
    local t
    t=$(seconds "$2")
    BEST[$1]=$(min "$t" "${BEST[$1]:-}")
}
for round in $(seq "$ROUNDS"); do
    if ((round % 2)); then
        measure cp cp_chunks; measure cp_sync cp_chunks_synced; measure sync_local sync_local
        measure push push_server; measure sync_server sync_server
    else
        measure sync_server sync_server; measure push push_server
        measure sync_local sync_local; measure cp_sync cp_chunks_synced; measure cp cp_chunks
    fi
done

mibs() { echo "scale=1; $CHUNK_BYTES / 1048576 / $1" | bc -l; }
ratio() { echo "scale=2; $1 / $2" | bc -l; }
row() { printf '%-40s %8.2f s %8s MiB/s\n' "$1" "$2" "$(mibs "$2")"; }
echo "best of $ROUNDS, MiB/s of chunk files:"
row "cp -r of the chunk files" "${BEST[cp]}"
row "cp -r of the chunk files, then sync" "${BEST[cp_sync]}"
row "pbsfs sync local -> local" "${BEST[sync_local]}"
row "pbsfs push to the test server" "${BEST[push]}"
row "pbsfs sync local -> test server" "${BEST[sync_server]}"
echo "ratio sync local / cp -r:          $(ratio "${BEST[cp]}" "${BEST[sync_local]}")"
echo "ratio sync local / (cp -r + sync): $(ratio "${BEST[cp_sync]}" "${BEST[sync_local]}")"
echo "ratio sync to server / push:       $(ratio "${BEST[push]}" "${BEST[sync_server]}")"
