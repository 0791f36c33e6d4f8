#!/usr/bin/env bash
# Routing overhead: the latency Hearth adds on loopback in front of a fast fake upstream, and
# the throughput it sustains, with the spend ledger on.
#
# The upstream is nginx returning a fixed OpenAI chat-completion stream. The load tool is wrk,
# with chat.lua POSTing a streamed chat request. One run measures, side by side:
#   1. at about RATE req/s (Poisson arrivals over 10 connections) the latency of: nginx
#      directly; two floors, nginx proxying to itself (a lean C proxy) and a bare forwarder on
#      Hearth's own HTTP stack (`benches/gateway/forwarder`: axum + reqwest, no parsing, no run,
#      no ledger); and Hearth. What each adds is its difference from the direct call;
#   2. nginx directly and Hearth unpaced with CONNECTIONS connections: the most requests a
#      second, and errors;
#   3. that the ledger holds one record per request Hearth answered;
#   4. during the unpaced runs, the CPU time each process spent per request (Hearth, and for
#      the shared-state Hearth also Redis and PostgreSQL), which is what decides the rate on a
#      machine where all of them share the cores.
# With SHARED=1 (the default) a second Hearth runs beside the first with its run buffers in
# Redis and its ledger in PostgreSQL (REDIS_URL, POSTGRES_URL: the local servers by default,
# the ledger in a fresh schema), measured in the same rounds and unpaced, so what shared state
# costs is the difference between the two Hearth rows.
# It installs what it needs (Debian's nginx and wrk), builds the release binaries, starts
# everything on 127.0.0.1, stops it all when done, and prints the numbers and the machine.
#
# Knobs (environment): RATE (1000), PACED_SECS (20), MAX_SECS (15), CONNECTIONS (32),
# THREADS (2), WARMUP_SECS (3), ROUNDS (1: the paced measurements repeated, interleaved),
# HEARTH_BIN and FORWARDER_BIN (release binaries to use instead of building them).
set -euo pipefail
cd "$(dirname "$0")/../.."

RATE=${RATE:-1000}
PACED_SECS=${PACED_SECS:-20}
MAX_SECS=${MAX_SECS:-15}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
WARMUP_SECS=${WARMUP_SECS:-3}
ROUNDS=${ROUNDS:-1}
SHARED=${SHARED:-1}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
POSTGRES_URL=${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
PACED_CONNECTIONS=10

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk >/dev/null
fi
if [ -z "${HEARTH_BIN:-}" ] || [ -z "${FORWARDER_BIN:-}" ]; then
    cargo build --release -p hearth-cli -p hearth-bench-forwarder --quiet
fi
HEARTH=${HEARTH_BIN:-$PWD/target/release/hearth}
FORWARDER=${FORWARDER_BIN:-$PWD/target/release/forwarder}

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [ -n "${SCHEMA:-}" ]; then psql "$POSTGRES_URL" -qc "DROP SCHEMA $SCHEMA CASCADE" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UPSTREAM_PORT=$(free_port)
PROXY_PORT=$(free_port)
FORWARDER_PORT=$(free_port)
HEARTH_PORT=$(free_port)
SHARED_PORT=$(free_port)

# The upstream's answer: a role chunk, three content chunks, the finish chunk, usage, [DONE].
chunk() { printf 'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-fake","choices":[{"index":0,"delta":%s,"finish_reason":%s}]}\\n\\n' "$1" "$2"; }
BODY="$(chunk '{"role":"assistant","content":""}' null)$(chunk '{"content":"Hello"}' null)$(chunk '{"content":" from"}' null)$(chunk '{"content":" nginx"}' null)$(chunk '{}' '"stop"')"
BODY+='data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-fake","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14}}\n\ndata: [DONE]\n\n'

mkdir -p "$WORK/nginx" "$WORK/models"
cat > "$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$UPSTREAM_PORT;
        location /v1/chat/completions {
            default_type text/event-stream;
            return 200 '$BODY';
        }
    }
    # The C floor: the same worker proxying to the server above over kept-alive connections,
    # passing the stream on as it arrives.
    upstream fake {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$PROXY_PORT;
        location / {
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
PIDS+=($!)
"$FORWARDER" --listen "127.0.0.1:$FORWARDER_PORT" \
    --upstream "http://127.0.0.1:$UPSTREAM_PORT/v1/chat/completions" &
PIDS+=($!)

cat > "$WORK/hearth.toml" <<EOF
[gateway]
ledger_path = "$WORK/ledger.sqlite"

[[providers]]
name = "up"
kind = "openai-compatible"
base_url = "http://127.0.0.1:$UPSTREAM_PORT/v1"

[[models]]
id = "bench"
routes = ["up/gpt-fake"]
input_price_per_mtok = 0.15
output_price_per_mtok = 0.6
EOF
HEARTH_LOG=${HEARTH_LOG:-info} "$HEARTH" serve --models "$WORK/models" --config "$WORK/hearth.toml" \
    --addr "127.0.0.1:$HEARTH_PORT" 2> "$WORK/hearth.log" &
PIDS+=($!)
HEARTH_PID=$!

TARGETS=()
SHARED_URL=none
if [ "$SHARED" = 1 ]; then
    scripts/services.sh
    SCHEMA="bench_$(date +%s)_$$"
    psql "$POSTGRES_URL" -qc "CREATE SCHEMA $SCHEMA"
    { sed '/^\[gateway\]/,/^$/d' "$WORK/hearth.toml"
      printf '[state]\nredis_url = "%s"\nkey_prefix = "%s:"\n\n' "$REDIS_URL" "$SCHEMA"
      printf '[ledger]\npostgres_url = "%s?options=-c%%20search_path%%3D%s"\n' "$POSTGRES_URL" "$SCHEMA"
    } > "$WORK/shared.toml"
    HEARTH_LOG=${HEARTH_LOG:-info} "$HEARTH" serve --models "$WORK/models" --config "$WORK/shared.toml" \
        --addr "127.0.0.1:$SHARED_PORT" 2> "$WORK/shared.log" &
    PIDS+=($!)
    SHARED_PID=$!
    SHARED_URL="http://127.0.0.1:$SHARED_PORT/v1/chat/completions"
    TARGETS+=("**Hearth, Redis runs + PostgreSQL ledger**|$SHARED_URL")
fi

DIRECT="http://127.0.0.1:$UPSTREAM_PORT/v1/chat/completions"
PROXY="http://127.0.0.1:$PROXY_PORT/v1/chat/completions"
BARE="http://127.0.0.1:$FORWARDER_PORT/v1/chat/completions"
THROUGH="http://127.0.0.1:$HEARTH_PORT/v1/chat/completions"
LUA=benches/gateway/chat.lua

for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$HEARTH_PORT/health" >/dev/null &&
        { [ "$SHARED" != 1 ] || curl -sf "http://127.0.0.1:$SHARED_PORT/health" >/dev/null; } &&
        curl -sf -o /dev/null -X POST "$DIRECT" && curl -sf -o /dev/null -X POST "$PROXY" &&
        curl -sf -o /dev/null -X POST "$BARE" && break
    sleep 0.1
done

# wrk_json URL SECS CONNECTIONS RATE: one wrk run, its BENCH line's JSON.
wrk_json() {
    RATE=$4 CONNECTIONS=$3 wrk -t"$THREADS" -c"$3" -d"$2"s -s "$LUA" "$1" | sed -n 's/^BENCH //p'
}
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
errors() { echo $(( $(field "$1" non_2xx) + $(field "$1" socket_errors) + $(field "$1" incomplete) )); }
# cpu_ticks PID...: user + system CPU time the processes have used, in clock ticks.
cpu_ticks() {
    local total=0 pid
    for pid in "$@"; do
        [ -r "/proc/$pid/stat" ] || continue
        total=$(( total + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}') ))
    done
    echo "$total"
}
# cpu_us TICKS REQUESTS: microseconds of CPU per request.
cpu_us() { python3 -c "import os,sys; print(round(int(sys.argv[1]) * 1e6 / os.sysconf('SC_CLK_TCK') / max(1, int(sys.argv[2]))))" "$1" "$2"; }
ms() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 1000:.3f}')" "$1"; }
added() { python3 -c "import sys; print(f'{(int(sys.argv[1]) - int(sys.argv[2])) / 1000:+.3f}')" "$1" "$2"; }

echo "warming up ($WARMUP_SECS s each)..." >&2
for url in "$DIRECT" "$PROXY" "$BARE" "$THROUGH" "${TARGETS[@]#*|}"; do
    wrk_json "$url" "$WARMUP_SECS" 8 0 >/dev/null
done

ledger_count() { # port
    curl -sf "http://127.0.0.1:${1:-$HEARTH_PORT}/v1/usage?group_by=model" |
        python3 -c "import json,sys; print(sum(g['requests'] for g in json.load(sys.stdin)['data']))"
}
ledger_before=$(ledger_count)
shared_before=0
[ "$SHARED" = 1 ] && shared_before=$(ledger_count "$SHARED_PORT")
shared_sent=0

# One row per round and target; the targets take turns, so a slow spell of the machine does not
# fall on one of them alone.
paced_rows=""
hearth_sent=0
for round in $(seq "$ROUNDS"); do
    echo "round $round of $ROUNDS: about $RATE req/s ($PACED_SECS s each)..." >&2
    direct=$(wrk_json "$DIRECT" "$PACED_SECS" "$PACED_CONNECTIONS" "$RATE")
    for target in "nginx directly|$DIRECT" "nginx as a proxy (C floor)|$PROXY" \
        "bare axum + reqwest forwarder (stack floor)|$BARE" "**Hearth**|$THROUGH" "${TARGETS[@]}"; do
        name=${target%%|*}
        url=${target#*|}
        if [ "$url" = "$DIRECT" ]; then result=$direct; else
            result=$(wrk_json "$url" "$PACED_SECS" "$PACED_CONNECTIONS" "$RATE")
        fi
        [ "$url" = "$THROUGH" ] && hearth_sent=$(( hearth_sent + $(field "$result" requests) ))
        [ "$url" = "$SHARED_URL" ] && shared_sent=$(( shared_sent + $(field "$result" requests) ))
        row="| $round | $name | $(field "$result" rps)"
        for p in p50_us p90_us p99_us p999_us; do row+=" | $(ms "$(field "$result" $p)")"; done
        for p in p50_us p99_us; do
            if [ "$url" = "$DIRECT" ]; then row+=" | "; else
                row+=" | $(added "$(field "$result" $p)" "$(field "$direct" $p)")"
            fi
        done
        paced_rows+="$row | $(errors "$result") |"$'\n'
    done
done

echo "unpaced, $CONNECTIONS connections ($MAX_SECS s each)..." >&2
max_direct=$(wrk_json "$DIRECT" "$MAX_SECS" "$CONNECTIONS" 0)
before=$(cpu_ticks "$HEARTH_PID")
max_hearth=$(wrk_json "$THROUGH" "$MAX_SECS" "$CONNECTIONS" 0)
cpu_rows="| Hearth | $(cpu_us $(( $(cpu_ticks "$HEARTH_PID") - before )) "$(field "$max_hearth" requests)") | | |"
hearth_sent=$(( hearth_sent + $(field "$max_hearth" requests) ))
max_shared_row=""
if [ "$SHARED" = 1 ]; then
    # PostgreSQL's processes (its backends included) as they are at the start: the ledger's
    # pool holds its connections open.
    redis_pids=$(pgrep -x redis-server | xargs)
    postgres_pids=$(pgrep -x postgres | xargs)
    # shellcheck disable=SC2086 # the pid lists split into words on purpose
    before=("$(cpu_ticks "$SHARED_PID")" "$(cpu_ticks $redis_pids)" "$(cpu_ticks $postgres_pids)")
    max_shared=$(wrk_json "http://127.0.0.1:$SHARED_PORT/v1/chat/completions" "$MAX_SECS" "$CONNECTIONS" 0)
    # shellcheck disable=SC2086
    after=("$(cpu_ticks "$SHARED_PID")" "$(cpu_ticks $redis_pids)" "$(cpu_ticks $postgres_pids)")
    served=$(field "$max_shared" requests)
    cpu_rows+=$'\n'"| Hearth, Redis runs + PostgreSQL ledger | $(cpu_us $(( after[0] - before[0] )) "$served") | $(cpu_us $(( after[1] - before[1] )) "$served") | $(cpu_us $(( after[2] - before[2] )) "$served") |"
    shared_sent=$(( shared_sent + $(field "$max_shared" requests) ))
    max_shared_row="| Hearth, Redis runs + PostgreSQL ledger | $(field "$max_shared" rps) | $(ms "$(field "$max_shared" p50_us)") | $(ms "$(field "$max_shared" p99_us)") | $(errors "$max_shared") |"
fi

# Every request Hearth answered has its ledger record once the runs have ended (a usage query
# flushes the ledger's queue). wrk also cuts up to one request per connection at the end of a
# run; Hearth finishes and records those too.
sleep 1
ledger=$(( $(ledger_count) - ledger_before ))
shared_line=""
if [ "$SHARED" = 1 ]; then
    shared_ledger=$(( $(ledger_count "$SHARED_PORT") - shared_before ))
    shared_line="PostgreSQL ledger: $shared_ledger records for $shared_sent requests wrk completed through the shared-state Hearth."
fi

cat <<EOF

## Routing overhead ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))

About $RATE req/s (Poisson arrivals), $PACED_CONNECTIONS connections, $PACED_SECS s each:

| round | target | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | added p50 | added p99 | errors |
|---|---|---|---|---|---|---|---|---|---|
${paced_rows}
Unpaced, $CONNECTIONS connections, $THREADS wrk threads, $MAX_SECS s:

| | req/s | p50 ms | p99 ms | errors |
|---|---|---|---|---|
| nginx directly | $(field "$max_direct" rps) | $(ms "$(field "$max_direct" p50_us)") | $(ms "$(field "$max_direct" p99_us)") | $(errors "$max_direct") |
| Hearth | $(field "$max_hearth" rps) | $(ms "$(field "$max_hearth" p50_us)") | $(ms "$(field "$max_hearth" p99_us)") | $(errors "$max_hearth") |
$max_shared_row

CPU time per request during those unpaced runs, in microseconds:

| | Hearth | Redis | PostgreSQL |
|---|---|---|---|
$cpu_rows

Ledger: $ledger records written for $hearth_sent requests wrk completed through Hearth (wrk abandons up
to one request per connection in flight when a run ends; Hearth finishes and records those too).
$shared_line
Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg).
EOF
