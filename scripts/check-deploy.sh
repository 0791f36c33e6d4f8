#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/kubernetes/ against Kubernetes' own schemas for
# the pinned version, rejecting unknown fields. (That each ConfigMap's hearth.toml parses, and
# that pods get longer to stop than the daemon's shutdown grace, is checked by `cargo test`:
# crates/hearth-cli/src/deploy_check.rs.)
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VERSION=1.31.0

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r deploy/requirements.txt
.venv/bin/kubernetes-validate --strict --quiet -k "$KUBERNETES_VERSION" deploy/kubernetes/*.yaml
echo "deploy/kubernetes: valid for Kubernetes $KUBERNETES_VERSION" >&2
