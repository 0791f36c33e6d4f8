//! The derivation on small hand-made metadata; the real-file check (SmolLM2 against the files
//! Python's `tokenizers` derives) is `tests/gguf_only.rs`.

use std::collections::BTreeMap;

use super::*;
use crate::gguf::{GgufFile, GgufTensor};

fn strings(items: &[&str]) -> MetaValue {
    MetaValue::Array(items.iter().map(|s| MetaValue::String(s.to_string())).collect())
}

fn ints(items: &[i64]) -> MetaValue {
    MetaValue::Array(items.iter().map(|&i| MetaValue::Int(i)).collect())
}

/// A llama-architecture GGUF header with the given tokenizer entries (no tensor data).
fn gguf(tokenizer: Vec<(&str, MetaValue)>) -> GgufFile {
    let mut metadata: BTreeMap<String, MetaValue> = [
        ("llama.block_count", MetaValue::Int(2)),
        ("llama.context_length", MetaValue::Int(512)),
        ("llama.embedding_length", MetaValue::Int(64)),
        ("llama.feed_forward_length", MetaValue::Int(128)),
        ("llama.attention.head_count", MetaValue::Int(4)),
        ("llama.attention.head_count_kv", MetaValue::Int(2)),
        ("llama.rope.freq_base", MetaValue::Float(100_000f32 as f64)),
        ("llama.attention.layer_norm_rms_epsilon", MetaValue::Float(1e-5f32 as f64)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    metadata.extend(tokenizer.into_iter().map(|(k, v)| (k.to_string(), v)));
    let tensor = GgufTensor { ggml_type: "f32", shape: vec![1], range: 0..4 };
    GgufFile {
        path: "model.gguf".into(),
        version: 3,
        architecture: Some("llama".into()),
        tensors: [("token_embd.weight".to_string(), tensor)].into_iter().collect(),
        metadata,
    }
}

/// A SentencePiece vocabulary: specials, two byte pieces, then pieces whose scores rank the
/// merges (`▁a` before `ab`).
fn sentencepiece() -> GgufFile {
    let tokens =
        ["<unk>", "<s>", "</s>", "<0x21>", "<0x0A>", "▁", "a", "b", "▁a", "ab", "▁ab", "<|x|>"];
    let types = [2, 3, 3, 6, 6, 1, 1, 1, 1, 1, 1, 4];
    let scores = [0., 0., 0., 0., 0., -1., -2., -3., -4., -5., -6., 0.];
    gguf(vec![
        ("tokenizer.ggml.model", MetaValue::String("llama".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        ("tokenizer.ggml.token_type", ints(&types)),
        ("tokenizer.ggml.scores", MetaValue::Array(scores.map(MetaValue::Float).to_vec())),
        ("tokenizer.ggml.bos_token_id", MetaValue::Int(1)),
        ("tokenizer.ggml.eos_token_id", MetaValue::Int(2)),
        ("tokenizer.ggml.unknown_token_id", MetaValue::Int(0)),
        ("tokenizer.chat_template", MetaValue::String("{{ messages[0]['content'] }}".into())),
    ])
}

#[test]
fn config_comes_from_the_architecture_keys() {
    let files = derive(&sentencepiece(), "model.gguf").unwrap();
    let config: Value = serde_json::from_str(&files.config).unwrap();
    assert_eq!(config["architectures"], json!(["LlamaForCausalLM"]));
    assert_eq!(config["num_key_value_heads"], 2);
    assert_eq!(config["rope_theta"], 100_000.0);
    assert_eq!(config["rms_norm_eps"], 1e-5, "f32's 1e-5, not 9.99999974e-6");
    assert_eq!(config["vocab_size"], 12, "the token count when the file gives no vocab_size");
    assert_eq!(config["tie_word_embeddings"], true, "no output.weight");
    assert_eq!(config["eos_token_id"], json!([2]));
    let tokenizer_config: Value = serde_json::from_str(&files.tokenizer_config).unwrap();
    assert_eq!(tokenizer_config["bos_token"], "<s>");
    assert_eq!(tokenizer_config["add_bos_token"], true, "SentencePiece models start with BOS");
    assert_eq!(tokenizer_config["chat_template"], "{{ messages[0]['content'] }}");
}

/// A Gemma 2 header as llama.cpp's converter writes it: the llama keys under `gemma2.`, the
/// soft caps and window, and a SentencePiece vocabulary without the space prefix.
fn gemma2(layers: i64) -> GgufFile {
    with_arch(
        "gemma2",
        [
            ("gemma2.block_count", MetaValue::Int(layers)),
            ("gemma2.attention.key_length", MetaValue::Int(32)),
            ("gemma2.attention.sliding_window", MetaValue::Int(4096)),
            ("gemma2.attn_logit_softcapping", MetaValue::Float(50.0)),
            ("gemma2.final_logit_softcapping", MetaValue::Float(30.0)),
            ("tokenizer.ggml.add_space_prefix", MetaValue::Bool(false)),
        ],
    )
}

/// [`sentencepiece`]'s header under architecture `arch` (its `llama.` keys renamed), plus `extra`.
fn with_arch<const N: usize>(arch: &str, extra: [(&str, MetaValue); N]) -> GgufFile {
    let mut file = sentencepiece();
    file.architecture = Some(arch.into());
    let llama: Vec<(String, MetaValue)> = std::mem::take(&mut file.metadata).into_iter().collect();
    for (k, v) in llama {
        let k = k.strip_prefix("llama.").map_or(k.clone(), |rest| format!("{arch}.{rest}"));
        file.metadata.insert(k, v);
    }
    file.metadata.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
    file
}

#[test]
fn gemma_config_carries_caps_window_and_scale() {
    let files = derive(&gemma2(26), "model.gguf").unwrap();
    let config: Value = serde_json::from_str(&files.config).unwrap();
    assert_eq!(config["architectures"], json!(["Gemma2ForCausalLM"]));
    assert_eq!(config["model_type"], "gemma2");
    assert_eq!(config["hidden_activation"], "gelu_pytorch_tanh");
    assert_eq!(config["sliding_window"], 4096);
    assert_eq!(config["attn_logit_softcapping"], 50.0);
    assert_eq!(config["final_logit_softcapping"], 30.0);
    assert_eq!(config["query_pre_attn_scalar"], 32, "head_dim, as llama.cpp scales");
    let big: Value = serde_json::from_str(&derive(&gemma2(46), "m.gguf").unwrap().config).unwrap();
    assert_eq!(big["query_pre_attn_scalar"], 16, "27B: hidden / heads (64 / 4)");
    // No space prefix: "ab" is `ab`, not `▁ab`, and nothing is stripped when decoding.
    let tokenizer: tokenizers::Tokenizer = files.tokenizer.parse().unwrap();
    assert_eq!(tokenizer.encode("ab ab", false).unwrap().get_ids(), [9, 10]);
    assert_eq!(tokenizer.decode(&[10], false).unwrap(), " ab");
}

/// Phi-3 with LongRoPE: the factors are f32 tensors in the file, read from disk.
#[test]
fn phi3_config_reads_long_rope_factors_from_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phi3.gguf");
    let (long, short) = ([1.5f32, 2.0, 4.0, 8.0], [1.0f32, 1.0, 1.25, 1.5]);
    let bytes: Vec<u8> = long.iter().chain(&short).flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&path, bytes).unwrap();
    let mut file = with_arch(
        "phi3",
        [
            ("phi3.rope.dimension_count", MetaValue::Int(8)),
            ("phi3.rope.scaling.original_context_length", MetaValue::Int(4096)),
            ("phi3.rope.scaling.attn_factor", MetaValue::Float(1.25)),
        ],
    );
    file.path = path;
    let factors = |range| GgufTensor { ggml_type: "f32", shape: vec![4], range };
    file.tensors.insert("rope_factors_long.weight".into(), factors(0..16));
    file.tensors.insert("rope_factors_short.weight".into(), factors(16..32));
    let config: Value = serde_json::from_str(&derive(&file, "phi3.gguf").unwrap().config).unwrap();
    assert_eq!(config["architectures"], json!(["Phi3ForCausalLM"]));
    assert_eq!(config["partial_rotary_factor"], 0.5, "8 of 16 dimensions rotate");
    assert_eq!(config["rope_scaling"]["rope_type"], "longrope");
    assert_eq!(config["rope_scaling"]["long_factor"], json!([1.5, 2.0, 4.0, 8.0]));
    assert_eq!(config["rope_scaling"]["short_factor"], json!([1.0, 1.0, 1.25, 1.5]));
    assert_eq!(config["rope_scaling"]["attention_factor"], 1.25);
    assert_eq!(config["original_max_position_embeddings"], 4096);
    file.tensors.remove("rope_factors_short.weight");
    assert!(derive(&file, "phi3.gguf").unwrap_err().to_string().contains("rope_factors"));
}

#[test]
fn moe_configs_carry_their_experts() {
    let file = with_arch(
        "qwen3moe",
        [
            ("qwen3moe.expert_count", MetaValue::Int(128)),
            ("qwen3moe.expert_used_count", MetaValue::Int(8)),
            ("qwen3moe.expert_feed_forward_length", MetaValue::Int(768)),
        ],
    );
    let config: Value = serde_json::from_str(&derive(&file, "m.gguf").unwrap().config).unwrap();
    assert_eq!(config["architectures"], json!(["Qwen3MoeForCausalLM"]));
    assert_eq!(
        (config["num_experts"].as_i64(), config["num_experts_per_tok"].as_i64()),
        (Some(128), Some(8))
    );
    assert_eq!(
        (config["moe_intermediate_size"].as_i64(), config["norm_topk_prob"].as_bool()),
        (Some(768), Some(true))
    );
    // llama.cpp's `llama` with experts is Mixtral.
    let mut mixtral = sentencepiece();
    mixtral.metadata.insert("llama.expert_count".into(), MetaValue::Int(8));
    let config: Value = serde_json::from_str(&derive(&mixtral, "m.gguf").unwrap().config).unwrap();
    assert_eq!(config["architectures"], json!(["MixtralForCausalLM"]));
    assert_eq!(config["num_experts_per_tok"], 2);
}

#[test]
fn sentencepiece_pieces_merge_by_score_and_bytes_fall_back() {
    let files = derive(&sentencepiece(), "model.gguf").unwrap();
    let tokenizer: tokenizers::Tokenizer = files.tokenizer.parse().unwrap();
    let ids = |text: &str| tokenizer.encode(text, false).unwrap().get_ids().to_vec();
    // "ab ab" → "▁ab▁ab": the best-scored merge (▁ a → ▁a) comes first, then ▁a b → ▁ab.
    assert_eq!(ids("ab ab"), vec![10, 10]);
    assert_eq!(ids("ba"), vec![5, 7, 6], "▁, b, a: no merge makes ▁b or ba");
    assert_eq!(ids("a!\n"), vec![8, 3, 4], "unknown characters as their UTF-8 bytes");
    assert_eq!(ids("a<|x|>"), vec![8, 11], "user-defined tokens match whole");
    assert_eq!(tokenizer.decode(&[8, 3, 4, 10], false).unwrap(), "a!\n ab");
}

#[test]
fn byte_level_bpe_follows_the_pre_tokenizer_name() {
    let tokens = ["a", "b", "1", "2", "ab", "Ġ", "Ġa", "<|end|>"];
    let file = |pre: &str| {
        gguf(vec![
            ("tokenizer.ggml.model", MetaValue::String("gpt2".into())),
            ("tokenizer.ggml.pre", MetaValue::String(pre.into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            ("tokenizer.ggml.token_type", ints(&[1, 1, 1, 1, 1, 1, 1, 3])),
            ("tokenizer.ggml.merges", strings(&["a b", "Ġ a"])),
            ("tokenizer.ggml.eos_token_id", MetaValue::Int(7)),
        ])
    };
    let files = derive(&file("smollm"), "model.gguf").unwrap();
    let tokenizer: tokenizers::Tokenizer = files.tokenizer.parse().unwrap();
    let encoding = tokenizer.encode("ab a12<|end|>", false).unwrap();
    assert_eq!(encoding.get_ids(), &[4, 6, 2, 3, 7]);
    assert_eq!(tokenizer.decode(encoding.get_ids(), false).unwrap(), "ab a12<|end|>");
    let tokenizer_config: Value = serde_json::from_str(&files.tokenizer_config).unwrap();
    assert_eq!(tokenizer_config["add_bos_token"], false);
    for pre in ["gpt2", "llama-bpe", "qwen2"] {
        let files = derive(&file(pre), "model.gguf").unwrap();
        let tokenizer: tokenizers::Tokenizer = files.tokenizer.parse().unwrap();
        let ids = tokenizer.encode("ab a", false).unwrap().get_ids().to_vec();
        assert_eq!(ids, vec![4, 6], "{pre}");
    }
    let err = derive(&file("deepseek-coder"), "model.gguf").unwrap_err().to_string();
    assert!(
        err.contains("pre-tokenizer `deepseek-coder`") && err.contains("tokenizer.json"),
        "{err}"
    );
}

#[test]
fn what_cannot_be_derived_is_named() {
    let mut file = sentencepiece();
    file.architecture = Some("gpt2".into());
    let err = derive(&file, "model.gguf").unwrap_err().to_string();
    assert!(err.contains("architecture `gpt2`") && err.contains("config.json"), "{err}");
    let mut file = sentencepiece();
    file.metadata.remove("llama.block_count");
    let err = derive(&file, "model.gguf").unwrap_err().to_string();
    assert!(err.contains("llama.block_count"), "{err}");
    let mut file = sentencepiece();
    file.metadata.insert("tokenizer.ggml.model".into(), MetaValue::String("bert".into()));
    let err = derive(&file, "model.gguf").unwrap_err().to_string();
    assert!(err.contains("tokenizer model `bert`"), "{err}");
}
