#!/usr/bin/env python3
"""Build the Llama-family numerics-parity fixtures for `crates/hearth-engine/tests/parity.rs`.

For each family (llama with llama3 RoPE scaling, mistral with a sliding window, qwen2 with QKV bias
and tied embeddings, qwen3 with QK-norm and an explicit head_dim) this builds a tiny model with
seeded random weights in Hugging Face `transformers`, saves it as a real checkpoint, reloads it from
disk and records the reference logits of a few token sequences:

    crates/hearth-engine/tests/fixtures/<family>/config.json          HF config, as a package ships it
    crates/hearth-engine/tests/fixtures/<family>/model.safetensors    f32 weights (save_pretrained)
    crates/hearth-engine/tests/fixtures/<family>/reference.safetensors
        input_ids.<i>  int64 [len]         token ids of sequence i
        logits.<i>     float32 [len, vocab] model(input_ids).logits, eager attention, float32

The references come from the model *reloaded from the written files*, so they describe exactly
what a loader reading config.json sees. The llama config is rewritten in the legacy layout
(top-level `rope_theta` + `rope_scaling`) that published Llama 3 checkpoints use; the others keep
the layout `save_pretrained` writes (`rope_parameters`), so the parser is checked on both.

Run from the repository root, in a virtual environment outside the repository:

    python3 -m venv /path/to/venv
    /path/to/venv/bin/pip install torch transformers safetensors numpy
    /path/to/venv/bin/python scripts/make_parity_fixtures.py

The output is deterministic for a given torch/transformers version (seeded, CPU, float32).
Last run with: torch 2.15.0, transformers 5.24.0, safetensors 0.8.0, numpy 2.4.6, Python 3.11.
"""

import json
import shutil
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

OUT = Path(__file__).resolve().parent.parent / "crates" / "hearth-engine" / "tests" / "fixtures"
SEQ_LENS = (7, 13, 29)
SEED = 20240607

# Shared tiny shape: several heads with GQA (2 query heads per KV head), head_dim 16 by default.
BASE = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    hidden_act="silu",
    rope_theta=10000.0,
)

FAMILIES = {
    # original_max_position_embeddings 64 with head_dim 16 puts the 8 RoPE frequencies in all three
    # llama3 bands (kept, smoothed, divided by `factor`), so every branch is exercised.
    "llama": dict(
        model_type="llama",
        tie_word_embeddings=False,
        rope_scaling=dict(
            rope_type="llama3",
            factor=4.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=64,
        ),
    ),
    # A window shorter than two of the sequences, so the sliding mask changes the logits.
    "mistral": dict(model_type="mistral", tie_word_embeddings=False, sliding_window=8),
    "qwen2": dict(model_type="qwen2", tie_word_embeddings=True, use_sliding_window=False),
    # head_dim 32 != hidden_size / num_attention_heads (16).
    "qwen3": dict(
        model_type="qwen3",
        tie_word_embeddings=False,
        head_dim=32,
        attention_bias=False,
        use_sliding_window=False,
    ),
}


def randomize(model: torch.nn.Module) -> None:
    """Overwrite every parameter so the logits are far from zero and every weight matters:
    random non-unit norm weights, nonzero biases, matrices wide enough to give varied attention."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.1)
            else:
                p.normal_(0.0, 0.1)


def to_legacy_rope(config_path: Path) -> None:
    """Rewrite `rope_parameters` as top-level `rope_theta` + `rope_scaling`, as published
    Llama 3.x config.json files have it."""
    cfg = json.loads(config_path.read_text())
    params = cfg.pop("rope_parameters")
    cfg["rope_theta"] = params.pop("rope_theta")
    cfg["rope_scaling"] = params
    config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def build(family: str, extra: dict, generator: torch.Generator) -> dict:
    model_type = extra["model_type"]
    kwargs = {**BASE, **{k: v for k, v in extra.items() if k != "model_type"}}
    config = AutoConfig.for_model(model_type, **kwargs)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    randomize(model)

    out = OUT / family
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").unlink(missing_ok=True)
    if family == "llama":
        to_legacy_rope(out / "config.json")

    reloaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager", dtype=torch.float32)
    reloaded.eval()
    tensors = {}
    with torch.no_grad():
        for i, n in enumerate(SEQ_LENS):
            ids = torch.randint(0, config.vocab_size, (n,), generator=generator, dtype=torch.int64)
            logits = reloaded(ids[None, :]).logits[0].to(torch.float32).contiguous()
            tensors[f"input_ids.{i}"] = ids
            tensors[f"logits.{i}"] = logits
    meta = {"torch": torch.__version__, "transformers": transformers.__version__}
    save_file(tensors, out / "reference.safetensors", metadata=meta)
    return {"family": family, "max_abs_logit": max(t.abs().max().item() for k, t in tensors.items() if k.startswith("logits"))}


def main() -> None:
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(SEED)
    for family, extra in FAMILIES.items():
        summary = build(family, extra, generator)
        print(f"{summary['family']:8s} max |logit| = {summary['max_abs_logit']:.3f}")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"fixtures: {total / 1e6:.2f} MB in {OUT}")


if __name__ == "__main__":
    main()
