#!/usr/bin/env python3
"""Build the Llama-family numerics-parity fixtures for `crates/hearth-engine/tests/parity.rs`.

For each family (llama with llama3 RoPE scaling, mistral with a sliding window, qwen2 with QKV bias
and tied embeddings, qwen3 with QK-norm and an explicit head_dim, gemma2 with soft caps and
alternating sliding layers, gemma3 with QK-norm and a RoPE per layer kind) this builds a tiny model with
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
    /path/to/venv/bin/python scripts/make_parity_fixtures.py [FAMILY ...]

With family names, only those fixtures are rewritten (the others are still built, in a scratch
directory, so that every family draws the same random numbers as in a full run).

The output is deterministic for a given torch/transformers version (seeded, CPU, float32).
Last run with: torch 2.15.0, transformers 5.24.0, safetensors 0.8.0, numpy 2.4.6, Python 3.11.
"""

import json
import sys
import tempfile
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
    # Gemma 2: sliding (layer 0) and global (layer 1) attention, soft caps low enough to bend
    # the scores and logits, a query scalar that is not head_dim, GeLU, tied embeddings.
    "gemma2": dict(
        model_type="gemma2",
        tie_word_embeddings=True,
        head_dim=16,
        query_pre_attn_scalar=24,
        attn_logit_softcapping=2.0,
        final_logit_softcapping=5.0,
        sliding_window=8,
        hidden_activation="gelu_pytorch_tanh",
    ),
    # Gemma 3 (text): QK norms, a RoPE per layer kind (the global one linearly scaled), three
    # layers so that sliding ones surround a global one.
    "gemma3": dict(
        model_type="gemma3_text",
        tie_word_embeddings=True,
        num_hidden_layers=3,
        head_dim=16,
        query_pre_attn_scalar=24,
        sliding_window=8,
        sliding_window_pattern=2,
        hidden_activation="gelu_pytorch_tanh",
        rope_parameters={
            "full_attention": dict(rope_type="linear", factor=2.0, rope_theta=100000.0),
            "sliding_attention": dict(rope_type="default", rope_theta=10000.0),
        },
    ),
    # Phi-3: fused QKV and gate-up projections; LongRoPE over three quarters of each head
    # (Phi-4-mini's partial rotation), switching to the long factors for the 29-token sequence
    # (longer than original_max_position_embeddings), the attention factor from 128 / 16.
    "phi3": dict(
        model_type="phi3",
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        sliding_window=10,
        partial_rotary_factor=0.75,
        original_max_position_embeddings=16,
        rope_scaling=dict(
            type="longrope",
            short_factor=[1.0, 1.1, 1.3, 1.7, 2.0, 2.5],
            long_factor=[1.2, 1.9, 3.1, 4.6, 6.3, 9.0],
        ),
    ),
    # Mixtral: 4 experts, top 2 renormalized, over a Mistral decoder with a window.
    "mixtral": dict(
        model_type="mixtral",
        tie_word_embeddings=False,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=8,
    ),
    # Qwen2-MoE: top 2 of 4 without renormalization, a gated shared expert, and layer 1 dense
    # (mlp_only_layers).
    "qwen2_moe": dict(
        model_type="qwen2_moe",
        tie_word_embeddings=False,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=48,
        norm_topk_prob=False,
        mlp_only_layers=[1],
        use_sliding_window=False,
    ),
    # Qwen3-MoE: top 3 of 6, renormalized, over a Qwen3 decoder (QK norms).
    "qwen3_moe": dict(
        model_type="qwen3_moe",
        tie_word_embeddings=False,
        num_experts=6,
        num_experts_per_tok=3,
        moe_intermediate_size=32,
        norm_topk_prob=True,
        head_dim=16,
        use_sliding_window=False,
    ),
}

# Keys of BASE that a family's config does not take.
NOT_TAKEN = {"gemma2": {"hidden_act", "rope_theta"}, "gemma3": {"hidden_act", "rope_theta"}}


def randomize(model: torch.nn.Module, norm_offset: float) -> None:
    """Overwrite every parameter so the logits are far from zero and every weight matters:
    random non-unit norm weights, nonzero biases, matrices wide enough to give varied attention.
    Norms scale by 0.5–1.5 in every family: Gemma's multiply by `1 + weight`, so theirs are
    drawn `norm_offset` = 1 lower. MoE routers (`….gate.weight`) are drawn ten times wider, so
    that routing is decided as a trained router's is, not by near-ties that any rounding (a
    quantized layer before it) would flip."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5 - norm_offset, 1.5 - norm_offset)
            elif name.endswith(".gate.weight"):
                p.normal_(0.0, 1.0)
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


def build(family: str, extra: dict, generator: torch.Generator, write: bool = True) -> dict:
    model_type = extra["model_type"]
    base = {k: v for k, v in BASE.items() if k not in NOT_TAKEN.get(family, ())}
    kwargs = {**base, **{k: v for k, v in extra.items() if k != "model_type"}}
    config = AutoConfig.for_model(model_type, **kwargs)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    randomize(model, norm_offset=1.0 if model_type.startswith("gemma") else 0.0)

    out = OUT / family if write else Path(tempfile.mkdtemp()) / family
    # Only this script's own files: `llama-cpp/` beside them is make_llama_cpp_fixtures.py's.
    for name in ("config.json", "model.safetensors", "reference.safetensors"):
        (out / name).unlink(missing_ok=True)
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
    # Families named on the command line are written; the others are built (the random streams
    # stay as in a full run) and dropped.
    wanted = set(sys.argv[1:]) or set(FAMILIES)
    unknown = wanted - set(FAMILIES)
    if unknown:
        sys.exit(f"unknown families {sorted(unknown)}; known: {sorted(FAMILIES)}")
    for family, extra in FAMILIES.items():
        if family not in wanted:
            build(family, extra, generator, write=False)
            continue
        summary = build(family, extra, generator)
        print(f"{summary['family']:8s} max |logit| = {summary['max_abs_logit']:.3f}")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"fixtures: {total / 1e6:.2f} MB in {OUT}")


if __name__ == "__main__":
    main()
