#!/usr/bin/env bash
# Hearth across replicas, on one machine: two engine daemons and two gateway replicas on
# 127.0.0.1, sharing a Redis of the script's own and the local PostgreSQL (a fresh schema),
# behind Debian's nginx (round-robin over the gateways). Runs the demonstrations of
# docs/operations.md (scripts/replicas_demo.py), prints what it saw, and exits 0 only if every
# one held. It stops everything it started.
#
#   scripts/replicas.sh            # builds the release binary first
#   HEARTH_BIN=target/debug/hearth scripts/replicas.sh
set -euo pipefail
cd "$(dirname "$0")/.."

POSTGRES_URL=${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
scripts/services.sh
if ! command -v nginx >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
fi
if [ -z "${HEARTH_BIN:-}" ]; then
    echo "building hearth (release)..." >&2
    cargo build --release -p hearth-cli --quiet
fi
HEARTH=$(realpath "${HEARTH_BIN:-target/release/hearth}")

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    set +e
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    # Gateways the demonstrations restarted.
    for file in "$WORK"/gateway-*.pid; do kill "$(cat "$file")" 2>/dev/null; done
    [ -f "$WORK/redis.pid" ] && kill "$(cat "$WORK/redis.pid")" 2>/dev/null
    [ -n "${SCHEMA:-}" ] && psql "$POSTGRES_URL" -qc "DROP SCHEMA $SCHEMA CASCADE" 2>/dev/null
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
REDIS_PORT=$(free_port)
E1=$(free_port); E2=$(free_port); G1=$(free_port); G2=$(free_port); LB=$(free_port)

# A Redis of our own, so the outage demonstration stops no one else's.
start_redis() {
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
        --daemonize yes --pidfile "$WORK/redis.pid" --logfile "$WORK/redis.log"
    for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && return; sleep 0.1; done
    echo "error: redis-server did not start" >&2; exit 1
}
start_redis

SCHEMA="replicas_$(date +%s)_$$"
psql "$POSTGRES_URL" -qc "CREATE SCHEMA $SCHEMA"
mkdir -p "$WORK/models"

for port in "$E1" "$E2"; do
    HEARTH_LOG=warn "$HEARTH" serve --model models/tiny-llama --addr "127.0.0.1:$port" \
        2> "$WORK/engine-$port.log" &
    PIDS+=($!)
done

cat > "$WORK/gateway.toml" <<TOML
[state]
redis_url = "redis://127.0.0.1:$REDIS_PORT"
lease_ms = 1500
limits_on_redis_error = "open"

[ledger]
postgres_url = "$POSTGRES_URL?options=-c%20search_path%3D$SCHEMA"

[[providers]]
name = "engines"
kind = "hearth"
base_urls = ["http://127.0.0.1:$E1/v1", "http://127.0.0.1:$E2/v1"]

[[providers]]
name = "engines-rr"
kind = "hearth"
base_urls = ["http://127.0.0.1:$E1/v1", "http://127.0.0.1:$E2/v1"]
placement = "round-robin"

[[models]]
id = "agent"
routes = ["engines/tiny-llama"]

# The same engines, priced, for the spend budget below.
[[models]]
id = "agent-priced"
routes = ["engines/tiny-llama"]
input_price_per_mtok = 100
output_price_per_mtok = 20000

[[models]]
id = "agent-rr"
routes = ["engines-rr/tiny-llama"]

[[limits]]
name = "limited-team"
scope = "metadata.team=limited"
requests_per_minute = 100

[[limits]]
name = "budget-team"
scope = "metadata.team=budget"
spend_per_day = 1
TOML

start_gateway() { # port
    HEARTH_LOG=warn "$HEARTH" serve --models "$WORK/models" --config "$WORK/gateway.toml" \
        --addr "127.0.0.1:$1" 2>> "$WORK/gateway-$1.log" &
    echo $! > "$WORK/gateway-$1.pid"
    PIDS+=($!)
}
start_gateway "$G1"
start_gateway "$G2"

cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK;
    proxy_temp_path $WORK;
    upstream gateways {
        server 127.0.0.1:$G1 max_fails=1 fail_timeout=5s;
        server 127.0.0.1:$G2 max_fails=1 fail_timeout=5s;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$LB;
        location / {
            proxy_pass http://gateways;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
            proxy_next_upstream error timeout http_502;
        }
    }
}
NGINX
nginx -c "$WORK/nginx.conf" -p "$WORK" &
PIDS+=($!)

for port in "$E1" "$E2" "$G1" "$G2" "$LB"; do
    for try in $(seq 600); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.2; done
    if [ "$try" = 600 ]; then
        echo "error: nothing answers on 127.0.0.1:$port; logs in $WORK" >&2
        tail -5 "$WORK"/*.log >&2 || true
        exit 1
    fi
done
echo "engines :$E1 :$E2, gateways :$G1 :$G2, nginx :$LB, redis :$REDIS_PORT, schema $SCHEMA" >&2

export HEARTH_DEMO_LB="http://127.0.0.1:$LB" HEARTH_DEMO_G1="http://127.0.0.1:$G1" \
    HEARTH_DEMO_G2="http://127.0.0.1:$G2" HEARTH_DEMO_WORK="$WORK" \
    HEARTH_DEMO_REDIS_PORT="$REDIS_PORT" HEARTH_DEMO_G1_PORT="$G1"
export -f start_gateway start_redis
export HEARTH WORK REDIS_PORT
python3 scripts/replicas_demo.py
