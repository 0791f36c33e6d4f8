"""Writes the Hugging Face files Hearth reads beside a llama-architecture GGUF: config.json,
tokenizer.json, tokenizer_config.json (with the GGUF's chat template) and generation_config.json,
all taken from the GGUF's own metadata with the `gguf` and `tokenizers` packages (no torch).

    python gguf_to_package.py MODEL.gguf OUT_DIR
"""

import json
import sys
from pathlib import Path

from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

CONTROL = 3  # llama.cpp's token type for special (control) tokens


def field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def config(reader, vocab_size):
    arch = field(reader, "general.architecture")
    if arch != "llama":
        sys.exit(f"unsupported architecture {arch!r}: this script writes llama configs")
    tensors = {t.name for t in reader.tensors}
    heads = field(reader, "llama.attention.head_count")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": field(reader, "llama.embedding_length"),
        "intermediate_size": field(reader, "llama.feed_forward_length"),
        "num_hidden_layers": field(reader, "llama.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": field(reader, "llama.attention.head_count_kv", heads),
        "max_position_embeddings": field(reader, "llama.context_length"),
        # Stored as a float32: 1e-5 reads back as 9.99999974e-06.
        "rms_norm_eps": float(f"{field(reader, 'llama.attention.layer_norm_rms_epsilon'):.6g}"),
        "rope_theta": field(reader, "llama.rope.freq_base", 10000.0),
        "vocab_size": vocab_size,
        "tie_word_embeddings": "output.weight" not in tensors,
        "bos_token_id": field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": field(reader, "tokenizer.ggml.eos_token_id"),
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }


def tokenizer(reader):
    if field(reader, "tokenizer.ggml.model") != "gpt2":
        sys.exit("only byte-level BPE (gpt2) GGUF tokenizers are supported")
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    # SmolLM2's own pre-tokenizer: digits one by one, then GPT-2's byte-level split.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == CONTROL]
    tok.add_special_tokens(specials)
    return tok, tokens


def main():
    gguf_path, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    reader = GGUFReader(gguf_path)
    tok, tokens = tokenizer(reader)
    cfg = config(reader, len(tokens))
    tok.save(str(out / "tokenizer.json"))
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    bos, eos = tokens[cfg["bos_token_id"]], tokens[cfg["eos_token_id"]]
    tokenizer_config = {
        "bos_token": bos,
        "eos_token": eos,
        "add_bos_token": False,
        "chat_template": field(reader, "tokenizer.chat_template"),
        "model_max_length": cfg["max_position_embeddings"],
        "tokenizer_class": "GPT2Tokenizer",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    generation = {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    print(f"{out}: {cfg['num_hidden_layers']} layers, {len(tokens)} tokens, eos {eos!r}")


if __name__ == "__main__":
    main()
