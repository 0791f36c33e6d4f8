#!/usr/bin/env bash
# Hearth's Python bridge against coglet (Cog's own server), side by side: see bench.py.
# Builds the release binary and a virtualenv with Cog's SDK and coglet (from PyPI) first.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p hearth-cli
venv=target/bench-cog-venv
if [ ! -x "$venv/bin/python" ]; then
    python3.11 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "cog==0.23.1"
fi
exec "$venv/bin/python" benches/python-bridge/bench.py --hearth "$PWD/target/release/hearth" --python "$PWD/$venv/bin/python" "$@"
