#!/bin/sh
# Throughput of the buzhash chunker (prints MiB/s; no pass/fail on speed).
set -e
cd "$(dirname "$0")/.."
exec nice cargo test --release --test it chunker_fixtures::chunker_throughput -- --nocapture
