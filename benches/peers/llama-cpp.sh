#!/usr/bin/env bash
# llama.cpp's `llama-server` as a benchmark peer: build it from the llama.cpp sources that PyPI's
# llama-cpp-python source distribution vendors, convert a Hearth (Hugging Face layout) package to
# GGUF, and serve a GGUF file with continuous batching over NP slots.
#
#   benches/peers/llama-cpp.sh build
#   benches/peers/llama-cpp.sh convert MODEL_DIR OUT_DIR     # OUT_DIR/model-{f32,q8_0,q4_k}.gguf
#   benches/peers/llama-cpp.sh serve GGUF PORT [NP]          # foreground; Ctrl-C stops it
#   benches/peers/llama-cpp.sh path                          # prints the build folder
#   benches/peers/llama-cpp.sh describe                      # which build this is (for results)
#
# The build is native (-march=native) except on CPUs with AMX: there a native build's AMX
# backend crashed in ggml_backend_amx_mul_mat at the first batch, so the build names the CPU's
# other extensions (AVX-512, VNNI, BF16, ...) one by one and leaves AMX out. LLAMA_AMX=1 keeps
# the native build (AMX included) anyway.
#
# Nothing is built inside the repository. Settings (environment):
#   HEARTH_PEERS_DIR          cache folder for every peer (default: ~/.cache/hearth-peers)
#   LLAMA_CPP_PYTHON_VERSION  llama-cpp-python release whose sources are built (default below)
#   PEER_JOBS                 parallel compile jobs (default: 2); builds run under `nice -n 19`
#   LLAMA_CTX                 total context for `serve` (default: NP × 1024, at least 4096)
#   LLAMA_THREADS             threads for `serve` (default: llama-server's choice)
#   LLAMA_SERVER_ARGS         extra arguments appended to llama-server's command line
#   QUANTS                    GGUF types `convert` writes (default: "f32 q8_0 q4_k")
#   LLAMA_PRE                 pre-tokenizer for tokenizers llama.cpp does not know (default: gpt-2)
#   LLAMA_AMX                 1: native build even on a CPU with AMX (default: AMX left out)
set -euo pipefail

PEERS_DIR=${HEARTH_PEERS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hearth-peers}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
JOBS=${PEER_JOBS:-2}
ROOT="$PEERS_DIR/llama-cpp"
VENV="$ROOT/venv"
SRC="$ROOT/llama_cpp_python-$VERSION/vendor/llama.cpp"
cpu_has() { grep -qw "$1" /proc/cpuinfo 2>/dev/null; }
if cpu_has amx_int8 && [[ ${LLAMA_AMX:-0} != 1 ]]; then VARIANT=noamx; else VARIANT=native; fi
BUILD="$ROOT/build-$VERSION-$VARIANT"
BIN="$BUILD/bin"

say() { printf '[llama-cpp] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

venv() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        say "creating the Python environment in $VENV"
        mkdir -p "$ROOT"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --upgrade pip
    fi
}

fetch_sources() {
    [[ -f "$SRC/CMakeLists.txt" ]] && return
    venv
    say "downloading the llama-cpp-python $VERSION source distribution from PyPI"
    mkdir -p "$ROOT/sdist"
    "$VENV/bin/pip" download --quiet --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$VERSION" -d "$ROOT/sdist"
    tar -xzf "$ROOT/sdist/llama_cpp_python-$VERSION.tar.gz" -C "$ROOT"
    [[ -f "$SRC/CMakeLists.txt" ]] || die "no vendor/llama.cpp in the source distribution"
}

build() {
    fetch_sources
    venv
    "$VENV/bin/pip" install --quiet cmake ninja
    export PATH="$VENV/bin:$PATH"
    if [[ ! -f "$BUILD/build.ninja" ]]; then
        local isa
        read -r -a isa <<< "$(isa_flags)"
        say "configuring (Release, CPU, $(describe)) in $BUILD"
        nice -n 19 cmake -S "$SRC" -B "$BUILD" -G Ninja \
            -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=OFF "${isa[@]}" \
            -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF \
            -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
        describe > "$BUILD/hearth-build.txt"
    fi
    say "building llama-server and llama-quantize with $JOBS jobs (nice 19); this takes a while"
    nice -n 19 cmake --build "$BUILD" -j "$JOBS" --target llama-server
    nice -n 19 cmake --build "$BUILD" -j "$JOBS" --target llama-quantize
    "$BIN/llama-server" --version 2>&1 | head -n 2 >&2 || true
    say "built $BIN/llama-server"
}

# ggml's CPU feature switches: -march=native, or (AMX CPUs) each extension the CPU has but AMX.
isa_flags() {
    if [[ $VARIANT == native ]]; then
        echo "-DGGML_NATIVE=ON"
        return
    fi
    local flags="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    local pair
    for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx_vnni:AVX_VNNI \
        avx512f:AVX512 avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
        if cpu_has "${pair%%:*}"; then flags+=" -DGGML_${pair#*:}=ON"; else flags+=" -DGGML_${pair#*:}=OFF"; fi
    done
    echo "$flags"
}

describe() {
    local cpu
    cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')
    if [[ $VARIANT == native ]]; then
        echo "llama.cpp (llama-cpp-python $VERSION sources), GGML_NATIVE=ON, on ${cpu:-this CPU}"
    else
        echo "llama.cpp (llama-cpp-python $VERSION sources), GGML_NATIVE=OFF with AMX off, on ${cpu:-this CPU}"
    fi
}

convert_env() {
    fetch_sources
    venv
    if ! "$VENV/bin/python" -c 'import gguf, torch, transformers, safetensors, sentencepiece' 2>/dev/null; then
        say "installing the converter's Python dependencies from PyPI (torch, transformers, gguf-py)"
        "$VENV/bin/pip" install --quiet numpy safetensors sentencepiece protobuf transformers torch
        "$VENV/bin/pip" install --quiet "$SRC/gguf-py"
    fi
}

# convert_hf_to_gguf.py identifies a BPE tokenizer's pre-tokenizer by hashing how it splits a test
# string, and refuses tokenizers it has never seen, such as `hearth synth`'s. Hearth's synthetic
# tokenizers use the GPT-2 byte-level split, so an unknown hash maps to LLAMA_PRE (default gpt-2);
# a known hash keeps llama.cpp's own choice.
run_converter() {
    LLAMA_PRE=${LLAMA_PRE:-gpt-2} nice -n 19 "$VENV/bin/python" - "$SRC" "$@" <<'PY'
import logging, os, sys
src = sys.argv.pop(1)
sys.path.insert(0, src)
sys.argv[0] = os.path.join(src, "convert_hf_to_gguf.py")
import convert_hf_to_gguf
from conversion.base import TextModel

known = TextModel.get_vocab_base_pre

def get_vocab_base_pre(self, tokenizer):
    try:
        return known(self, tokenizer)
    except NotImplementedError:
        pre = os.environ["LLAMA_PRE"]
        logging.warning("unrecognised pre-tokenizer: using %r (LLAMA_PRE)", pre)
        return pre

TextModel.get_vocab_base_pre = get_vocab_base_pre
convert_hf_to_gguf.main()
PY
}

convert() {
    local model=${1:?MODEL_DIR} out=${2:?OUT_DIR}
    [[ -f "$model/config.json" ]] || die "$model has no config.json"
    convert_env
    mkdir -p "$out"
    local name
    for q in ${QUANTS:-f32 q8_0 q4_k}; do
        name="$out/model-$q.gguf"
        if [[ -s "$name" ]]; then say "$name exists"; continue; fi
        case $q in
            f32 | f16 | bf16 | q8_0)
                say "converting $model to $name"
                run_converter "$model" --outtype "$q" --outfile "$name.partial" >&2
                ;;
            *)
                [[ -x "$BIN/llama-quantize" ]] || die "run '$0 build' first (llama-quantize)"
                [[ -s "$out/model-f32.gguf" ]] || die "$q is quantized from model-f32.gguf"
                say "quantizing to $name"
                nice -n 19 "$BIN/llama-quantize" "$out/model-f32.gguf" "$name.partial" \
                    "${q^^}" "${PEER_JOBS:-2}" >&2
                ;;
        esac
        mv "$name.partial" "$name"
    done
    ls -l "$out"/model-*.gguf >&2
}

serve() {
    local gguf=${1:?GGUF} port=${2:?PORT} np=${3:-8}
    [[ -x "$BIN/llama-server" ]] || die "run '$0 build' first"
    local ctx=${LLAMA_CTX:-$((np * 1024 > 4096 ? np * 1024 : 4096))}
    local args=(-m "$gguf" --host 127.0.0.1 --port "$port" -np "$np" -c "$ctx" --cont-batching
        --alias "$(basename "$gguf" .gguf)")
    [[ -n ${LLAMA_THREADS:-} ]] && args+=(-t "$LLAMA_THREADS")
    # shellcheck disable=SC2206
    [[ -n ${LLAMA_SERVER_ARGS:-} ]] && args+=($LLAMA_SERVER_ARGS)
    say "llama-server ${args[*]} [$(describe)]"
    exec "$BIN/llama-server" "${args[@]}"
}

case ${1:-} in
    build) build ;;
    convert) shift; convert "$@" ;;
    serve) shift; serve "$@" ;;
    path) echo "$BIN" ;;
    describe) describe ;;
    *) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
