//! Synthetic LoRA adapters in PEFT's format for a synthetic model: seeded random `A` and `B`
//! (PEFT starts `B` at zero, which would make an adapter change nothing), for tests and
//! benchmarks of adapter serving.

use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use safetensors::tensor::TensorView;

use super::{write_file, SynthFamily, SynthSpec};
use crate::error::PackageError;

/// What to adapt and how strongly.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    /// PEFT module names (`q_proj`, `down_proj`, …).
    pub target_modules: Vec<String>,
    pub seed: u64,
}

impl LoraSpec {
    /// Rank 8 over every attention and MLP projection.
    pub fn all_projections(seed: u64) -> Self {
        let modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
        Self { rank: 8, alpha: 16.0, target_modules: modules.map(String::from).to_vec(), seed }
    }
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` for `lora` over `model`.
pub fn write_lora_adapter(
    model: &SynthSpec,
    lora: &LoraSpec,
    dir: &Path,
) -> Result<(), PackageError> {
    if model.family != SynthFamily::Llama && model.family != SynthFamily::Qwen3 {
        return Err(PackageError::InvalidSpec(
            "synthetic adapters are written for Llama and Qwen3".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| PackageError::io(dir, e))?;
    let (h, inter, hd) = (model.hidden_size, model.intermediate_size, model.head_dim());
    let (q, kv) = (model.num_attention_heads * hd, model.num_key_value_heads * hd);
    let mut rng = ChaCha8Rng::seed_from_u64(lora.seed);
    let normal = Normal::new(0.0f32, 0.05).map_err(|e| PackageError::InvalidSpec(e.to_string()))?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for layer in 0..model.num_hidden_layers {
        for module in &lora.target_modules {
            let (block, in_dim, out_dim) = match module.as_str() {
                "q_proj" => ("self_attn", h, q),
                "k_proj" | "v_proj" => ("self_attn", h, kv),
                "o_proj" => ("self_attn", q, h),
                "gate_proj" | "up_proj" => ("mlp", h, inter),
                "down_proj" => ("mlp", inter, h),
                other => return Err(PackageError::InvalidSpec(format!("no module `{other}`"))),
            };
            let path = format!("base_model.model.model.layers.{layer}.{block}.{module}");
            for (half, shape) in [("A", [lora.rank, in_dim]), ("B", [out_dim, lora.rank])] {
                let values: Vec<u8> = (0..shape[0] * shape[1])
                    .flat_map(|_| normal.sample(&mut rng).to_le_bytes())
                    .collect();
                tensors.push((format!("{path}.lora_{half}.weight"), shape.to_vec(), values));
            }
        }
    }
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            let view = TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map_err(|e| PackageError::InvalidSpec(e.to_string()))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<Vec<_>, PackageError>>()?;
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| PackageError::InvalidSpec(e.to_string()))?;
    write_file(dir, "adapter_model.safetensors", &bytes)?;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "target_modules": lora.target_modules,
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": false,
        "use_dora": false,
        "fan_in_fan_out": false,
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": model.name,
    });
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| PackageError::InvalidSpec(e.to_string()))?;
    write_file(dir, "adapter_config.json", text.as_bytes())
}
