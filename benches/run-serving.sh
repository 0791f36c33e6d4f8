#!/usr/bin/env bash
# Serving benchmark: Hearth vs llama.cpp's llama-server vs mistral.rs, on this machine's CPU.
#
#   benches/run-serving.sh
#
# 1. builds hearth and loadgen (release) and, when missing, the peers (benches/peers/*.sh);
# 2. writes the benchmark model with `hearth synth --preset smollm2-135m` and converts it to GGUF;
# 3. measures memory bandwidth once (benches/peers/membw.py: numpy copies on one and on all
#    CPUs; `sysbench memory` too when installed);
# 4. starts each server alone on loopback and drives it with the same loadgen settings:
#    a closed-loop concurrency sweep (prompts of PROMPT_TOKENS, outputs of OUTPUT_TOKENS with
#    ignore_eos) and the agent workload (conversations that re-send a growing history);
# 5. repeats the sweep at q8_0: llama-server and Hearth on the same q8_0 GGUF file (Hearth builds
#    without a quantized path fail to load it, and are skipped with a note);
# 6. `loadgen compare`s the runs and writes summary.md (the issue's goals, met or missed).
#
# Results go to bench-results/<date>/ (ignored by git). Servers are stopped on exit.
# Settings (environment), with defaults:
#   SERVERS="hearth llama-cpp mistralrs"  which servers to run
#   CONCURRENCY=1,2,4,8  NUM_REQUESTS=16  PROMPT_TOKENS=350  OUTPUT_TOKENS=64
#   AGENT_CONVERSATIONS=8  AGENT_TURNS=10  AGENT_HISTORY=2000  AGENT_NEW=40  AGENT_OUTPUT=32
#   QUANT=1                run the q8_0 comparison (0: skip it)
#   NO_PREFIX_AGENT=1      also run Hearth's agent workload with prefix caching off
#                          (hearth-noprefix), for the with/without comparison (0: skip it)
#   REPORT_ONLY=0          1: run nothing, rebuild compare/summary/report.md from BENCH_OUT
#   HEARTH_REV=            empty: build the working tree; a git revision (e.g. HEAD, main): build
#                          that revision from `git archive` in the cache, apart from the tree
#   HEARTH_Q8=gguf         Hearth's q8_0 run: gguf (the q8_0 GGUF llama-server gets) or onload
#                          (safetensors quantized on load, hearth.yaml `quantize: q8_0`)
#   WORKLOADS="sweep agent"  which workloads to run per server
#   HEARTH_KV_MB=2560      Hearth's KV cache (f32: 8 agent histories of ~5,600 tokens fit)
#   HEARTH_GATEWAY_DEFAULTS=0  1: keep the gateway's timeouts and retries (see hearth.toml below)
#   LLAMA_NP=8  LLAMA_CTX=65536   llama-server slots and total context (8 × 8,192 tokens)
#   MISTRALRS_BUILD=1      build mistral.rs when it is not installed (0: skip it instead)
#   BENCH_OUT=bench-results/<date>   HEARTH_PEERS_DIR=~/.cache/hearth-peers
#   PORT_BASE=18080  SERVER_START_TIMEOUT=600  STEP_TIMEOUT=3600  BUILD_NICE=0
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEERS="$REPO/benches/peers"
export HEARTH_PEERS_DIR=${HEARTH_PEERS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hearth-peers}
SERVERS=${SERVERS:-"hearth llama-cpp mistralrs"}
CONCURRENCY=${CONCURRENCY:-1,2,4,8}
NUM_REQUESTS=${NUM_REQUESTS:-16}
PROMPT_TOKENS=${PROMPT_TOKENS:-350}
OUTPUT_TOKENS=${OUTPUT_TOKENS:-64}
AGENT_CONVERSATIONS=${AGENT_CONVERSATIONS:-8}
AGENT_TURNS=${AGENT_TURNS:-10}
AGENT_HISTORY=${AGENT_HISTORY:-2000}
AGENT_NEW=${AGENT_NEW:-40}
AGENT_OUTPUT=${AGENT_OUTPUT:-32}
QUANT=${QUANT:-1}
HEARTH_REV=${HEARTH_REV:-}
HEARTH_KV_MB=${HEARTH_KV_MB:-2560}
NO_PREFIX_AGENT=${NO_PREFIX_AGENT:-1}
HEARTH_GATEWAY_DEFAULTS=${HEARTH_GATEWAY_DEFAULTS:-0}
WORKLOADS=${WORKLOADS:-sweep agent}
LLAMA_NP=${LLAMA_NP:-8}
export LLAMA_CTX=${LLAMA_CTX:-65536}
MISTRALRS_BUILD=${MISTRALRS_BUILD:-1}
OUT=${BENCH_OUT:-$REPO/bench-results/$(date +%Y-%m-%d)}
PORT_BASE=${PORT_BASE:-18080}
SERVER_START_TIMEOUT=${SERVER_START_TIMEOUT:-600}
STEP_TIMEOUT=${STEP_TIMEOUT:-3600}
BUILD_NICE=${BUILD_NICE:-0}

T0=$(date +%s)
STEP=0
say() { printf '\n[%s +%4ds] %s\n' "$(date +%H:%M:%S)" $(($(date +%s) - T0)) "$*" >&2; }
step() { STEP=$((STEP + 1)); say "== step $STEP: $*"; }
note() { printf '%s\n' "- $*" >>"$OUT/notes.md"; say "note: $*"; }
die() { say "error: $*"; exit 1; }
want() { [[ " $SERVERS " == *" $1 "* ]]; }

mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
printf -- '- run of %s: SERVERS="%s" WORKLOADS="%s"\n' "$(date -u +%H:%MZ)" "$SERVERS" "$WORKLOADS" >>"$OUT/notes.md"
# Keep results out of git without touching the repository's .gitignore.
if [[ "$OUT" == "$REPO/bench-results/"* && ! -f "$REPO/bench-results/.gitignore" ]]; then
    printf '*\n' >"$REPO/bench-results/.gitignore"
fi

# ---- servers: started one at a time, always stopped on exit ----
SERVER_PID=
SERVER_NAME=
stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    printf '%s end:   load %s\n' "$SERVER_NAME" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/load.txt"
    say "stopped $SERVER_NAME (load average now $(cut -d' ' -f1-3 /proc/loadavg))"
    SERVER_PID=
}
trap 'stop_server' EXIT
trap 'exit 130' INT TERM

# start_server NAME PORT CMD...: runs CMD in the background (log in logs/NAME.log) and waits until
# a one-token completion succeeds. Sets MODEL_ID to the first id of the server's /v1/models.
start_server() {
    local name=$1 port=$2
    shift 2
    SERVER_NAME=$name
    say "starting $name on 127.0.0.1:$port: $*"
    "$@" >"$OUT/logs/$name.log" 2>&1 &
    SERVER_PID=$!
    local deadline=$(($(date +%s) + SERVER_START_TIMEOUT)) ids
    while :; do
        kill -0 "$SERVER_PID" 2>/dev/null || {
            tail -n 20 "$OUT/logs/$name.log" >&2
            SERVER_PID=
            return 1
        }
        ids=$(curl -sf "http://127.0.0.1:$port/v1/models" 2>/dev/null || true)
        if [[ -n $ids ]]; then
            MODEL_ID=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])' <<<"$ids" 2>/dev/null || true)
            if [[ -n $MODEL_ID ]] && curl -sf -m 120 "http://127.0.0.1:$port/v1/completions" \
                -H 'content-type: application/json' \
                -d "{\"model\":\"$MODEL_ID\",\"prompt\":\"Hello\",\"max_tokens\":8,\"temperature\":0}" \
                >"$OUT/logs/$name.probe.json" 2>/dev/null; then
                printf '%s start: load %s\n' "$name" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/load.txt"
                say "$name is up (model id '$MODEL_ID'); it answered: $(python3 -c 'import json,sys; d=json.load(sys.stdin); print(repr(d["choices"][0]["text"][:60]), d.get("usage"))' <"$OUT/logs/$name.probe.json" 2>/dev/null || head -c 200 "$OUT/logs/$name.probe.json")"
                return 0
            fi
        fi
        (($(date +%s) < deadline)) || { say "$name did not come up in ${SERVER_START_TIMEOUT}s"; stop_server; return 1; }
        sleep 1
    done
}

# bench LABEL PORT [agent] [loadgen options...]: the sweep (and the agent workload) for the
# server that is up.
bench() {
    local label=$1 port=$2 agent=$3
    shift 3
    local url="http://127.0.0.1:$port"
    if [[ " $WORKLOADS " == *" sweep "* ]]; then
        rm -rf "${OUT:?}/$label"
        say "$label: sweep concurrency $CONCURRENCY, $NUM_REQUESTS requests each, $PROMPT_TOKENS → $OUTPUT_TOKENS tokens"
        timeout "$STEP_TIMEOUT" "$LOADGEN" run --url "$url" --model "$MODEL_ID" --label "$label" \
            --concurrency "$CONCURRENCY" --num-requests "$NUM_REQUESTS" \
            --prompt-tokens "fixed:$PROMPT_TOKENS" --output-tokens "fixed:$OUTPUT_TOKENS" \
            --tokenizer "$MODEL/tokenizer.json" --seed 0 --out "$OUT/$label" "$@" \
            || note "$label: the sweep failed or timed out (exit $?); see $OUT/$label"
        [[ -f "$OUT/$label/results.md" ]] && cat "$OUT/$label/results.md" >&2
    fi
    [[ $agent == agent && " $WORKLOADS " == *" agent "* ]] || return 0
    rm -rf "${OUT:?}/$label-agent"
    say "$label: agent workload, $AGENT_CONVERSATIONS conversations × $AGENT_TURNS turns, history to $AGENT_HISTORY tokens"
    timeout "$STEP_TIMEOUT" "$LOADGEN" agent --url "$url" --model "$MODEL_ID" --label "$label" \
        --conversations "$AGENT_CONVERSATIONS" --turns "$AGENT_TURNS" \
        --history-tokens "$AGENT_HISTORY" --new-tokens "$AGENT_NEW" --output-tokens "$AGENT_OUTPUT" \
        --tokenizer "$MODEL/tokenizer.json" --seed 0 --out "$OUT/$label-agent" "$@" \
        || note "$label: the agent workload failed or timed out (exit $?); see $OUT/$label-agent"
    [[ -f "$OUT/$label-agent/agent.md" ]] && cat "$OUT/$label-agent/agent.md" >&2
    return 0
}

# ---- 1. builds ----
step "build hearth and loadgen (release)"
cd "$REPO"
if [[ -z $HEARTH_REV ]]; then
    nice -n "$BUILD_NICE" cargo build --release -p hearth-cli -p hearth-loadgen
    TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    HEARTH_DESC="working tree at $(git describe --always --dirty 2>/dev/null || echo unknown)"
else
    sha=$(git rev-parse --verify "$HEARTH_REV^{commit}")
    src="$HEARTH_PEERS_DIR/hearth-src/${sha:0:12}"
    if [[ ! -f "$src/Cargo.toml" ]]; then
        mkdir -p "$src.partial"
        git archive "$sha" | tar -x -C "$src.partial"
        mv "$src.partial" "$src"
    fi
    TARGET="$HEARTH_PEERS_DIR/hearth-target"
    (cd "$src" && CARGO_TARGET_DIR="$TARGET" nice -n "$BUILD_NICE" \
        cargo build --locked --release -p hearth-cli -p hearth-loadgen)
    HEARTH_DESC="commit ${sha:0:12} ($HEARTH_REV)"
fi
HEARTH="$TARGET/release/hearth"
LOADGEN="$TARGET/release/loadgen"
say "hearth: $HEARTH_DESC"

if want llama-cpp && [[ ! -x "$("$PEERS/llama-cpp.sh" path)/llama-server" ]]; then
    step "build llama-server (first time only: ~10–20 min on two cores)"
    "$PEERS/llama-cpp.sh" build || { note "llama-server failed to build; skipped"; SERVERS=${SERVERS/llama-cpp/}; }
fi
if want mistralrs && [[ ! -x "$("$PEERS/mistralrs.sh" path)" ]]; then
    if [[ $MISTRALRS_BUILD == 1 ]]; then
        step "build mistral.rs (first time only: ~16 min on two idle cores, more when busy)"
        "$PEERS/mistralrs.sh" build || { note "mistral.rs failed to build; skipped"; SERVERS=${SERVERS/mistralrs/}; }
    else
        note "mistral.rs is not installed and MISTRALRS_BUILD=0: skipped"
        SERVERS=${SERVERS/mistralrs/}
    fi
fi

MODEL="$HEARTH_PEERS_DIR/models/smollm2-135m"
GGUF="$HEARTH_PEERS_DIR/models/smollm2-135m-gguf"
if [[ ${REPORT_ONLY:-0} == 1 ]]; then
    say "REPORT_ONLY=1: no runs; the report is rebuilt from what $OUT holds"
else
# ---- 2. model ----
step "write the benchmark model (hearth synth --preset smollm2-135m)"
rm -rf "$MODEL.new"
"$HEARTH" synth --preset smollm2-135m --out "$MODEL.new" >&2
if [[ -d $MODEL ]] && diff -rq "$MODEL" "$MODEL.new" >/dev/null; then
    rm -rf "$MODEL.new"
    say "the model is unchanged since the last run: $MODEL"
else
    rm -rf "$MODEL" "$GGUF"
    mv "$MODEL.new" "$MODEL"
fi
ls -l "$MODEL" >&2
if want llama-cpp; then
    step "convert the model to GGUF (f32, q8_0, q4_k) with llama.cpp's convert_hf_to_gguf.py"
    QUANTS="f32 q8_0 q4_k" "$PEERS/llama-cpp.sh" convert "$MODEL" "$GGUF" \
        || { note "GGUF conversion failed; llama-server skipped"; SERVERS=${SERVERS/llama-cpp/}; }
fi

# ---- 3. machine and memory bandwidth ----
step "measure memory bandwidth"
TOOLS="$HEARTH_PEERS_DIR/tools-venv"
[[ -x "$TOOLS/bin/python" ]] || { python3 -m venv "$TOOLS" && "$TOOLS/bin/pip" install --quiet numpy; }
"$TOOLS/bin/python" "$PEERS/membw.py" "$OUT/membw.json"
SYSBENCH=
if command -v sysbench >/dev/null; then
    for t in 1 "$(nproc)"; do
        for op in read write; do
            f="$OUT/logs/sysbench-memory-$op-$t.txt"
            sysbench memory --memory-block-size=512M --memory-total-size=32G --memory-oper="$op" \
                --threads="$t" run >"$f" 2>&1 || true
            r=$(grep -o '[0-9.]* MiB/sec' "$f" | awk '{printf "%.1f GB/s", $1 * 1.048576 / 1000}')
            SYSBENCH+="${SYSBENCH:+, }$op ${t}T ${r:-n/a}"
        done
    done
    say "sysbench memory (512 MiB blocks, DRAM not cache): $SYSBENCH"
fi
{
    echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), nproc $(nproc)"
    echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
    echo "memory bandwidth: numpy copy (read + write) $(python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print("%s GB/s on 1 thread, %s GB/s on %s CPUs" % (d["one_thread_gb_per_s"], d["all_cpus_gb_per_s"], d["cpus"]))' "$OUT/membw.json" 2>/dev/null || echo n/a)${SYSBENCH:+; sysbench $SYSBENCH}"
    echo "load before the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "hearth: $HEARTH_DESC"
} >"$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

# ---- 4. estimate ----
# Rough: ~150 prompt tokens/s and ~15 output tokens/s (c=1) to ~40 (c=8) on two cores; the agent
# workload counted without prefix reuse (servers that reuse the history finish much sooner).
read -r est_sweep est_agent < <(python3 - "$CONCURRENCY" "$NUM_REQUESTS" "$PROMPT_TOKENS" "$OUTPUT_TOKENS" \
    "$AGENT_CONVERSATIONS" "$AGENT_TURNS" "$AGENT_HISTORY" "$AGENT_OUTPUT" <<'EOF2'
import sys
conc, n, p, o, convs, turns, hist, ao = sys.argv[1], *map(int, sys.argv[2:])
loads = [int(x) for x in conc.split(",")]
sweep = sum(n * p / 150 + n * o / min(15 * c, 40) for c in loads)
per_turn = hist / turns
agent = sum(convs * (hist - (turns - t) * per_turn) / 150 + convs * ao / 40 for t in range(1, turns + 1))
print(round(sweep / 60), round(agent / 60))
EOF2
)
nserv=$(wc -w <<<"$SERVERS")
say "plan: $nserv server(s); per server about $est_sweep min for the sweep (concurrency $CONCURRENCY × $NUM_REQUESTS requests) and up to $est_agent min for the agent workload ($AGENT_CONVERSATIONS×$AGENT_TURNS turns), then the q8_0 sweeps: roughly $(( nserv * (est_sweep + est_agent) + (QUANT == 1 ? 2 * est_sweep / 2 : 0) )) min in all on two cores"

# ---- 5. f32 runs ----
port=$PORT_BASE
if want hearth; then
    step "Hearth (f32 on the CPU)"
    mkdir -p "$OUT/logs/hearth-run"
    hearth_toml() {
        printf '[engine]\nkv_cache_mb = %s\nprefix_caching = %s\n' "$HEARTH_KV_MB" "$1"
        # The gateway in front of the local engine gives up on an answer after 60 s without a
        # first token or 30 s between tokens, retries it once (re-running the prompt) and then
        # cools the route down for 30 s. The peers have no such limits, and the agent workload's
        # first turns wait longer than that on two cores; lift them so that the engines compare.
        if [[ $HEARTH_GATEWAY_DEFAULTS != 1 ]]; then
            printf '[gateway]\nttfb_timeout_ms = 3600000\nbetween_token_timeout_ms = 3600000\nretry_attempts = 1\n'
        fi
    }
    hearth_toml true >"$OUT/logs/hearth-run/hearth.toml"
    # Its own working folder, so its ledger (hearth-ledger.db) lands in the results.
    cd "$OUT/logs/hearth-run"
    if start_server hearth "$port" "$HEARTH" serve --model "$MODEL" --addr "127.0.0.1:$port" \
        --device cpu --config "$OUT/logs/hearth-run/hearth.toml"; then
        cd "$REPO"
        bench hearth "$port" agent
        stop_server
    else
        cd "$REPO"
        note "Hearth did not start; see $OUT/logs/hearth.log"
    fi
    if [[ $NO_PREFIX_AGENT == 1 && " $WORKLOADS " == *" agent "* ]]; then
        step "Hearth, agent workload without prefix caching"
        mkdir -p "$OUT/logs/hearth-noprefix-run"
        hearth_toml false >"$OUT/logs/hearth-noprefix-run/hearth.toml"
        cd "$OUT/logs/hearth-noprefix-run"
        if start_server hearth-noprefix "$port" "$HEARTH" serve --model "$MODEL" \
            --addr "127.0.0.1:$port" --device cpu --config "$OUT/logs/hearth-noprefix-run/hearth.toml"; then
            cd "$REPO"
            WORKLOADS=agent bench hearth-noprefix "$port" agent
            stop_server
        else
            cd "$REPO"
            note "Hearth (no prefix caching) did not start; see $OUT/logs/hearth-noprefix.log"
        fi
    fi
fi
port=$((PORT_BASE + 1))
if want llama-cpp; then
    step "llama-server (f32 GGUF, -np $LLAMA_NP, -c $LLAMA_CTX)"
    if start_server llama-server "$port" "$PEERS/llama-cpp.sh" serve "$GGUF/model-f32.gguf" "$port" "$LLAMA_NP"; then
        bench llama-server "$port" agent
        stop_server
    else
        note "llama-server did not start; see $OUT/logs/llama-server.log"
    fi
fi
port=$((PORT_BASE + 2))
if want mistralrs; then
    step "mistral.rs (f32, safetensors folder)"
    if start_server mistralrs "$port" "$PEERS/mistralrs.sh" serve "$MODEL" "$port"; then
        bench mistralrs "$port" agent ${MISTRALRS_LOADGEN_ARGS:-}
        stop_server
    else
        note "mistral.rs did not start; see $OUT/logs/mistralrs.log"
    fi
fi

# ---- 6. q8_0 runs ----
if [[ $QUANT == 1 && " $WORKLOADS " == *" sweep "* ]]; then
    step "q8_0: Hearth's quantized path vs llama-server q8_0"
    # Hearth serves the very GGUF file llama-server gets: a package folder with the model's
    # config and tokenizer and model-q8_0.gguf in place of the safetensors. HEARTH_Q8=onload
    # instead quantizes the safetensors on load (hearth.yaml `quantize: q8_0`; embeddings stay f32).
    port=$((PORT_BASE + 3))
    Q8PKG="$HEARTH_PEERS_DIR/models/smollm2-135m-q8_0-${HEARTH_Q8:-gguf}"
    rm -rf "$Q8PKG"
    mkdir -p "$Q8PKG"
    for f in "$MODEL"/*; do
        [[ $f == *.safetensors || $(basename "$f") == hearth.yaml ]] || ln -s "$f" "$Q8PKG/"
    done
    if [[ ${HEARTH_Q8:-gguf} == onload ]]; then
        ln -s "$MODEL/model.safetensors" "$Q8PKG/"
        printf 'quantize: q8_0\n' >"$Q8PKG/hearth.yaml"
    else
        ln -s "$GGUF/model-q8_0.gguf" "$Q8PKG/model.gguf"
    fi
    if ! want hearth; then
        say "Hearth is not in SERVERS: only llama-server q8_0 runs"
    elif [[ ! -e $GGUF/model-q8_0.gguf && ${HEARTH_Q8:-gguf} != onload ]]; then
        note "no q8_0 GGUF (llama.cpp not converted): Hearth q8_0 skipped"
    else
        mkdir -p "$OUT/logs/hearth-run"
        cd "$OUT/logs/hearth-run"
        if start_server hearth-q8_0 "$port" "$HEARTH" serve --model "$Q8PKG" --addr "127.0.0.1:$port" \
            --device cpu --config "$OUT/logs/hearth-run/hearth.toml"; then
            cd "$REPO"
            bench hearth-q8_0 "$port" no-agent
            stop_server
        else
            cd "$REPO"
            note "Hearth did not load the q8_0 package (${HEARTH_Q8:-gguf}; no quantized path in this build?): Hearth q8_0 skipped; see $OUT/logs/hearth-q8_0.log"
        fi
    fi
    port=$((PORT_BASE + 4))
    if want llama-cpp; then
        if start_server llama-server-q8_0 "$port" "$PEERS/llama-cpp.sh" serve "$GGUF/model-q8_0.gguf" "$port" "$LLAMA_NP"; then
            bench llama-server-q8_0 "$port" no-agent
            stop_server
        else
            note "llama-server q8_0 did not start; see $OUT/logs/llama-server-q8_0.log"
        fi
    fi
fi

fi  # REPORT_ONLY

# ---- 7. compare and summarise ----
step "compare"
# Every run of today's folder takes part, so a later `SERVERS=mistralrs benches/run-serving.sh`
# (say, once its build is done) joins the earlier ones.
have() { for l in "$@"; do [[ -f $OUT/$l/results.json || -f $OUT/$l/agent.json ]] && printf '%s\n' "$OUT/$l"; done; }
mapfile -t RUNS < <(have hearth llama-server mistralrs)
mapfile -t QRUNS < <(have hearth-q8_0 llama-server-q8_0)
mapfile -t AGENTS < <(have hearth-agent hearth-noprefix-agent llama-server-agent mistralrs-agent)
((${#RUNS[@]})) && "$LOADGEN" compare "${RUNS[@]}" --out "$OUT/compare-f32"
((${#QRUNS[@]})) && "$LOADGEN" compare "${QRUNS[@]}" --out "$OUT/compare-q8_0"
weights=$(python3 - "$MODEL" "$GGUF" <<'EOF'
import json, os, struct, sys
model, gguf = sys.argv[1], sys.argv[2]
params = 0
for f in os.listdir(model):
    if f.endswith(".safetensors"):
        with open(os.path.join(model, f), "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        for k, v in header.items():
            if k != "__metadata__":
                n = 1
                for d in v["shape"]:
                    n *= d
                params += n
size = lambda q: os.path.getsize(os.path.join(gguf, f"model-{q}.gguf")) if os.path.exists(os.path.join(gguf, f"model-{q}.gguf")) else None
print(json.dumps({"params": params, "hearth": 4 * params, "mistralrs": 4 * params,
                  "llama-server": size("f32"), "llama-server-q8_0": size("q8_0"),
                  "hearth-q8_0": size("q8_0")}))
EOF
)
python3 "$REPO/benches/peers/summarize.py" --out "$OUT" --weights "$weights" \
    --runs "${RUNS[@]}" "${QRUNS[@]}" --agents "${AGENTS[@]}" >"$OUT/summary.md" \
    || note "summarize.py failed"
{
    echo "# Serving benchmark $(date -u +%Y-%m-%d)"
    echo
    sed 's/^/    /' "$OUT/machine.txt"
    echo
    cat "$OUT/summary.md"
    [[ -s "$OUT/notes.md" ]] && { echo; echo "## Notes"; echo; cat "$OUT/notes.md"; }
    for c in compare-f32 compare-q8_0; do
        [[ -f "$OUT/$c/compare.md" ]] && { echo; echo "## $c"; echo; cat "$OUT/$c/compare.md"; }
    done
} >"$OUT/report.md"
cat "$OUT/report.md"
say "done in $(( ($(date +%s) - T0) / 60 )) min; everything is in $OUT (report.md)"
