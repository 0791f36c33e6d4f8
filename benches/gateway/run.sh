#!/usr/bin/env bash
# Routing overhead: the latency Hearth adds on loopback in front of a fast fake upstream, and
# the throughput it sustains, with the spend ledger on.
#
# The upstream is nginx returning a fixed OpenAI chat-completion stream. The load tool is wrk,
# with chat.lua POSTing a streamed chat request. One run measures, side by side:
#   1. direct to nginx at RATE req/s (paced), then through Hearth at the same rate: p50/p99,
#      and the difference, which is what Hearth adds;
#   2. both unpaced with CONNECTIONS connections: the most requests a second, and errors;
#   3. that the ledger holds one record per request Hearth answered.
# It installs what it needs (Debian's nginx and wrk), builds the release binary, starts
# everything on 127.0.0.1, stops it all when done, and prints the numbers and the machine.
#
# Knobs (environment): RATE (1000), PACED_SECS (20), MAX_SECS (15), CONNECTIONS (32),
# THREADS (2), WARMUP_SECS (3), HEARTH_BIN (a release binary to use instead of building one).
set -euo pipefail
cd "$(dirname "$0")/../.."

RATE=${RATE:-1000}
PACED_SECS=${PACED_SECS:-20}
MAX_SECS=${MAX_SECS:-15}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
WARMUP_SECS=${WARMUP_SECS:-3}
PACED_CONNECTIONS=10

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk >/dev/null
fi
if [ -z "${HEARTH_BIN:-}" ]; then
    cargo build --release -p hearth-cli --quiet
fi
HEARTH=${HEARTH_BIN:-$PWD/target/release/hearth}

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UPSTREAM_PORT=$(free_port)
HEARTH_PORT=$(free_port)

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
}
EOF
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
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

for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$HEARTH_PORT/health" >/dev/null && \
        curl -sf -o /dev/null -X POST "http://127.0.0.1:$UPSTREAM_PORT/v1/chat/completions" && break
    sleep 0.1
done

DIRECT="http://127.0.0.1:$UPSTREAM_PORT/v1/chat/completions"
THROUGH="http://127.0.0.1:$HEARTH_PORT/v1/chat/completions"
LUA=benches/gateway/chat.lua

# wrk_json URL SECS CONNECTIONS RATE: one wrk run, its BENCH line's JSON.
wrk_json() {
    RATE=$4 CONNECTIONS=$3 wrk -t"$THREADS" -c"$3" -d"$2"s -s "$LUA" "$1" | sed -n 's/^BENCH //p'
}
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

echo "warming up ($WARMUP_SECS s each)..." >&2
wrk_json "$DIRECT" "$WARMUP_SECS" 8 0 >/dev/null
wrk_json "$THROUGH" "$WARMUP_SECS" 8 0 >/dev/null

ledger_count() {
    curl -sf "http://127.0.0.1:$HEARTH_PORT/v1/usage?group_by=model" |
        python3 -c "import json,sys; print(sum(g['requests'] for g in json.load(sys.stdin)['data']))"
}
ledger_before=$(ledger_count)

echo "paced at $RATE req/s ($PACED_SECS s each)..." >&2
paced_direct=$(wrk_json "$DIRECT" "$PACED_SECS" "$PACED_CONNECTIONS" "$RATE")
paced_hearth=$(wrk_json "$THROUGH" "$PACED_SECS" "$PACED_CONNECTIONS" "$RATE")
echo "unpaced, $CONNECTIONS connections ($MAX_SECS s each)..." >&2
max_direct=$(wrk_json "$DIRECT" "$MAX_SECS" "$CONNECTIONS" 0)
max_hearth=$(wrk_json "$THROUGH" "$MAX_SECS" "$CONNECTIONS" 0)

# Every request Hearth answered has its ledger record once the runs have ended (a usage query
# flushes the ledger's queue). wrk also cuts up to one request per connection at the end of a
# run; Hearth finishes and records those too.
sent=$(python3 -c "import json,sys; print(sum(json.loads(a)['requests'] for a in sys.argv[1:]))" \
    "$paced_hearth" "$max_hearth")
sleep 1
ledger=$(( $(ledger_count) - ledger_before ))

ms() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 1000:.3f}')" "$1"; }
added() { python3 -c "import sys; print(f'{(int(sys.argv[1]) - int(sys.argv[2])) / 1000:.3f}')" "$1" "$2"; }

cat <<EOF

## Routing overhead ($(date -u +%Y-%m-%d), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))

Paced at $RATE req/s, $PACED_CONNECTIONS connections, $PACED_SECS s:

| | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors |
|---|---|---|---|---|---|---|
| direct to nginx | $(field "$paced_direct" rps) | $(ms "$(field "$paced_direct" p50_us)") | $(ms "$(field "$paced_direct" p90_us)") | $(ms "$(field "$paced_direct" p99_us)") | $(ms "$(field "$paced_direct" p999_us)") | $(( $(field "$paced_direct" non_2xx) + $(field "$paced_direct" socket_errors) + $(field "$paced_direct" incomplete) )) |
| through Hearth | $(field "$paced_hearth" rps) | $(ms "$(field "$paced_hearth" p50_us)") | $(ms "$(field "$paced_hearth" p90_us)") | $(ms "$(field "$paced_hearth" p99_us)") | $(ms "$(field "$paced_hearth" p999_us)") | $(( $(field "$paced_hearth" non_2xx) + $(field "$paced_hearth" socket_errors) + $(field "$paced_hearth" incomplete) )) |
| **added by Hearth** | | **$(added "$(field "$paced_hearth" p50_us)" "$(field "$paced_direct" p50_us)")** | $(added "$(field "$paced_hearth" p90_us)" "$(field "$paced_direct" p90_us)") | **$(added "$(field "$paced_hearth" p99_us)" "$(field "$paced_direct" p99_us)")** | $(added "$(field "$paced_hearth" p999_us)" "$(field "$paced_direct" p999_us)") | |

Unpaced, $CONNECTIONS connections, $THREADS wrk threads, $MAX_SECS s:

| | req/s | p50 ms | p99 ms | errors |
|---|---|---|---|---|
| direct to nginx | $(field "$max_direct" rps) | $(ms "$(field "$max_direct" p50_us)") | $(ms "$(field "$max_direct" p99_us)") | $(( $(field "$max_direct" non_2xx) + $(field "$max_direct" socket_errors) + $(field "$max_direct" incomplete) )) |
| through Hearth | $(field "$max_hearth" rps) | $(ms "$(field "$max_hearth" p50_us)") | $(ms "$(field "$max_hearth" p99_us)") | $(( $(field "$max_hearth" non_2xx) + $(field "$max_hearth" socket_errors) + $(field "$max_hearth" incomplete) )) |

Ledger: $ledger records written for $sent requests wrk completed through Hearth (wrk abandons up to
$(( PACED_CONNECTIONS + CONNECTIONS )) more in flight when its runs end; Hearth finishes and records those too).
Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg).
EOF
