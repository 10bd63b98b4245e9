#!/usr/bin/env bash
# Pull benchmarks (issue 19): `pbsfs pull` through a transport command that delays each
# direction by 5 ms (scripts/delay-rsh.py: a 10 ms round trip, bandwidth not limited),
# against the same pull without delay and against a local push.
#
#   unchanged metadata-mode re-pull of 100 directories x 1000 tiny files:
#     with 10 ms round trips vs the same relay without delay    target: at most 2x
#   first pull of a 1 GiB random file (fresh datastore):
#     with 10 ms round trips vs a local push of it              target: at least 0.7x the speed
#
# One run of each (page cache warm: the tree was just written), printed with the ratios.
# Usage: scripts/bench-pull.sh [WORKDIR (default target/bench-pull)]
# BENCH_BIN=PATH measures that pbsfs binary instead of target/release/pbsfs; DIRS (100),
# FILES_PER_DIR (1000), LARGE_MIB (1024) and DELAY_MS (5) change the sizes and the delay.
# The work directory is deleted at the end unless KEEP=1.
set -euo pipefail

WORK=${1:-target/bench-pull}
BIN=$(realpath "${BENCH_BIN:-target/release/pbsfs}")
DIRS=${DIRS:-100}
FILES_PER_DIR=${FILES_PER_DIR:-1000}
LARGE_MIB=${LARGE_MIB:-1024}
export DELAY_MS=${DELAY_MS:-5}
HERE=$(dirname "$(realpath "$0")")
DELAY_RSH="$HERE/delay-rsh.py"
PLAIN_RSH="$WORK/plain-rsh"

mkdir -p "$WORK"
WORK=$(realpath "$WORK")
PLAIN_RSH="$WORK/plain-rsh"
cleanup() { [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"; }
trap cleanup EXIT
printf '#!/bin/sh\nshift\nexec sh -c "$1"\n' > "$PLAIN_RSH"
chmod +x "$PLAIN_RSH"

# Seconds a command takes (its output discarded).
seconds() {
    local start end
    start=$(date +%s.%N)
    "$@" >/dev/null
    end=$(date +%s.%N)
    echo "$end - $start" | bc -l
}

pull() { # STORE RSH ID SOURCE [ARGS...]
    local store=$1 rsh=$2 id=$3 source=$4
    shift 4
    "$BIN" -q --repository "$store" pull --rsh "$rsh" --remote-path "$BIN" \
        --backup-id "$id" --crypt-mode none "$@" "$source"
}

echo "== tree: $DIRS x $FILES_PER_DIR tiny files"
python3 "$HERE/gen-small-files-tree.py" "$WORK/small" --dirs "$DIRS" --files-per-dir "$FILES_PER_DIR" >/dev/null
"$BIN" init "$WORK/ds-small" >/dev/null
"$BIN" init "$WORK/ds-small-push" >/dev/null
pushed_small=$(seconds "$BIN" -q --repository "$WORK/ds-small-push" push --backup-id small --crypt-mode none "$WORK/small")
first=$(seconds pull "$WORK/ds-small" "$PLAIN_RSH" small "localhost:$WORK/small")
# Each pull a new second (snapshot names), after every change.
sleep 1.1
direct=$(seconds pull "$WORK/ds-small" "$PLAIN_RSH" small "localhost:$WORK/small")
sleep 1.1
# The same relay without delay: its own cost (a Python start, copies) is not the latency's.
plain=$(DELAY_MS=0 seconds pull "$WORK/ds-small" "$DELAY_RSH" small "localhost:$WORK/small")
sleep 1.1
delayed=$(seconds pull "$WORK/ds-small" "$DELAY_RSH" small "localhost:$WORK/small")
printf 'first local push (baseline):             %6.2f s\n' "$pushed_small"
printf 'first pull, no delay:                    %6.2f s (%.2fx the push)\n' "$first" "$(echo "$first / $pushed_small" | bc -l)"
printf 'unchanged re-pull, plain transport:      %6.2f s\n' "$direct"
printf 'unchanged re-pull, relay without delay:  %6.2f s\n' "$plain"
printf 'unchanged re-pull, relay %s ms each way:  %6.2f s\n' "$DELAY_MS" "$delayed"
ratio_small=$(echo "$delayed / $plain" | bc -l)
ratio_direct=$(echo "$delayed / $direct" | bc -l)

echo "== one ${LARGE_MIB} MiB random file"
mkdir -p "$WORK/large"
head -c "$((LARGE_MIB << 20))" /dev/urandom > "$WORK/large/file"
"$BIN" init "$WORK/ds-push" >/dev/null
"$BIN" init "$WORK/ds-pull" >/dev/null
pushed=$(seconds "$BIN" -q --repository "$WORK/ds-push" push --backup-id large --crypt-mode none "$WORK/large")
pulled=$(seconds pull "$WORK/ds-pull" "$DELAY_RSH" large "localhost:$WORK/large")
printf 'first local push:                        %6.2f s (%.0f MiB/s)\n' "$pushed" "$(echo "$LARGE_MIB / $pushed" | bc -l)"
printf 'first pull, relay %s ms each way:         %6.2f s (%.0f MiB/s)\n' "$DELAY_MS" "$pulled" "$(echo "$LARGE_MIB / $pulled" | bc -l)"
speed_large=$(echo "$pushed / $pulled" | bc -l)

verdict() { if [ "$(echo "$1" | bc -l)" = 1 ]; then echo met; else echo "NOT met"; fi; }
echo "== targets"
printf 'unchanged re-pull with delay / without: %.2fx (target <= 2x): %s\n' "$ratio_small" "$(verdict "$ratio_small <= 2")"
printf 'unchanged re-pull with delay / plain transport: %.2fx (target <= 2x): %s\n' "$ratio_direct" "$(verdict "$ratio_direct <= 2")"
printf 'first pull speed / local push speed:    %.2fx (target >= 0.7x): %s\n' "$speed_large" "$(verdict "$speed_large >= 0.7")"
