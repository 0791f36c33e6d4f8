#!/usr/bin/env bash
# mistral.rs as a benchmark peer: install the `mistralrs` command from crates.io (mistralrs-cli,
# CPU build) and serve a local Hugging Face-layout model folder over its OpenAI-compatible API.
#
#   benches/peers/mistralrs.sh build                      # ~16 min on two idle cores, more if busy
#   benches/peers/mistralrs.sh serve MODEL_DIR PORT       # foreground; Ctrl-C stops it
#   benches/peers/mistralrs.sh path                       # prints the installed binary
#
# Nothing is built inside the repository. Settings (environment):
#   HEARTH_PEERS_DIR          cache folder for every peer (default: ~/.cache/hearth-peers)
#   MISTRALRS_VERSION         mistralrs-cli version (default below)
#   PEER_JOBS                 parallel compile jobs (default: 2); the build runs under `nice -n 19`
#   MISTRALRS_DTYPE           --dtype for `serve` (default: f32, the precision Hearth uses on CPU)
#   MISTRALRS_ISQ             in-situ quantization for `serve`, e.g. q8_0 (default: none)
#   MISTRALRS_MAX_SEQS        --max-seqs for `serve` (default: 8)
#   MISTRALRS_ARGS            extra arguments appended to `mistralrs serve`
set -euo pipefail

PEERS_DIR=${HEARTH_PEERS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hearth-peers}
VERSION=${MISTRALRS_VERSION:-0.8.1}
JOBS=${PEER_JOBS:-2}
ROOT="$PEERS_DIR/mistralrs"
BIN="$ROOT/bin/mistralrs"

say() { printf '[mistralrs] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

build() {
    if [[ -x "$BIN" ]] && "$BIN" --version 2>/dev/null | grep -q "$VERSION"; then
        say "$BIN ($VERSION) is already installed"
        return
    fi
    mkdir -p "$ROOT"
    say "cargo install mistralrs-cli $VERSION (CPU) into $ROOT with $JOBS jobs (nice 19)"
    # Its own target folder, so the build never touches (or waits on) the repository's.
    CARGO_TARGET_DIR="$ROOT/target" nice -n 19 cargo install mistralrs-cli \
        --version "$VERSION" --locked --root "$ROOT" -j "$JOBS"
    "$BIN" --version >&2
}

serve() {
    local model=${1:?MODEL_DIR} port=${2:?PORT}
    [[ -x "$BIN" ]] || die "run '$0 build' first"
    [[ -f "$model/config.json" ]] || die "$model has no config.json"
    model=$(cd "$model" && pwd)
    local args=(serve --host 127.0.0.1 --port "$port" --max-seqs "${MISTRALRS_MAX_SEQS:-8}"
        -m "$model" -a llama --dtype "${MISTRALRS_DTYPE:-f32}" --cpu)
    [[ -n ${MISTRALRS_ISQ:-} ]] && args+=(--isq "$MISTRALRS_ISQ")
    # shellcheck disable=SC2206
    [[ -n ${MISTRALRS_ARGS:-} ]] && args+=($MISTRALRS_ARGS)
    say "mistralrs ${args[*]}"
    # No network: never ask the Hugging Face hub for anything.
    export HF_HUB_OFFLINE=1
    exec "$BIN" "${args[@]}"
}

case ${1:-} in
    build) build ;;
    serve) shift; serve "$@" ;;
    path) echo "$BIN" ;;
    *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
