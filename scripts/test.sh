#!/usr/bin/env bash
# The whole test suite: every Rust test (unit, parity, end-to-end against the real binary), then
# the official client libraries against a running daemon, and the Cog conformance suite (Hearth
# beside Cog's own server on the same predictors).
set -euo pipefail
cd "$(dirname "$0")/.."

# Shared-state tests talk to PostgreSQL and Redis on 127.0.0.1; start them if they stopped.
scripts/services.sh
cargo test --workspace

# The dashboard's browser test drives Debian's chromium (Playwright's own browsers are never
# downloaded).
if ! command -v chromium >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

# Client-library tests need Python packages; they go into a project-local virtualenv.
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/clients/requirements.txt
HEARTH_BIN="$PWD/target/debug/hearth" .venv/bin/python -m pytest tests/clients tests/conformance -q
