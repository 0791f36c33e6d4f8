//! A GGUF file is a whole model: llama.cpp's converter writes the configuration, the tokenizer
//! (vocabulary, merges or scores, token types, special ids) and the chat template into its
//! metadata. A package holding a `.gguf` without `config.json` or `tokenizer.json` gets them
//! from here, derived as the Hugging Face files they came from, so that the rest of the package
//! (validation, special tokens, templates) reads one format.
//!
//! Tokenizers: `gpt2` (byte-level BPE with merges; the pre-tokenizer is chosen by
//! `tokenizer.ggml.pre`, as llama.cpp chooses its split) and `llama` (SentencePiece BPE with byte
//! fallback; the merges are rebuilt from the pieces' scores, as transformers' converter does).
//! Others are refused with a message saying to add a `tokenizer.json`.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::error::PackageError;
use crate::gguf::{GgufFile, MetaValue};

/// llama.cpp's token types (`llama_token_type`).
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// The Hugging Face files a GGUF stands in for, as JSON text.
#[derive(Debug)]
pub(crate) struct DerivedFiles {
    pub config: String,
    pub tokenizer: String,
    pub tokenizer_config: String,
}

struct Meta<'a> {
    gguf: &'a GgufFile,
    file: &'a str,
}

impl<'a> Meta<'a> {
    fn get(&self, key: &str) -> Option<&'a MetaValue> {
        self.gguf.metadata.get(key)
    }
    fn error(&self, message: String) -> PackageError {
        PackageError::CorruptGguf { file: self.file.to_string(), message }
    }
    fn int(&self, key: &str) -> Result<Option<i64>, PackageError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                v.as_int().map(Some).ok_or_else(|| self.error(format!("`{key}` is not an integer")))
            }
        }
    }
    fn required_int(&self, key: &str) -> Result<i64, PackageError> {
        self.int(key)?.ok_or_else(|| self.error(format!("metadata has no `{key}`")))
    }
    /// A float as the file stores it, f32 mostly: written back with f32's shortest form, so
    /// that 1e-5 reads as 1e-5 and not 9.99999974e-6.
    fn float(&self, key: &str) -> Option<f64> {
        let v = self.get(key)?.as_float()?;
        format!("{}", v as f32).parse().ok()
    }
    fn strings(&self, key: &str) -> Result<Vec<&'a str>, PackageError> {
        let items = self.get(key).and_then(MetaValue::as_array);
        let items = items.ok_or_else(|| self.error(format!("metadata has no array `{key}`")))?;
        items
            .iter()
            .map(|v| v.as_str().ok_or_else(|| self.error(format!("`{key}` holds a non-string"))))
            .collect()
    }
}

/// Derives `config.json`, `tokenizer.json` and `tokenizer_config.json` from `gguf`'s metadata.
pub(crate) fn derive(gguf: &GgufFile, file: &str) -> Result<DerivedFiles, PackageError> {
    let meta = Meta { gguf, file };
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let config = config(&meta, tokens.len())?;
    let tokenizer = tokenizer(&meta, &tokens)?;
    let token = |key: &str| -> Result<Option<&str>, PackageError> {
        Ok(meta.int(key)?.and_then(|id| tokens.get(id as usize).copied()))
    };
    let model = meta.get("tokenizer.ggml.model").and_then(MetaValue::as_str);
    let add_bos = meta.get("tokenizer.ggml.add_bos_token").and_then(MetaValue::as_bool);
    let tokenizer_config = json!({
        "bos_token": token("tokenizer.ggml.bos_token_id")?,
        "eos_token": token("tokenizer.ggml.eos_token_id")?,
        // SentencePiece models start prompts with BOS unless the file says otherwise.
        "add_bos_token": add_bos.unwrap_or(model == Some("llama")),
        "chat_template": meta.get("tokenizer.chat_template").and_then(MetaValue::as_str),
        "model_max_length": config["max_position_embeddings"],
    });
    Ok(DerivedFiles {
        config: config.to_string(),
        tokenizer: tokenizer.to_string(),
        tokenizer_config: tokenizer_config.to_string(),
    })
}

/// `config.json` for the architectures Hearth runs (`llama`, which llama.cpp also uses for
/// Mistral, `qwen2`, `qwen3`, `gemma2`, `gemma3`).
fn config(meta: &Meta, vocab: usize) -> Result<Value, PackageError> {
    let arch = meta.gguf.architecture.as_deref().unwrap_or("");
    let (class, model_type) = match arch {
        "llama" => ("LlamaForCausalLM", "llama"),
        "qwen2" => ("Qwen2ForCausalLM", "qwen2"),
        "qwen3" => ("Qwen3ForCausalLM", "qwen3"),
        "gemma2" => ("Gemma2ForCausalLM", "gemma2"),
        "gemma3" => ("Gemma3ForCausalLM", "gemma3_text"),
        "phi3" => ("Phi3ForCausalLM", "phi3"),
        "qwen2moe" => ("Qwen2MoeForCausalLM", "qwen2_moe"),
        "qwen3moe" => ("Qwen3MoeForCausalLM", "qwen3_moe"),
        other => {
            return Err(meta.error(format!(
                "architecture `{other}` has no config derivation here (llama, qwen2, qwen3, \
                 gemma2, gemma3, phi3, qwen2moe, qwen3moe do); add a config.json beside the GGUF"
            )))
        }
    };
    // Llama 3.1 scaling travels as the tensor `rope_freqs.weight`, not as metadata: the model
    // reads it from the GGUF as it loads, so the derived config names no `rope_scaling`.
    let key = |k: &str| format!("{arch}.{k}");
    let heads = meta.required_int(&key("attention.head_count"))?;
    let mut eos = vec![meta.int("tokenizer.ggml.eos_token_id")?];
    eos.push(meta.int("tokenizer.ggml.eot_token_id")?);
    let mut eos: Vec<i64> = eos.into_iter().flatten().collect();
    eos.dedup();
    let mut config = json!({
        "architectures": [class],
        "model_type": model_type,
        "hidden_size": meta.required_int(&key("embedding_length"))?,
        "intermediate_size": meta.required_int(&key("feed_forward_length"))?,
        "num_hidden_layers": meta.required_int(&key("block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": meta.int(&key("attention.head_count_kv"))?.unwrap_or(heads),
        "max_position_embeddings": meta.required_int(&key("context_length"))?,
        "rms_norm_eps": meta.float(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6),
        "rope_theta": meta.float(&key("rope.freq_base")).unwrap_or(10_000.0),
        "vocab_size": meta.int(&key("vocab_size"))?.map_or(vocab as i64, |v| v),
        "tie_word_embeddings": !meta.gguf.tensors.contains_key("output.weight"),
        "bos_token_id": meta.int("tokenizer.ggml.bos_token_id")?,
        "eos_token_id": eos,
        "hidden_act": "silu",
    });
    if let Some(head_dim) = meta.int(&key("attention.key_length"))? {
        config["head_dim"] = json!(head_dim);
    }
    if let Some(scaling) = meta.get(&key("rope.scaling.type")).and_then(MetaValue::as_str) {
        let factor = meta.float(&key("rope.scaling.factor"));
        match (scaling, factor) {
            ("none", _) => {}
            ("linear", Some(factor)) => {
                config["rope_scaling"] = json!({"rope_type": "linear", "factor": factor});
            }
            (other, _) => {
                return Err(meta.error(format!(
                    "RoPE scaling `{other}` is not read from GGUF metadata; add a config.json"
                )))
            }
        }
    }
    if arch.starts_with("gemma") {
        gemma_config(meta, arch, &mut config)?;
    }
    if arch == "phi3" {
        phi3_config(meta, &mut config)?;
    }
    moe_config(meta, arch, &mut config)?;
    Ok(config)
}

/// The experts of a mixture of experts: Qwen2/3-MoE, or Mixtral (llama.cpp's `llama` with
/// experts). Routing renormalizes as llama.cpp's graph does for each: always in Mixtral and
/// Qwen3-MoE, never in Qwen2-MoE; every layer is sparse.
fn moe_config(meta: &Meta, arch: &str, config: &mut Value) -> Result<(), PackageError> {
    let key = |k: &str| format!("{arch}.{k}");
    let Some(experts) = meta.int(&key("expert_count"))?.filter(|n| *n > 0) else {
        return Ok(());
    };
    if arch == "llama" {
        config["architectures"] = json!(["MixtralForCausalLM"]);
        config["model_type"] = json!("mixtral");
    }
    config["num_experts"] = json!(experts);
    config["num_experts_per_tok"] = json!(meta.int(&key("expert_used_count"))?.unwrap_or(2));
    config["norm_topk_prob"] = json!(arch != "qwen2moe");
    config["decoder_sparse_step"] = json!(1);
    if let Some(size) = meta.int(&key("expert_feed_forward_length"))? {
        config["moe_intermediate_size"] = json!(size);
    }
    if let Some(size) = meta.int(&key("expert_shared_feed_forward_length"))? {
        config["shared_expert_intermediate_size"] = json!(size);
    }
    Ok(())
}

/// Phi-3's own keys: the window, the rotated share of each head, and LongRoPE, whose factors
/// llama.cpp's converter stores as the f32 tensors `rope_factors_long` and `rope_factors_short`.
fn phi3_config(meta: &Meta, config: &mut Value) -> Result<(), PackageError> {
    let heads = meta.required_int("phi3.attention.head_count")?.max(1);
    let head_dim = match meta.int("phi3.attention.key_length")? {
        Some(d) => d,
        None => meta.required_int("phi3.embedding_length")? / heads,
    };
    config["sliding_window"] = json!(meta.int("phi3.attention.sliding_window")?);
    if let Some(rotated) = meta.int("phi3.rope.dimension_count")?.filter(|d| *d != head_dim) {
        config["partial_rotary_factor"] = json!(rotated as f64 / head_dim as f64);
    }
    let long = f32_tensor(meta, "rope_factors_long.weight")?;
    let short = f32_tensor(meta, "rope_factors_short.weight")?;
    let (long, short) = match (long, short) {
        (Some(long), Some(short)) => (long, short),
        (None, None) => return Ok(()),
        _ => return Err(meta.error("LongRoPE needs both rope_factors_long and _short".into())),
    };
    let original = meta.required_int("phi3.rope.scaling.original_context_length")?;
    let mut rope = json!({"rope_type": "longrope", "long_factor": long, "short_factor": short,
                          "original_max_position_embeddings": original});
    if let Some(factor) = meta.float("phi3.rope.scaling.attn_factor") {
        rope["attention_factor"] = json!(factor);
    }
    config["rope_scaling"] = rope;
    config["original_max_position_embeddings"] = json!(original);
    Ok(())
}

/// The f32 tensor `name` of the file, read from disk (`None` when it has none).
fn f32_tensor(meta: &Meta, name: &str) -> Result<Option<Vec<f64>>, PackageError> {
    use std::io::{Read, Seek, SeekFrom};
    let Some(tensor) = meta.gguf.tensors.get(name) else { return Ok(None) };
    if tensor.ggml_type != "f32" {
        return Err(meta.error(format!("`{name}` is {}, expected f32", tensor.ggml_type)));
    }
    let path = &meta.gguf.path;
    let mut bytes = vec![0u8; (tensor.range.end - tensor.range.start) as usize];
    let mut file = std::fs::File::open(path).map_err(|e| PackageError::io(path, e))?;
    file.seek(SeekFrom::Start(tensor.range.start)).map_err(|e| PackageError::io(path, e))?;
    file.read_exact(&mut bytes).map_err(|e| PackageError::io(path, e))?;
    let values =
        bytes.chunks_exact(4).map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
    Ok(Some(values.collect()))
}

/// Gemma's own keys. What the metadata leaves out is what llama.cpp assumes for it
/// (`llama-model.cpp`): every sixth Gemma 3 layer is global and its others use a RoPE base of
/// 10,000; the attention scale is `head_dim^-0.5`, but `(hidden / heads)^-0.5` in the 27B models
/// (46 layers in Gemma 2, 62 in Gemma 3), as their `query_pre_attn_scalar` says.
fn gemma_config(meta: &Meta, arch: &str, config: &mut Value) -> Result<(), PackageError> {
    let key = |k: &str| format!("{arch}.{k}");
    let layers = meta.required_int(&key("block_count"))?;
    let hidden = meta.required_int(&key("embedding_length"))?;
    let heads = meta.required_int(&key("attention.head_count"))?.max(1);
    let head_dim = meta.int(&key("attention.key_length"))?.unwrap_or(hidden / heads);
    let is_27b = (arch == "gemma2" && layers == 46) || (arch == "gemma3" && layers == 62);
    config["query_pre_attn_scalar"] = json!(if is_27b { hidden / heads } else { head_dim });
    config["hidden_act"] = json!("gelu_pytorch_tanh");
    config["hidden_activation"] = json!("gelu_pytorch_tanh");
    config["sliding_window"] = json!(meta.int(&key("attention.sliding_window"))?);
    config["attn_logit_softcapping"] = json!(meta.float(&key("attn_logit_softcapping")));
    config["final_logit_softcapping"] = json!(meta.float(&key("final_logit_softcapping")));
    if arch == "gemma3" {
        config["sliding_window_pattern"] = json!(6);
        config["rope_local_base_freq"] = json!(10_000.0);
    }
    Ok(())
}

/// `tokenizer.json` for the file's tokenizer model.
fn tokenizer(meta: &Meta, tokens: &[&str]) -> Result<Value, PackageError> {
    let types = match meta.get("tokenizer.ggml.token_type").and_then(MetaValue::as_array) {
        Some(types) => types.iter().map(|t| t.as_int().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    let added: Vec<Value> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, t))| **t == CONTROL || **t == USER_DEFINED)
        .map(|(id, (content, t))| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": *t == CONTROL})
        })
        .collect();
    let vocab: serde_json::Map<String, Value> =
        tokens.iter().enumerate().map(|(i, t)| (t.to_string(), json!(i))).collect();
    let model = meta.get("tokenizer.ggml.model").and_then(MetaValue::as_str).unwrap_or("");
    let mut tokenizer = match model {
        "gpt2" => byte_level_bpe(meta, vocab)?,
        "llama" => sentencepiece_bpe(meta, tokens, &types, vocab)?,
        other => {
            return Err(meta.error(format!(
                "tokenizer model `{other}` is not derived here (gpt2 and llama are); add a \
                 tokenizer.json beside the GGUF"
            )))
        }
    };
    tokenizer["version"] = json!("1.0");
    tokenizer["truncation"] = Value::Null;
    tokenizer["padding"] = Value::Null;
    tokenizer["added_tokens"] = Value::Array(added);
    tokenizer["post_processor"] = Value::Null;
    Ok(tokenizer)
}

/// GPT-2-style byte-level BPE. The split before byte-level encoding follows llama.cpp's
/// pre-tokenizer names (`llama-vocab.cpp`), written as the tokenizers library's own
/// pre-tokenizers for each family.
fn byte_level_bpe(
    meta: &Meta,
    vocab: serde_json::Map<String, Value>,
) -> Result<Value, PackageError> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let merges = meta.strings("tokenizer.ggml.merges")?;
    let byte_level = |use_regex: bool| {
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
               "use_regex": use_regex})
    };
    let split = |regex: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]})
    };
    let pre = meta.get("tokenizer.ggml.pre").and_then(MetaValue::as_str).unwrap_or("default");
    let (normalizer, pre_tokenizer) = match pre {
        "default" | "gpt2" | "gpt-2" => (Value::Null, byte_level(true)),
        "smollm" | "starcoder" | "refact" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true),
            ]}),
        ),
        "llama3" | "llama-bpe" | "smaug-bpe" => (Value::Null, split(LLAMA3)),
        "qwen2" => (json!({"type": "NFC"}), split(QWEN2)),
        other => {
            return Err(meta.error(format!(
                "pre-tokenizer `{other}` is not one Hearth derives (gpt2, smollm, starcoder, \
                 llama-bpe, qwen2); add a tokenizer.json beside the GGUF"
            )))
        }
    };
    Ok(json!({
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    }))
}

/// SentencePiece (Llama, Mistral): BPE over `▁`-joined text with byte fallback. GGUF keeps the
/// pieces' scores but not merges; a merge `a b` exists wherever `a`, `b` and `ab` are all normal
/// pieces, ranked by the score of `ab` (SentencePiece merges the best-scoring pair first).
fn sentencepiece_bpe(
    meta: &Meta,
    tokens: &[&str],
    types: &[i64],
    vocab: serde_json::Map<String, Value>,
) -> Result<Value, PackageError> {
    let scores: Vec<f64> = match meta.get("tokenizer.ggml.scores").and_then(MetaValue::as_array) {
        Some(scores) => scores.iter().map(|s| s.as_float().unwrap_or(0.0)).collect(),
        None => return Err(meta.error("a `llama` tokenizer needs `tokenizer.ggml.scores`".into())),
    };
    const NORMAL: i64 = 1;
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| types.get(*i) == Some(&NORMAL))
        .map(|(i, t)| (*t, i))
        .collect();
    let mut merges: Vec<(f64, usize, usize, &str, &str)> = Vec::new();
    for (&piece, &id) in &ids {
        for (at, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(at);
            if let (Some(&l), Some(_)) = (ids.get(left), ids.get(right)) {
                merges.push((scores.get(id).copied().unwrap_or(0.0), id, l, left, right));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges: Vec<String> = merges.iter().map(|m| format!("{} {}", m.3, m.4)).collect();
    let unk = meta.int("tokenizer.ggml.unknown_token_id")?.and_then(|id| tokens.get(id as usize));
    let space = "\u{2581}";
    // Llama's SentencePiece models prefix text with a space (and strip it when decoding);
    // Gemma's do not, which llama.cpp's converter records as `add_space_prefix = false`.
    let prefix_space = meta.get("tokenizer.ggml.add_space_prefix").and_then(MetaValue::as_bool);
    let mut normalizers =
        vec![json!({"type": "Replace", "pattern": {"String": " "}, "content": space})];
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": space}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prefix_space.unwrap_or(true) {
        normalizers.insert(0, json!({"type": "Prepend", "prepend": space}));
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    Ok(json!({
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    }))
}

#[cfg(test)]
#[path = "gguf_hf_tests.rs"]
mod tests;
