#!/usr/bin/env python3
"""Build the LoRA parity fixtures for `crates/hearth-engine/tests/lora.rs`.

Three PEFT LoRA adapters over the `llama` parity checkpoint (made by make_parity_fixtures.py),
with seeded random A and B matrices (PEFT starts B at zero, which would make every adapter a
no-op), each different in what it exercises:

    attn-r4         r=4, alpha 8, q_proj and v_proj
    all-r8-rslora   r=8, alpha 16, every attention and MLP projection, rsLoRA scaling (alpha/√r)
    mlp-r2-pattern  r=2, alpha 4, o_proj, up_proj and down_proj, with rank_pattern (up_proj r=6)
                    and alpha_pattern (down_proj alpha 12)

For each, written to crates/hearth-engine/tests/fixtures/llama/adapters/<name>/:

    adapter_config.json, adapter_model.safetensors   as PEFT's save_pretrained writes them
    reference.safetensors   logits.<i> float32 [len, vocab]: the base model with the adapter
                            merged (merge_and_unload), eager attention, float32, for the same
                            token sequences as the base fixture's reference.safetensors

Run from the repository root, in a virtual environment outside the repository:

    /path/to/venv/bin/pip install torch transformers peft safetensors numpy
    /path/to/venv/bin/python scripts/make_lora_fixtures.py

Deterministic for a given torch/transformers/peft version (seeded, CPU, float32).
Last run with: torch 2.15.0, transformers 5.25.0, peft 0.21.2, Python 3.11.
"""

import shutil
from pathlib import Path

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

BASE = Path(__file__).resolve().parent.parent / "crates" / "hearth-engine" / "tests" / "fixtures" / "llama"
SEED = 20241105
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTERS = {
    "attn-r4": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "all-r8-rslora": dict(r=8, lora_alpha=16, target_modules=ALL, use_rslora=True),
    "mlp-r2-pattern": dict(
        r=2,
        lora_alpha=4,
        target_modules=["o_proj", "up_proj", "down_proj"],
        rank_pattern={"up_proj": 6},
        alpha_pattern={"down_proj": 12},
    ),
}


def load_base() -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(BASE, attn_implementation="eager", dtype=torch.float32)
    return model.eval()


def main() -> None:
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    reference = load_file(BASE / "reference.safetensors")
    sequences = [reference[f"input_ids.{i}"] for i in range(3)]
    for name, options in ADAPTERS.items():
        model = get_peft_model(load_base(), LoraConfig(lora_dropout=0.0, **options))
        with torch.no_grad():
            for param_name, p in model.named_parameters():
                if "lora_" in param_name:
                    p.normal_(0.0, 0.2)
        out = BASE / "adapters" / name
        shutil.rmtree(out, ignore_errors=True)
        model.save_pretrained(out)
        (out / "README.md").unlink(missing_ok=True)
        merged = model.merge_and_unload().eval()
        logits = {}
        with torch.no_grad():
            for i, ids in enumerate(sequences):
                logits[f"logits.{i}"] = merged(ids[None, :]).logits[0].to(torch.float32).contiguous()
        meta = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
        save_file(logits, out / "reference.safetensors", metadata=meta)
        moved = max((logits[f"logits.{i}"] - reference[f"logits.{i}"]).abs().max().item() for i in range(3))
        print(f"{name:16s} moves the logits by up to {moved:.3f}")


if __name__ == "__main__":
    main()
