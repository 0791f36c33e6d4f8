#!/usr/bin/env bash
# Hearth against llama.cpp's llama-server on the same GGUF files, side by side in one run.
#
#   benches/gguf-vs-llama.sh TOKENIZER_JSON FILE.gguf [FILE.gguf ...]
#   benches/gguf-vs-llama.sh --requantize TOKENIZER_JSON FILE.gguf   # FILE in every type below
#
# For each file, ROUNDS times, the two servers take turns (each alone on loopback): Hearth
# serves the file by itself (`hearth serve FILE`, defaults otherwise) and llama-server serves it
# with NP slots (benches/peers/llama-cpp.sh, built when missing). loadgen drives each at
# concurrency 1 and 8: NUM_REQUESTS requests of PROMPT_TOKENS random tokens (exact lengths from
# TOKENIZER_JSON), OUTPUT_TOKENS out with ignore_eos. --requantize first writes FILE in each of
# TYPES with llama-quantize --allow-requantize (speed only: a requantized file is no better
# than its source). summary.md gets, per file and server: c=1 inter-token latency p50, c=8 output
# tokens/s, c=8 TTFT p99 and inter-token p99, and the ratios the goals are stated in.
#
# Settings: ROUNDS=2 NUM_REQUESTS=16 PROMPT_TOKENS=256 OUTPUT_TOKENS=64 NP=8
#   TYPES="F32 Q8_0 Q4_0 Q4_1 Q4_K Q5_K Q6_K"  OUT=bench-results/gguf-<date>  PORT=18180
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-2}
NUM_REQUESTS=${NUM_REQUESTS:-16}
PROMPT_TOKENS=${PROMPT_TOKENS:-256}
OUTPUT_TOKENS=${OUTPUT_TOKENS:-64}
NP=${NP:-8}
TYPES=${TYPES:-F32 Q8_0 Q4_0 Q4_1 Q4_K Q5_K Q6_K}
OUT=${OUT:-$REPO/bench-results/gguf-$(date -u +%Y%m%dT%H%M%SZ)}
PORT=${PORT:-18180}

say() { printf '[gguf-vs-llama] %s\n' "$*" >&2; }

requantize=0
if [[ ${1:-} == --requantize ]]; then requantize=1; shift; fi
TOKENIZER=${1:?TOKENIZER_JSON}
shift
[[ $# -gt 0 ]] || { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
mkdir -p "$OUT"

say "building hearth and loadgen (release)"
cargo build --release --quiet -p hearth-cli -p hearth-loadgen --manifest-path "$REPO/Cargo.toml"
TARGET=$(cargo metadata --format-version 1 --no-deps --manifest-path "$REPO/Cargo.toml" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
HEARTH="$TARGET/release/hearth"
LOADGEN="$TARGET/release/loadgen"
LLAMA_BIN=$("$REPO/benches/peers/llama-cpp.sh" path)
[[ -x "$LLAMA_BIN/llama-server" ]] || "$REPO/benches/peers/llama-cpp.sh" build

files=("$@")
if [[ $requantize == 1 ]]; then
    source_file=$1
    files=()
    for t in $TYPES; do
        out="$OUT/files/model-${t,,}.gguf"
        mkdir -p "$OUT/files"
        [[ -s $out ]] || "$LLAMA_BIN/llama-quantize" --allow-requantize "$source_file" "$out" "$t" 2 \
            > "$OUT/files/quantize-${t,,}.log" 2>&1
        files+=("$out")
    done
fi

wait_ready() {
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:$PORT/v1/models" > /dev/null 2>&1 && return 0
        sleep 0.5
    done
    return 1
}

run_one() { # server file round
    local server=$1 file=$2 round=$3 name dir pid model
    name=$(basename "$file" .gguf)
    dir="$OUT/$name/$server-$round"
    mkdir -p "$dir"
    if [[ $server == hearth ]]; then
        "$HEARTH" serve --addr "127.0.0.1:$PORT" --device cpu "$file" > "$dir/server.log" 2>&1 &
        model=$(echo "$name" | tr 'A-Z' 'a-z')
    else
        "$REPO/benches/peers/llama-cpp.sh" serve "$file" "$PORT" "$NP" > "$dir/server.log" 2>&1 &
        model=$name
    fi
    pid=$!
    if ! wait_ready; then say "$server did not start on $file"; kill "$pid" 2>/dev/null; return 1; fi
    "$LOADGEN" run --url "http://127.0.0.1:$PORT" --model "$model" --label "$server" \
        --tokenizer "$TOKENIZER" --concurrency 1,8 --num-requests "$NUM_REQUESTS" \
        --prompt-tokens "fixed:$PROMPT_TOKENS" --output-tokens "fixed:$OUTPUT_TOKENS" \
        --no-progress --out "$dir" > "$dir/loadgen.log" 2>&1 || say "loadgen failed: $dir"
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}

"$REPO/benches/peers/llama-cpp.sh" describe > "$OUT/llama-build.txt"
for round in $(seq 1 "$ROUNDS"); do
    for file in "${files[@]}"; do
        for server in hearth llama; do
            say "round $round: $server on $(basename "$file")"
            run_one "$server" "$file" "$round"
        done
    done
done

python3 - "$OUT" <<'PY' > "$OUT/summary.md"
import json, pathlib, statistics, sys
out = pathlib.Path(sys.argv[1])
print(f"llama-server build: {(out / 'llama-build.txt').read_text().strip()}\n")
print("| file | server | c=1 ITL p50 (ms) | c=8 out tok/s | c=8 TTFT p99 (ms) | c=8 ITL p99 (ms) |")
print("|---|---|---:|---:|---:|---:|")
ratios = []
for model in sorted(p for p in out.iterdir() if p.is_dir() and p.name != "files"):
    row = {}
    for server in ("hearth", "llama"):
        runs = [json.loads((d / "results.json").read_text())
                for d in sorted(model.glob(f"{server}-*")) if (d / "results.json").exists()]
        if not runs:
            continue
        pts = lambda c: [p for r in runs for p in r["points"] if p["load"] == c]
        med = lambda xs: statistics.median(xs) if xs else float("nan")
        v = (med([p["itl_ms"]["p50"] for p in pts(1)]), med([p["output_tokens_per_s"] for p in pts(8)]),
             med([p["ttft_ms"]["p99"] for p in pts(8)]), med([p["itl_ms"]["p99"] for p in pts(8)]))
        row[server] = v
        print(f"| {model.name} | {server} ({len(runs)} runs) | {v[0]:.1f} | {v[1]:.1f} | {v[2]:.0f} | {v[3]:.0f} |")
    if len(row) == 2:
        h, l = row["hearth"], row["llama"]
        ratios.append((model.name, h[0] / l[0], h[1] / l[1], h[2] / l[2], h[3] / l[3]))
print("\n| file | c=1 ITL, Hearth/llama (goal ≤ 0.9) | c=8 tok/s (goal ≥ 1.2) | c=8 TTFT p99 (≤ 0.7) | c=8 ITL p99 (≤ 1.0) |")
print("|---|---:|---:|---:|---:|")
for name, *r in ratios:
    print(f"| {name} | {r[0]:.2f} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.2f} |")
PY
cat "$OUT/summary.md"
