#!/usr/bin/env bash
# The GPU check of a CUDA build, for a machine with an NVIDIA GPU, its driver (CUDA 13), and a
# Python with PyTorch built for CUDA 13 and transformers; no Rust and no network needed. Copy
# dist/carry/ (the packed build and this script, about 30 MB) to that machine and run it there;
# it unpacks the build into $GPU_CHECK_UNPACK (default /tmp/hearth-cuda) first. It also runs from
# an unpacked folder (dist/cuda/):
#
#   dist/cuda/gpu-check.sh                 # env parity bench baseline report, in that order
#   dist/cuda/gpu-check.sh parity report   # or any of the phases, each on its own
#
# Phases:
#   env       GPU, driver and library checks (always run first)
#   parity    the engine's parity tests on the GPU, bf16 then f32, plus its unit tests
#   bench     `hearth synth --preset llama3-8b`, serve it on the GPU, loadgen at 1, 16 and 64
#             concurrent streams, then the device-to-device copy bandwidth
#   baseline  the same workload through transformers' generate()
#   report    $GPU_CHECK_OUT/gpu-check.md (a section for docs/benchmarks.md) and summary.json
#
# Settings (environment): GPU_CHECK_OUT (default ./gpu-check-out), GPU_CHECK_MODEL (where the
# 8B package is written, default /tmp/llama3-8b; reused when present), PROMPT_TOKENS (512),
# OUTPUT_TOKENS (128), KV_CACHE_MB (16384), PORT (18080), PYTHON (python3).
set -uo pipefail

DIST="$(cd "$(dirname "$0")" && pwd)"
# Run from dist/carry/ (this script beside hearth-cuda.tar.xz, what scripts/build-cuda.sh leaves
# to copy to a GPU machine): unpack the archive, then run the unpacked copy of this script.
if [ ! -x "$DIST/hearth" ] && [ -f "$DIST/hearth-cuda.tar.xz" ]; then
    UNPACK="${GPU_CHECK_UNPACK:-${TMPDIR:-/tmp}/hearth-cuda}"
    echo "unpacking $DIST/hearth-cuda.tar.xz into $UNPACK" >&2
    rm -rf "$UNPACK" && mkdir -p "$UNPACK" || exit 1
    tar -xJf "$DIST/hearth-cuda.tar.xz" -C "$UNPACK" 2>/dev/null ||
        "${PYTHON:-python3}" -m tarfile -e "$DIST/hearth-cuda.tar.xz" "$UNPACK" || exit 1
    exec "$UNPACK/cuda/gpu-check.sh" "$@"
fi
# Also runnable as scripts/gpu-check.sh from a checkout whose dist/cuda/ holds the build.
[ -x "$DIST/hearth" ] || DIST="$(cd "$DIST/.." && pwd)/dist/cuda"
OUT="${GPU_CHECK_OUT:-$PWD/gpu-check-out}"
MODEL="${GPU_CHECK_MODEL:-/tmp/llama3-8b}"
PROMPT_TOKENS="${PROMPT_TOKENS:-512}"
OUTPUT_TOKENS="${OUTPUT_TOKENS:-128}"
KV_CACHE_MB="${KV_CACHE_MB:-16384}"
PORT="${PORT:-18080}"
PYTHON="${PYTHON:-python3}"
STREAMS=(1 16 64)
mkdir -p "$OUT"
FAILED=()

say() { printf '\n== %s\n' "$*"; }
fail() { echo "FAILED: $*"; FAILED+=("$*"); }

# ---------------------------------------------------------------------------------------------
# The CUDA build links libcuda.so.1 (the driver), and cuBLAS, cuRAND, NVRTC and the CUDA runtime
# of CUDA 13 by soname. The driver's library is on the system; the others are taken from the
# Python environment's NVIDIA wheels (the ones PyTorch itself loads) unless the system has them.
library_path() {
    "$PYTHON" - <<'PY'
import os, sys
wanted = {"libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libnvrtc.so.13", "libcudart.so.13"}
dirs = []
try:
    import nvidia
    roots = list(nvidia.__path__)
except ImportError:
    roots = []
for root in roots:
    for dirpath, _, files in os.walk(root):
        if wanted & set(files) and dirpath not in dirs:
            dirs.append(dirpath)
print(":".join(dirs))
PY
}

phase_env() {
    say "environment"
    local libs
    libs="$(library_path)"
    export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    cat "$DIST/BUILD-INFO" 2>/dev/null
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || fail "nvidia-smi"
    local missing
    missing="$(ldd "$DIST/hearth" | grep 'not found')"
    if [ -n "$missing" ]; then
        echo "$missing"
        echo "hearth cannot start: the libraries above are missing (install PyTorch for CUDA 13, or the CUDA 13 runtime libraries)."
        exit 1
    fi
    "$DIST/hearth" --version
    local driver gpu
    driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1)"
    gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)"
    cat >"$OUT/env.json" <<EOF
{"date": "$(date -u +%Y-%m-%d)", "gpu": "$gpu", "driver": "$driver",
 "hearth": "$("$DIST/hearth" --version | awk '{print $2}') ($(head -n1 "$DIST/BUILD-INFO" 2>/dev/null | awk '{print $2}'))",
 "workload": "prompt $PROMPT_TOKENS tokens, output $OUTPUT_TOKENS tokens (ignore_eos), greedy"}
EOF
}

phase_parity() {
    say "engine parity tests on cuda:0"
    local dtype
    for dtype in bf16 f32; do
        HEARTH_TEST_DEVICE=cuda HEARTH_TEST_DTYPE=$dtype HEARTH_TEST_FIXTURES="$DIST/fixtures" \
            "$DIST/engine-parity-tests" --test-threads=1 --nocapture >"$OUT/parity-$dtype.log" 2>&1 ||
            fail "parity tests ($dtype), see $OUT/parity-$dtype.log"
        grep -E 'chunked prefill \+ decode|^test result|panicked' "$OUT/parity-$dtype.log" | sed "s/^/[$dtype] /"
    done
    say "engine unit tests"
    "$DIST/engine-unit-tests" -q >"$OUT/engine-unit-tests.log" 2>&1 || fail "engine unit tests, see $OUT/engine-unit-tests.log"
    grep '^test result' "$OUT/engine-unit-tests.log"
}

wait_ready() {
    local pid="$1" i
    for i in $(seq 1 900); do
        kill -0 "$pid" 2>/dev/null || return 1
        "$PYTHON" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" \
            2>/dev/null && return 0
        sleep 1
    done
    return 1
}

phase_bench() {
    if [ ! -f "$MODEL/config.json" ]; then
        say "hearth synth --preset llama3-8b --out $MODEL"
        local started=$SECONDS
        "$DIST/hearth" synth --preset llama3-8b --out "$MODEL" || { fail "synth"; return; }
        echo "synth took $((SECONDS - started)) s"
    fi
    cat >"$OUT/hearth.toml" <<EOF
[engine]
kv_cache_mb = $KV_CACHE_MB
max_num_seqs = 64
EOF
    say "serving $MODEL on cuda:0"
    "$DIST/hearth" serve --model "$MODEL" --device cuda --addr "127.0.0.1:$PORT" \
        --config "$OUT/hearth.toml" >"$OUT/hearth-serve.log" 2>&1 &
    local server=$!
    if ! wait_ready "$server" || ! grep -q 'model ready' "$OUT/hearth-serve.log"; then
        tail -n 30 "$OUT/hearth-serve.log"
        fail "hearth serve on the GPU, see $OUT/hearth-serve.log"
        kill "$server" 2>/dev/null
        return
    fi
    grep 'model ready' "$OUT/hearth-serve.log"
    local streams name
    name="$("$PYTHON" -c "import json, urllib.request
print(json.load(urllib.request.urlopen('http://127.0.0.1:$PORT/v1/models'))['data'][0]['id'])")"
    for streams in "${STREAMS[@]}"; do
        say "loadgen: $streams concurrent streams"
        rm -rf "$OUT/hearth-c$streams"
        "$DIST/loadgen" run --url "http://127.0.0.1:$PORT" --model "$name" \
            --label "hearth-cuda" --concurrency "$streams" \
            --num-requests $((streams == 1 ? 8 : 2 * streams)) \
            --prompt-tokens "fixed:$PROMPT_TOKENS" --output-tokens "fixed:$OUTPUT_TOKENS" \
            --tokenizer "$MODEL/tokenizer.json" --no-progress --out "$OUT/hearth-c$streams" ||
            fail "loadgen at $streams streams"
        [ -f "$OUT/hearth-c$streams/results.md" ] && cat "$OUT/hearth-c$streams/results.md"
    done
    kill "$server"
    wait "$server" 2>/dev/null
    say "device-to-device copy bandwidth"
    "$PYTHON" "$DIST/gpu_bench.py" membw --out "$OUT/membw.json" || fail "bandwidth measurement"
}

phase_baseline() {
    [ -f "$MODEL/config.json" ] || { fail "baseline: no package at $MODEL (run the bench phase first)"; return; }
    say "baseline: transformers generate() on the same package"
    "$PYTHON" "$DIST/gpu_bench.py" hf --model "$MODEL" --batch-sizes "$(IFS=,; echo "${STREAMS[*]}")" \
        --prompt-tokens "$PROMPT_TOKENS" --output-tokens "$OUTPUT_TOKENS" --out "$OUT/hf.json" ||
        fail "transformers baseline"
}

phase_report() {
    say "report"
    "$PYTHON" "$DIST/gpu_bench.py" report --dir "$OUT" --model "$MODEL" || fail "report"
}

phases=("$@")
[ ${#phases[@]} -gt 0 ] || phases=(parity bench baseline report)
phase_env
for phase in "${phases[@]}"; do
    case "$phase" in
        env) ;;
        parity | bench | baseline | report) "phase_$phase" ;;
        *) echo "unknown phase $phase (env, parity, bench, baseline, report)"; exit 2 ;;
    esac
done

if [ ${#FAILED[@]} -gt 0 ]; then
    say "${#FAILED[@]} failed"
    printf '  %s\n' "${FAILED[@]}"
    exit 1
fi
say "all passed; results in $OUT"
