#!/usr/bin/env bash
# What structured outputs cost: inter-token latency at 8 concurrent streams with a JSON Schema
# against free decoding, and the time to first token a typical tool schema adds, on a
# SmolLM2-135M-shaped model (written once to target/bench-models/). The measurement itself is
# crates/hearth-engine/examples/structured_outputs.rs; results go in docs/benchmarks.md.
#
#   benches/structured-outputs.sh [RUNS]    # RUNS (default 3) back-to-back runs
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
cargo build --release -p hearth-engine --example structured_outputs
echo "# $(date -u +%F) $(git rev-parse --short HEAD) $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) CPUs"
for run in $(seq 1 "$runs"); do
    echo "## run $run"
    target/release/examples/structured_outputs
done
