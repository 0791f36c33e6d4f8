//! `config.json`, the Hugging Face model config. Only the fields every architecture shares are
//! typed here; the engine reads its own per-architecture fields from [`ModelConfig::raw`].

use std::path::Path;

use serde::Deserialize;

use crate::error::PackageError;

pub(crate) const CONFIG_FILE: &str = "config.json";

/// The architectures (`config.json` `architectures[0]`) that Hearth's engine can run.
pub const SUPPORTED_ARCHITECTURES: [&str; 11] = [
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "Phi3ForCausalLM",
    "MixtralForCausalLM",
    "Qwen2MoeForCausalLM",
    "Qwen3MoeForCausalLM",
    "BertModel",
];

/// The supported architectures that are encoders: they embed text rather than generate it.
pub const EMBEDDING_ARCHITECTURES: [&str; 1] = ["BertModel"];

/// What a package's model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A decoder that generates text (chat, completions).
    Generative,
    /// An encoder that turns text into one vector (embeddings).
    Embedding,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The first entry of `architectures`, e.g. `LlamaForCausalLM`.
    pub architecture: String,
    pub model_type: String,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    /// The whole file, for architecture-specific fields.
    pub raw: serde_json::Value,
}

/// The typed subset; serde's messages for it ("missing field `vocab_size`") are already clear.
#[derive(Deserialize)]
struct Required {
    architectures: Vec<String>,
    model_type: String,
    max_position_embeddings: usize,
    vocab_size: usize,
}

impl ModelConfig {
    pub fn load(dir: &Path) -> Result<Self, PackageError> {
        Self::parse(&Self::read(dir)?)
    }

    /// The text of `dir`'s config.json.
    pub(crate) fn read(dir: &Path) -> Result<String, PackageError> {
        crate::read_required(
            &dir.join(CONFIG_FILE),
            CONFIG_FILE,
            "every package needs the Hugging Face model config (or a .gguf to derive it from)",
        )
    }

    /// Parses `config.json` and checks that its architecture is one Hearth supports.
    pub fn parse(text: &str) -> Result<Self, PackageError> {
        let raw: serde_json::Value =
            serde_json::from_str(text).map_err(|e| PackageError::parse(CONFIG_FILE, e))?;
        let required =
            Required::deserialize(&raw).map_err(|e| PackageError::parse(CONFIG_FILE, e))?;
        let Some(architecture) = required.architectures.into_iter().next() else {
            return Err(PackageError::invalid(CONFIG_FILE, "architectures", "must not be empty"));
        };
        if !SUPPORTED_ARCHITECTURES.contains(&architecture.as_str()) {
            return Err(PackageError::UnsupportedArchitecture {
                architecture,
                supported: SUPPORTED_ARCHITECTURES.to_vec(),
            });
        }
        Ok(Self {
            architecture,
            model_type: required.model_type,
            max_position_embeddings: required.max_position_embeddings,
            vocab_size: required.vocab_size,
            raw,
        })
    }

    /// Whether the model generates text or embeds it, by its architecture.
    pub fn kind(&self) -> ModelKind {
        if EMBEDDING_ARCHITECTURES.contains(&self.architecture.as_str()) {
            ModelKind::Embedding
        } else {
            ModelKind::Generative
        }
    }

    /// A token-id field such as `eos_token_id`, as a list whatever its written form.
    pub(crate) fn token_ids(&self, field: &str) -> Vec<u32> {
        token_ids(self.raw.get(field))
    }
}

/// Reads a token-id field that Hugging Face files write either as one number or as a list.
pub(crate) fn token_ids(value: Option<&serde_json::Value>) -> Vec<u32> {
    let to_id = |v: &serde_json::Value| v.as_u64().and_then(|id| u32::try_from(id).ok());
    match value {
        Some(serde_json::Value::Array(items)) => items.iter().filter_map(to_id).collect(),
        Some(value) => to_id(value).into_iter().collect(),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA: &str = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "max_position_embeddings": 2048, "vocab_size": 512, "eos_token_id": [2, 0]}"#;

    #[test]
    fn parses_the_shared_fields() {
        let config = ModelConfig::parse(LLAMA).unwrap();
        assert_eq!(config.architecture, "LlamaForCausalLM");
        assert_eq!(config.max_position_embeddings, 2048);
        assert_eq!(config.token_ids("eos_token_id"), [2, 0]);
        assert_eq!(config.token_ids("bos_token_id"), Vec::<u32>::new());
        assert_eq!(config.kind(), ModelKind::Generative);
        let bert = LLAMA.replace("LlamaForCausalLM", "BertModel");
        assert_eq!(ModelConfig::parse(&bert).unwrap().kind(), ModelKind::Embedding);
    }

    #[test]
    fn refuses_bad_configs() {
        let not_json = ModelConfig::parse("{nope").unwrap_err().to_string();
        assert!(not_json.starts_with("config.json: key must be a string"), "{not_json}");
        let no_arch = ModelConfig::parse(r#"{"model_type": "llama"}"#).unwrap_err().to_string();
        assert_eq!(no_arch, "config.json: missing field `architectures`");
        let gpt2 = LLAMA.replace("LlamaForCausalLM", "GPT2LMHeadModel");
        assert_eq!(
            ModelConfig::parse(&gpt2).unwrap_err().to_string(),
            "config.json: unsupported architecture `GPT2LMHeadModel` (supported: \
             LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, \
             Gemma2ForCausalLM, Gemma3ForCausalLM, Phi3ForCausalLM, MixtralForCausalLM, \
             Qwen2MoeForCausalLM, Qwen3MoeForCausalLM, BertModel)"
        );
    }
}
