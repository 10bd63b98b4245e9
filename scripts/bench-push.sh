#!/usr/bin/env bash
# Push benchmarks in two parts, each figure next to a baseline measured in the same run.
#
# incremental (issue 16), every run from a cold page cache:
#   tree A: one 1 GiB random file + 100 directories x 1000 tiny files (gen-small-files-tree.py)
#     first push (fresh datastore)        vs  `restic backup` into a fresh repository
#     unchanged re-push (metadata mode)   vs  restic's unchanged re-backup, and `find -ls`
#     re-push after 1 % of the small files changed  vs  restic's backup of the same change
#   small-file trees of each size in SIZES (hundreds of directories x 1000 tiny files):
#     data-mode first push vs legacy first push (fresh datastores), unchanged re-push;
#     the per-entry cost of the largest size against the smallest (linear growth)
# throughput (on a mixed tree of SIZE_MIB, gen-mixed-tree.py):
#   tar -cf - TREE | zstd -1 -T0 >/dev/null      (read + compress on all cores)
#   find TREE -type f | xargs cat | sha256sum   (read + hash)
#   data-mode push into a fresh datastore, legacy push (chunks known), metadata re-push
#
# Every figure is the best of ROUNDS (default 2) runs, taken in turns (and with the order of
# the compared tools swapped every round) so that a slow phase of this noisy machine hits all
# of them alike. Peak RSS (/usr/bin/time) is the highest of the rounds. A final block lists
# the targets of issue 16 with their ratios, met or not met.
#
# Usage: scripts/bench-push.sh [SIZE_MIB (default 2048)] [WORKDIR (default target/bench-push)]
# Runs as root (it drops the page cache); installs restic (Debian package) when missing.
# BENCH_ONLY=throughput or incremental runs one part (both by default).
# SIZES="100 400" (directories of 1000 files), LARGE_MIB=1024 (tree A's large file).
# BENCH_BIN=PATH measures that pbsfs binary instead of target/release/pbsfs.
# The work directory must not be on tmpfs if xattrs matter. It is deleted at the end unless
# KEEP=1 (then the generated trees and two empty datastores stay); REUSE_TREE=1 uses the trees of
# an earlier KEEP=1 run (the 400k-file tree takes minutes to make).
set -euo pipefail

SIZE_MIB=${1:-2048}
WORK=${2:-target/bench-push}
ROUNDS=${ROUNDS:-2}
SIZES=${SIZES:-"100 400"}
LARGE_MIB=${LARGE_MIB:-1024}
BENCH_ONLY=${BENCH_ONLY:-}
case "$BENCH_ONLY" in
    "" | throughput | incremental) ;;
    *) echo "BENCH_ONLY must be throughput or incremental" >&2; exit 2 ;;
esac
part() { [ -z "$BENCH_ONLY" ] || [ "$BENCH_ONLY" = "$1" ]; } # whether part $1 is measured
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "bench-push.sh runs as root: every figure starts from a dropped page cache" >&2
    exit 1
fi
if [ -n "${BENCH_BIN:-}" ]; then
    BIN=$BENCH_BIN
else
    cargo build --release --quiet --bin pbsfs
    BIN=$PWD/target/release/pbsfs
fi
if part incremental && ! command -v restic >/dev/null; then
    apt-get install -y restic >/dev/null
fi

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
export RESTIC_PASSWORD=pbsfs-bench RESTIC_CACHE_DIR=$WORK/restic-cache
cleanup() {
    rm -rf "$WORK"/restic* "$WORK"/*.out "$WORK"/*.err
    if [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# fresh_datastore NAME: prints the path of datastore NAME of the work directory, emptied.
# Made once (`pbsfs init`, 65536 chunk directories; a binary from before `init` existed
# makes it on its first push, here an empty one), then emptied of snapshots and chunks but
# not of its directories, outside the measurements: deleting 65536 directories takes this
# disk most of a minute.
fresh_datastore() {
    local ds=$WORK/datastore-$1
    if [ -d "$ds/.chunks" ]; then
        find "$ds/.chunks" -mindepth 2 -type f -delete
        find "$ds" -mindepth 1 -maxdepth 1 ! -name .chunks ! -name .lock -exec rm -rf {} +
    elif ! "$BIN" init "$ds" >/dev/null 2>&1; then
        mkdir -p "$WORK/empty"
        "$BIN" -r "$ds" push --quiet --backup-id warmup "$WORK/empty" >/dev/null
    fi
    echo "$ds"
}
new_restic_repo() {
    rm -rf "$1"
    restic init --quiet --repo "$1" >/dev/null
}
# Generates a tree unless REUSE_TREE=1 and it exists: make_tree DEST GENERATOR-ARGS...
make_tree() {
    local dest=$1
    shift
    if [ "${REUSE_TREE:-0}" = 1 ] && [ -d "$dest" ]; then return; fi
    rm -rf "$dest"
    echo "generating $dest ..."
    python3 "$@"
    # Files written in the second of a snapshot are read again by the next push (their
    # mtime cannot tell a later change apart): keep the tree older than every push.
    sleep 1
}

min() { awk -v a="$1" -v b="$2" 'BEGIN{print (b == "" || a < b) ? a : b}'; }
max() { awk -v a="$1" -v b="$2" 'BEGIN{print (b == "" || a > b) ? a : b}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a / (b > 0 ? b : 0.001)}'; }
declare -A BEST PEAK
# run KEY OUTFILE COMMAND...: runs COMMAND from a cold page cache, its stdout into OUTFILE;
# keeps the best time under KEY in BEST and the highest peak RSS (KiB) in PEAK.
run() {
    local key=$1 out=$2 t rss
    shift 2
    # A push into a group that has a snapshot must start in a later second (snapshot times).
    sleep 1
    drop_caches
    if ! /usr/bin/time -f "%e %M" -o "$WORK/time.out" "$@" >"$out" 2>"$WORK/cmd.err"; then
        echo "failed ($key): $*" >&2
        cat "$WORK/cmd.err" >&2
        exit 1
    fi
    read -r t rss <"$WORK/time.out"
    BEST[$key]=$(min "$t" "${BEST[$key]:-}")
    PEAK[$key]=$(max "$rss" "${PEAK[$key]:-}")
    printf '  %-28s %8.2f s %6d MiB\n' "$key" "$t" "$((rss / 1024))"
}
peak_mib() { echo $((${PEAK[$1]} / 1024)); }
# row LABEL KEY: one line of a result table.
row() {
    if [ -n "${PEAK[$2]:-}" ]; then
        printf '%-52s %8.2f s %6d MiB\n' "$1" "${BEST[$2]}" "$(peak_mib "$2")"
    else
        printf '%-52s %8.2f s\n' "$1" "${BEST[$2]}"
    fi
}
TARGETS=()
# target DESCRIPTION VALUE LIMIT: VALUE <= LIMIT is met.
target() {
    local verdict="not met"
    if awk -v v="$2" -v l="$3" 'BEGIN{exit !(v <= l)}'; then verdict=met; fi
    TARGETS+=("$(printf '%-60s %6s (<= %s) %s' "$1" "$2" "$3" "$verdict")")
}

incremental_tree() {
    local tree=$WORK/tree-a ds repo round
    make_tree "$tree" scripts/gen-small-files-tree.py "$tree" --dirs 100 --large-mib "$LARGE_MIB"
    echo "tree A: $(du -sh --apparent-size "$tree" | cut -f1), $(find "$tree" | wc -l) entries"
    for round in $(seq "$ROUNDS"); do
        echo "tree A, round $round:"
        ds=$(fresh_datastore one)
        repo=$WORK/restic-a.$round
        new_restic_repo "$repo"
        # Odd rounds: pbsfs first; even rounds: restic and find first.
        local steps=(pbsfs_first restic_first find pbsfs_unchanged restic_unchanged)
        if ((round % 2 == 0)); then
            steps=(find restic_first pbsfs_first restic_unchanged pbsfs_unchanged)
        fi
        local step
        for step in "${steps[@]}"; do
            case $step in
                find) run "find -ls" /dev/null find "$tree" -ls ;;
                pbsfs_first) run "pbsfs first push" /dev/null \
                    "$BIN" -r "$ds" push --quiet --backup-id a --change-detection-mode metadata "$tree" ;;
                restic_first) run "restic first backup" /dev/null \
                    restic --repo "$repo" backup --quiet "$tree" ;;
                pbsfs_unchanged) run "pbsfs unchanged re-push" "$WORK/a-unchanged.out" \
                    "$BIN" -r "$ds" push --backup-id a --change-detection-mode metadata "$tree" ;;
                restic_unchanged) run "restic unchanged backup" "$WORK/restic-unchanged.out" \
                    restic --repo "$repo" backup "$tree" ;;
            esac
        done
        # A different 1 % every round, on top of the last one's.
        python3 scripts/gen-small-files-tree.py "$tree" --change 1 --seed $((100 + round))
        sleep 1
        local changed=(pbsfs restic)
        if ((round % 2 == 0)); then changed=(restic pbsfs); fi
        for step in "${changed[@]}"; do
            case $step in
                pbsfs) run "pbsfs re-push, 1 % changed" "$WORK/a-changed.out" \
                    "$BIN" -r "$ds" push --backup-id a --change-detection-mode metadata "$tree" ;;
                restic) run "restic backup, 1 % changed" "$WORK/restic-changed.out" \
                    restic --repo "$repo" backup "$tree" ;;
            esac
        done
        rm -rf "$repo"
    done
}

incremental_sizes() {
    local size round tree
    declare -A ds
    for size in $SIZES; do
        make_tree "$WORK/tree-$size" scripts/gen-small-files-tree.py "$WORK/tree-$size" --dirs "$size"
    done
    for round in $(seq "$ROUNDS"); do
        for size in $SIZES; do
            echo "small-file tree ${size}k, round $round:"
            tree=$WORK/tree-$size
            ds[data]=$(fresh_datastore one)
            ds[legacy]=$(fresh_datastore two)
            local modes=(data legacy)
            if ((round % 2 == 0)); then modes=(legacy data); fi
            local mode
            for mode in "${modes[@]}"; do
                run "$mode ${size}k" /dev/null \
                    "$BIN" -r "${ds[$mode]}" push --quiet --backup-id s --change-detection-mode "$mode" "$tree"
            done
            run "unchanged ${size}k" "$WORK/s-unchanged-$size.out" \
                "$BIN" -r "${ds[data]}" push --backup-id s --change-detection-mode metadata "$tree"
        done
    done
}

# Summary lines of a push or a restic backup that say what was read.
pbsfs_summary() { grep -E 'files, |not read|^new: ' "$1" | sed 's/^/    /' || true; }
restic_summary() { grep -E '^(Files|Dirs|Added to the repo|processed)' "$1" | sed 's/^/    /' || true; }

incremental_report() {
    echo
    echo "== incremental: tree A (${LARGE_MIB} MiB file + 100k tiny files), best of $ROUNDS =="
    printf '%-52s %10s %10s\n' "run" "time" "peak RSS"
    row "find -ls (cold)" "find -ls"
    row "pbsfs first push (fresh datastore)" "pbsfs first push"
    row "restic first backup (fresh repository)" "restic first backup"
    row "pbsfs unchanged re-push (metadata mode)" "pbsfs unchanged re-push"
    row "restic unchanged backup" "restic unchanged backup"
    row "pbsfs re-push, 1 % of the small files changed" "pbsfs re-push, 1 % changed"
    row "restic backup of the same change" "restic backup, 1 % changed"
    echo "  pbsfs unchanged re-push (last round):"
    pbsfs_summary "$WORK/a-unchanged.out"
    echo "  pbsfs re-push after the change (last round):"
    pbsfs_summary "$WORK/a-changed.out"
    echo "  restic backup of the change (last round):"
    restic_summary "$WORK/restic-changed.out"
    echo "  re-push after the change / restic's: $(ratio "${BEST[pbsfs re-push, 1 % changed]}" "${BEST[restic backup, 1 % changed]}")"
    target "unchanged re-push / restic unchanged backup" \
        "$(ratio "${BEST[pbsfs unchanged re-push]}" "${BEST[restic unchanged backup]}")" 1
    target "unchanged re-push / cold find -ls" \
        "$(ratio "${BEST[pbsfs unchanged re-push]}" "${BEST[find -ls]}")" 2
    target "first push / restic first backup" \
        "$(ratio "${BEST[pbsfs first push]}" "${BEST[restic first backup]}")" 0.6

    echo
    echo "== incremental: small-file trees (N x 1000 tiny files), best of $ROUNDS =="
    printf '%-14s %11s %11s %11s %11s %11s %11s %12s\n' "tree" "entries" "data s" "legacy s" \
        "unchanged s" "data us/e" "legacy us/e" "data/legacy"
    local size entries first="" last=""
    declare -A per_entry
    for size in $SIZES; do
        entries=$((size * 1000 + size + 1))
        per_entry[data$size]=$(awk -v t="${BEST[data ${size}k]}" -v n="$entries" 'BEGIN{printf "%.2f", t * 1e6 / n}')
        per_entry[legacy$size]=$(awk -v t="${BEST[legacy ${size}k]}" -v n="$entries" 'BEGIN{printf "%.2f", t * 1e6 / n}')
        per_entry[unchanged$size]=$(awk -v t="${BEST[unchanged ${size}k]}" -v n="$entries" 'BEGIN{printf "%.2f", t * 1e6 / n}')
        printf '%-14s %11d %11.2f %11.2f %11.2f %11s %11s %12s\n' "${size}k files" "$entries" \
            "${BEST[data ${size}k]}" "${BEST[legacy ${size}k]}" "${BEST[unchanged ${size}k]}" \
            "${per_entry[data$size]}" "${per_entry[legacy$size]}" \
            "$(ratio "${BEST[data ${size}k]}" "${BEST[legacy ${size}k]}")"
        target "data-mode first push / legacy push, ${size}k files" \
            "$(ratio "${BEST[data ${size}k]}" "${BEST[legacy ${size}k]}")" 1
        first=${first:-$size}
        last=$size
    done
    for size in $SIZES; do
        printf '  peak RSS %-8s data %d MiB, legacy %d MiB, unchanged %d MiB\n' "${size}k" \
            "$(peak_mib "data ${size}k")" "$(peak_mib "legacy ${size}k")" \
            "$(peak_mib "unchanged ${size}k")"
    done
    if [ "$first" != "$last" ]; then
        # Linear: the per-entry cost of the largest tree within a quarter of the smallest's.
        local kind
        for kind in data legacy unchanged; do
            target "per-entry cost ${last}k / ${first}k, $kind push" \
                "$(ratio "${per_entry[$kind$last]}" "${per_entry[$kind$first]}")" 1.25
        done
    fi
    echo "  pbsfs unchanged re-push of the largest tree (last round):"
    pbsfs_summary "$WORK/s-unchanged-$last.out"
}

throughput() {
    local tree=$WORK/tree-mixed round ds
    make_tree "$tree" scripts/gen-mixed-tree.py "$tree" "$SIZE_MIB"
    local bytes mib
    bytes=$(du -sb "$tree" | cut -f1)
    mib=$(awk -v b="$bytes" 'BEGIN{print b / 1048576}')
    echo "mixed tree: $mib MiB, $(find "$tree" -type f | wc -l) files; $(nproc) cores"
    for round in $(seq "$ROUNDS"); do
        echo "throughput, round $round:"
        ds=$(fresh_datastore one)
        # shellcheck disable=SC2016 # the tree is the inner shell's $1
        run "tar|zstd" /dev/null bash -c 'tar -cf - -C "$1" . | zstd -1 -T0' - "$tree"
        # shellcheck disable=SC2016
        run "sha256sum" /dev/null bash -c 'cd "$1" && find . -type f -print0 | sort -z | xargs -0 cat | sha256sum' - "$tree"
        run "push data" /dev/null "$BIN" -r "$ds" push --quiet --backup-id bench \
            --change-detection-mode data "$tree"
    done
    run "push legacy" /dev/null "$BIN" -r "$ds" push --quiet --backup-id bench-legacy \
        --change-detection-mode legacy "$tree"
    run "push metadata" /dev/null "$BIN" -r "$ds" push --quiet --backup-id bench \
        --change-detection-mode metadata "$tree"

    rate() { awk -v m="$mib" -v t="$1" 'BEGIN{printf "%.1f", m / (t > 0 ? t : 0.001)}'; }
    echo
    echo "== throughput: mixed tree of $mib MiB (tar|zstd, sha256sum, data push: best of $ROUNDS) =="
    printf '%-52s %10s %10s %8s\n' "run" "time" "peak RSS" "MiB/s"
    local label key
    for label in "tar -cf - | zstd -1 -T0:tar|zstd" "cat | sha256sum:sha256sum" \
        "pbsfs push (data mode, new datastore):push data" \
        "pbsfs push (legacy, all chunks known):push legacy" \
        "pbsfs push (metadata, unchanged tree):push metadata"; do
        key=${label#*:}
        printf '%s %8s\n' "$(row "${label%%:*}" "$key")" "$(rate "${BEST[$key]}")"
    done
    echo "push throughput / tar|zstd throughput: $(ratio "${BEST[tar|zstd]}" "${BEST[push data]}")"
    echo "push throughput / sha256sum throughput: $(ratio "${BEST[sha256sum]}" "${BEST[push data]}")"
    "$BIN" -r "$ds" verify >/dev/null && echo "datastore verified"
}

echo "pbsfs: $BIN; $(nproc) cores; rounds: $ROUNDS"
if part incremental; then
    incremental_tree
    incremental_sizes
    incremental_report
fi
if part throughput; then
    throughput
fi
if [ ${#TARGETS[@]} -gt 0 ]; then
    echo
    echo "== targets (issue 16) =="
    printf '%s\n' "${TARGETS[@]}"
fi
