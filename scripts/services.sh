#!/usr/bin/env bash
# Makes sure the PostgreSQL (127.0.0.1:5432, database `test`) and Redis (127.0.0.1:6379) that
# the shared-state tests use answer, starting a local one that has stopped. Exits non-zero,
# naming the service, when one cannot be brought up.
set -euo pipefail

answers() { # host port
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

redis_ok() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
postgres_ok() {
    if command -v pg_isready >/dev/null; then
        pg_isready -q -h 127.0.0.1 -p 5432
    else
        answers 127.0.0.1 5432
    fi
}

wait_for() { # name check
    for _ in $(seq 1 60); do
        if "$2"; then return 0; fi
        sleep 0.5
    done
    echo "error: $1 does not answer on 127.0.0.1 after starting it" >&2
    return 1
}

if ! redis_ok; then
    echo "Redis is not answering on 127.0.0.1:6379; starting it" >&2
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_for Redis redis_ok
fi

if ! postgres_ok; then
    echo "PostgreSQL is not answering on 127.0.0.1:5432; starting it" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
    wait_for PostgreSQL postgres_ok
fi

# The tests connect as postgres to the database `test`.
if command -v psql >/dev/null && ! psql -h 127.0.0.1 -U postgres -d test -Atc 'SELECT 1' >/dev/null 2>&1; then
    echo "error: PostgreSQL answers, but not as user postgres on database test" >&2
    exit 1
fi
echo "Redis and PostgreSQL answer on 127.0.0.1" >&2
