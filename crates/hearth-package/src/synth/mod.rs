//! Deterministic synthetic packages: Llama-architecture models with seeded random weights, a small
//! byte-level BPE tokenizer and a ChatML template. Tests, examples and benchmarks use them so that
//! nothing is downloaded; the same spec always gives byte-identical files.

mod files;
mod lora;
mod tensors;
mod tokenizer;

pub use lora::{write_lora_adapter, LoraSpec};

use std::path::Path;

use crate::error::PackageError;
use crate::settings::DType;

/// The shape and seed of a synthetic Llama-family model.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSpec {
    /// Suggested package (directory) name.
    pub name: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Fewer than `num_attention_heads` gives grouped-query attention.
    pub num_key_value_heads: usize,
    /// Defaults to `hidden_size / num_attention_heads`.
    pub head_dim: Option<usize>,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    /// Exact tokenizer size: merges learned from a small built-in text, then filler tokens.
    pub vocab_size: usize,
    /// Storage dtype of the weights.
    pub dtype: DType,
    /// Split the weights into shards of at most this many bytes (plus an index), like
    /// Hugging Face checkpoints; `None` writes one `model.safetensors`.
    pub max_shard_bytes: Option<u64>,
    pub seed: u64,
    /// Written to cog.yaml `build.gpu`.
    pub gpu: bool,
    pub family: SynthFamily,
}

/// The architecture written: Llama, Qwen3 (Llama with RMS norms on each head's queries and
/// keys), or Gemma 2 / Gemma 3 with their published hyper-parameters (soft caps, windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynthFamily {
    Llama,
    Qwen3,
    Gemma2,
    Gemma3,
    /// Phi-3 / Phi-4: fused `qkv_proj` and `gate_up_proj`.
    Phi3,
    /// Qwen3-MoE: a Qwen3 decoder whose MLPs are [`MOE_EXPERTS`] experts of a quarter of
    /// `intermediate_size`, [`MOE_TOP_K`] per token, renormalized.
    Qwen3Moe,
    /// Qwen2-MoE: Qwen2 attention (biased query, key and value) over experts as Qwen3-MoE's,
    /// not renormalized, plus a gated shared expert of half `intermediate_size`.
    Qwen2Moe,
    /// Mixtral: Llama attention over [`MOE_EXPERTS`] experts of `intermediate_size`, top
    /// [`MOE_TOP_K`], renormalized.
    Mixtral,
}

impl SynthFamily {
    /// Whether the MLPs are mixtures of experts.
    pub fn is_moe(self) -> bool {
        matches!(self, Self::Qwen3Moe | Self::Qwen2Moe | Self::Mixtral)
    }
}

/// Experts per layer of a synthetic MoE model.
pub const MOE_EXPERTS: usize = 8;
/// Experts each token is routed to.
pub const MOE_TOP_K: usize = 2;

/// The names [`SynthSpec::preset`] knows.
pub const PRESETS: [&str; 10] = [
    "tiny-llama",
    "tiny-gemma2",
    "tiny-gemma3",
    "tiny-phi3",
    "tiny-qwen3-moe",
    "tiny-qwen2-moe",
    "tiny-mixtral",
    "smollm2-135m",
    "smollm2-moe",
    "llama3-8b",
];

/// The special tokens every synthetic tokenizer has, in id order.
pub(crate) const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
pub(crate) const BOS_TOKEN_ID: u32 = 1;
pub(crate) const EOS_TOKEN_ID: u32 = 2;
pub(crate) const END_OF_TEXT_ID: u32 = 0;

/// Smallest vocabulary: the special tokens and one token per byte.
const MIN_VOCAB: usize = SPECIAL_TOKENS.len() + 256;

impl SynthSpec {
    /// A few-megabyte model for unit and end-to-end tests: 4 layers, grouped-query attention.
    pub fn tiny_llama() -> Self {
        Self {
            name: "tiny-llama".to_string(),
            hidden_size: 128,
            intermediate_size: 344,
            num_hidden_layers: 4,
            num_attention_heads: 8,
            num_key_value_heads: 2,
            head_dim: None,
            max_position_embeddings: 2048,
            rope_theta: 10_000.0,
            tie_word_embeddings: false,
            vocab_size: 512,
            dtype: DType::F32,
            max_shard_bytes: None,
            seed: 0,
            gpu: false,
            family: SynthFamily::Llama,
        }
    }

    /// [`Self::tiny_llama`]'s size as Gemma 2: alternating sliding and global layers, soft
    /// caps, sandwich norms, tied embeddings.
    pub fn tiny_gemma2() -> Self {
        Self {
            name: "tiny-gemma2".to_string(),
            head_dim: Some(32),
            tie_word_embeddings: true,
            family: SynthFamily::Gemma2,
            ..Self::tiny_llama()
        }
    }

    /// [`Self::tiny_llama`]'s size as Gemma 3 (text): QK norms, a RoPE base per layer kind,
    /// six layers so that one is global.
    pub fn tiny_gemma3() -> Self {
        Self {
            name: "tiny-gemma3".to_string(),
            num_hidden_layers: 6,
            head_dim: Some(32),
            rope_theta: 1_000_000.0,
            tie_word_embeddings: true,
            family: SynthFamily::Gemma3,
            ..Self::tiny_llama()
        }
    }

    /// [`Self::tiny_llama`]'s size as Phi-3 (fused projections).
    pub fn tiny_phi3() -> Self {
        Self { name: "tiny-phi3".to_string(), family: SynthFamily::Phi3, ..Self::tiny_llama() }
    }

    /// [`Self::tiny_llama`]'s size as Qwen3-MoE (8 experts, 2 per token).
    pub fn tiny_qwen3_moe() -> Self {
        Self::tiny_moe("tiny-qwen3-moe", SynthFamily::Qwen3Moe)
    }

    /// [`Self::tiny_llama`]'s size as another mixture-of-experts `family`.
    pub fn tiny_moe(name: &str, family: SynthFamily) -> Self {
        Self { name: name.to_string(), family, ..Self::tiny_llama() }
    }

    /// The shape of SmolLM2-135M (tied embeddings, 49152-token vocabulary).
    pub fn smollm2_135m() -> Self {
        Self {
            name: "smollm2-135m".to_string(),
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            head_dim: None,
            max_position_embeddings: 8192,
            rope_theta: 100_000.0,
            tie_word_embeddings: true,
            vocab_size: 49_152,
            dtype: DType::Bf16,
            max_shard_bytes: None,
            seed: 0,
            gpu: false,
            family: SynthFamily::Llama,
        }
    }

    /// SmolLM2-135M's shape as a Qwen3-MoE model: each MLP becomes 8 experts of a quarter of
    /// its width, 2 per token (about 210M parameters, 95M of them active per token). The mixture of
    /// experts benchmarks run on it.
    pub fn smollm2_moe() -> Self {
        Self {
            name: "smollm2-moe".to_string(),
            family: SynthFamily::Qwen3Moe,
            ..Self::smollm2_135m()
        }
    }

    /// The shape of Llama-3-8B (about 16 GB in bf16), sharded like the original checkpoint.
    pub fn llama3_8b() -> Self {
        Self {
            name: "llama3-8b".to_string(),
            hidden_size: 4096,
            intermediate_size: 14_336,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            head_dim: None,
            max_position_embeddings: 8192,
            rope_theta: 500_000.0,
            tie_word_embeddings: false,
            vocab_size: 128_256,
            dtype: DType::Bf16,
            max_shard_bytes: Some(5_000_000_000),
            seed: 0,
            gpu: true,
            family: SynthFamily::Llama,
        }
    }

    /// One of [`PRESETS`] by name.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "tiny-llama" => Some(Self::tiny_llama()),
            "tiny-gemma2" => Some(Self::tiny_gemma2()),
            "tiny-gemma3" => Some(Self::tiny_gemma3()),
            "tiny-phi3" => Some(Self::tiny_phi3()),
            "tiny-qwen3-moe" => Some(Self::tiny_qwen3_moe()),
            "tiny-qwen2-moe" => Some(Self::tiny_moe("tiny-qwen2-moe", SynthFamily::Qwen2Moe)),
            "tiny-mixtral" => Some(Self::tiny_moe("tiny-mixtral", SynthFamily::Mixtral)),
            "smollm2-135m" => Some(Self::smollm2_135m()),
            "smollm2-moe" => Some(Self::smollm2_moe()),
            "llama3-8b" => Some(Self::llama3_8b()),
            _ => None,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Every tensor of the checkpoint with its Hugging Face Llama name and shape, in file order.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        tensors::plan(self).into_iter().map(|t| (t.name, t.shape)).collect()
    }

    /// Checks that the spec describes a model the Llama architecture can express.
    pub fn validate(&self) -> Result<(), PackageError> {
        let fail = |message: String| Err(PackageError::InvalidSpec(message));
        let sizes = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((field, _)) = sizes.iter().find(|(_, value)| *value == 0) {
            return fail(format!("{field} must be at least 1"));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return fail(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return fail("hidden_size must be a multiple of num_attention_heads".to_string());
        }
        // Rotary embeddings rotate pairs of dimensions.
        if self.head_dim() == 0 || !self.head_dim().is_multiple_of(2) {
            return fail(format!("head_dim ({}) must be even and non-zero", self.head_dim()));
        }
        if self.vocab_size < MIN_VOCAB {
            return fail(format!("vocab_size must be at least {MIN_VOCAB}"));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return fail("rope_theta must be positive".to_string());
        }
        if self.max_shard_bytes == Some(0) {
            return fail("max_shard_bytes must be at least 1".to_string());
        }
        Ok(())
    }
}

/// Writes a complete package for `spec` into `dir` (created if needed): cog.yaml, predict.py,
/// config.json, generation_config.json, tokenizer files and safetensors weights. Weights are
/// streamed to disk tensor by tensor, so an 8B-parameter model needs little memory.
/// `progress(bytes_written, bytes_total)` follows the weight files.
pub fn write_llama_package(
    spec: &SynthSpec,
    dir: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), PackageError> {
    spec.validate()?;
    std::fs::create_dir_all(dir).map_err(|e| PackageError::io(dir, e))?;
    let tokenizer_json = tokenizer::build(spec.vocab_size)?;
    files::write_text_files(spec, dir, &tokenizer_json)?;
    tensors::write_weights(spec, dir, progress)
}

/// Writes `contents` to `dir/file`.
pub(crate) fn write_file(dir: &Path, file: &str, contents: &[u8]) -> Result<(), PackageError> {
    let path = dir.join(file);
    std::fs::write(&path, contents).map_err(|e| PackageError::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        for name in PRESETS {
            let spec = SynthSpec::preset(name).unwrap();
            spec.validate().unwrap();
            assert_eq!(spec.name, name);
        }
        assert_eq!(SynthSpec::smollm2_135m().head_dim(), 64);
        assert_eq!(SynthSpec::llama3_8b().head_dim(), 128);
    }

    #[test]
    fn llama3_8b_has_eight_billion_parameters() {
        let spec = SynthSpec::llama3_8b();
        let params: usize =
            spec.tensor_shapes().iter().map(|(_, shape)| shape.iter().product::<usize>()).sum();
        assert_eq!(params, 8_030_261_248);
    }

    #[test]
    fn bad_specs_are_refused() {
        let mut spec = SynthSpec::tiny_llama();
        spec.num_key_value_heads = 3;
        assert!(spec
            .validate()
            .unwrap_err()
            .to_string()
            .contains("multiple of num_key_value_heads"));
        let mut spec = SynthSpec::tiny_llama();
        spec.vocab_size = 100;
        assert!(spec.validate().is_err());
        let mut spec = SynthSpec::tiny_llama();
        spec.head_dim = Some(15);
        assert!(spec.validate().is_err());
    }
}
