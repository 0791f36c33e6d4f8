#!/usr/bin/env bash
# Scheduler tuning: the serving sweep's c=8 point (and c=1) under a grid of the scheduler's knobs,
# one Hearth per setting, so that the defaults can be chosen from measured curves.
#
#   benches/tune-scheduler.sh
#
# Knobs swept (hearth.toml [engine]): max_batch_tokens (the per-step token budget),
# max_prefill_chunk (prompt tokens of one request per step), max_prefill_wait_steps (how long
# a prompt may wait before its next chunk goes ahead of decodes) and, optionally,
# max_prefill_tokens_while_decoding (prompt tokens in a step that also decodes). Each setting
# runs the same closed-loop load as benches/run-serving.sh (PROMPT_TOKENS-token prompts,
# OUTPUT_TOKENS outputs, ignore_eos, NUM_REQUESTS per point), on the benchmark model it writes
# (smollm2-135m, f32) or on MODEL (a package directory or a .gguf file; set MODEL_ID to the name
# it is served under and TOKENIZER to a tokenizer.json for a .gguf).
# Prints one markdown table: TTFT p50/p99, TPOT p50, inter-token p99 and output tokens/s per
# setting and load.
#
# Settings (environment): GRID (see below), CONCURRENCY (1,8), NUM_REQUESTS (16),
# PROMPT_TOKENS (350), OUTPUT_TOKENS (64), OUT (bench-results/tune-<date>), PORT (18095).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

# budget:chunk:wait[:prefill-while-decoding] settings.
GRID=${GRID:-"256:128:8 512:128:8 512:256:8 512:512:8 1024:256:8 1024:512:8 512:256:2 512:256:32"}
CONCURRENCY=${CONCURRENCY:-1,8}
NUM_REQUESTS=${NUM_REQUESTS:-16}
PROMPT_TOKENS=${PROMPT_TOKENS:-350}
OUTPUT_TOKENS=${OUTPUT_TOKENS:-64}
OUT=${OUT:-bench-results/tune-$(date -u +%Y-%m-%d)}
PORT=${PORT:-18095}
MODEL=${MODEL:-${HEARTH_PEERS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hearth-peers}/models/smollm2-135m}
MODEL_ID=${MODEL_ID:-smollm2-135m}
TOKENIZER=${TOKENIZER:-$MODEL/tokenizer.json}

echo "building hearth and loadgen (release)..." >&2
cargo build --release -q -p hearth-cli -p hearth-loadgen
HEARTH=$REPO/target/release/hearth
LOADGEN=$REPO/target/release/loadgen
if [[ ! -f $MODEL/config.json && ! -f $MODEL ]]; then
    "$HEARTH" synth --preset smollm2-135m --out "$MODEL" >&2
fi
mkdir -p "$OUT"

SERVER=
trap '[[ -n $SERVER ]] && kill "$SERVER" 2>/dev/null; wait 2>/dev/null || true' EXIT

run_setting() {
    local budget=$1 chunk=$2 wait_steps=$3 decoding=${4:-} label="b$1-c$2-w$3${4:+-d$4}"
    local dir="$OUT/$label"
    mkdir -p "$dir"
    printf '[engine]\nmax_batch_tokens = %s\nmax_prefill_chunk = %s\nmax_prefill_wait_steps = %s\n' \
        "$budget" "$chunk" "$wait_steps" >"$dir/hearth.toml"
    [[ -n $decoding ]] && printf 'max_prefill_tokens_while_decoding = %s\n' "$decoding" >>"$dir/hearth.toml"
    "$HEARTH" serve --model "$MODEL" --device cpu --addr "127.0.0.1:$PORT" \
        --config "$dir/hearth.toml" >"$dir/hearth.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 120); do
        curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
        sleep 1
    done
    echo "$label: concurrency $CONCURRENCY..." >&2
    "$LOADGEN" run --url "http://127.0.0.1:$PORT" --model "$MODEL_ID" --label "$label" \
        --concurrency "$CONCURRENCY" --num-requests "$NUM_REQUESTS" \
        --prompt-tokens "fixed:$PROMPT_TOKENS" --output-tokens "fixed:$OUTPUT_TOKENS" \
        --tokenizer "$TOKENIZER" --seed 0 --out "$dir/run" >/dev/null 2>"$dir/loadgen.log"
    kill "$SERVER" && wait "$SERVER" 2>/dev/null || true
    SERVER=
}

for triple in $GRID; do
    IFS=: read -r budget chunk wait_steps decoding <<<"$triple"
    run_setting "$budget" "$chunk" "$wait_steps" "$decoding"
done

python3 - "$OUT" <<'PY'
import glob, json, os, sys
rows = []
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*/run/results.json"))):
    d = json.load(open(path))
    for p in d["points"]:
        rows.append((d["label"], p))
rows.sort(key=lambda r: (r[1]["load"], r[0]))
print("| setting (budget-chunk-wait[-decoding]) | c | out tok/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | ITL p99 ms | errors |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for label, p in rows:
    print(f"| {label} | {p['load']:g} | {p['output_tokens_per_s']:.1f} | {p['ttft_ms']['p50']:.0f} "
          f"| {p['ttft_ms']['p99']:.0f} | {p['tpot_ms']['p50']:.1f} | {p['itl_ms']['p99']:.0f} | {p['errors']} |")
PY
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%FT%RZ); load at the end $(cut -d' ' -f1-3 /proc/loadavg)"
