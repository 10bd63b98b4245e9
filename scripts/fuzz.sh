#!/bin/sh
# Long fuzzing runs of the pxar reader (fuzz/fuzz_targets/pxar_reader.rs): the input is read
# as a v1 archive and as a v2 metadata + payload pair; any panic, hang or runaway
# allocation is a finding (saved under fuzz/artifacts/pxar_reader/).
#
# Needs a nightly toolchain (sanitizers) and cargo-fuzz:
#   rustup toolchain install nightly
#   cargo install cargo-fuzz
#
# Usage: scripts/fuzz.sh [SECONDS] [extra libFuzzer flags...]   (default: 600 s)
# Extra seeds: drop archives (e.g. a .pxar) into fuzz/corpus/pxar_reader/.
set -e
cd "$(dirname "$0")/.."
seconds="${1:-600}"
[ $# -gt 0 ] && shift
# Seeds: small valid archives from the property tests (v1, and v2 with their split prefix).
if [ -z "$(ls -A fuzz/corpus/pxar_reader 2>/dev/null)" ]; then
    PXAR_FUZZ_SEEDS="$PWD/fuzz/corpus/pxar_reader" nice cargo test --test it pxar_roundtrip_prop::
fi
mkdir -p fuzz/corpus/pxar_reader
exec nice cargo +nightly fuzz run pxar_reader fuzz/corpus/pxar_reader -- \
    -dict=fuzz/pxar.dict -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10 "$@"
