//! The text files of a synthetic package. JSON files are written from structs, never from maps,
//! so their key order (and thus their bytes) does not depend on serde_json's feature flags.

use std::path::Path;

use hearth_protocol::SamplingParams;
use serde::Serialize;

use super::{
    write_file, SynthFamily, SynthSpec, BOS_TOKEN_ID, END_OF_TEXT_ID, EOS_TOKEN_ID, MOE_EXPERTS,
    MOE_TOP_K, SPECIAL_TOKENS,
};
use crate::cog::COG_FILE;
use crate::error::PackageError;
use crate::model_config::CONFIG_FILE;
use crate::tokens::{GENERATION_CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE};

const PREDICT_FILE: &str = "predict.py";

/// ChatML, as SmolLM2 and Qwen write it.
const CHAT_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

pub(super) fn write_text_files(
    spec: &SynthSpec,
    dir: &Path,
    tokenizer_json: &str,
) -> Result<(), PackageError> {
    write_file(dir, COG_FILE, cog_yaml(spec).as_bytes())?;
    write_file(dir, PREDICT_FILE, predict_py().as_bytes())?;
    write_json(dir, CONFIG_FILE, &LlamaConfig::new(spec))?;
    write_json(dir, GENERATION_CONFIG_FILE, &GenerationConfig::new())?;
    write_json(dir, TOKENIZER_CONFIG_FILE, &TokenizerConfig::new(spec))?;
    write_file(dir, TOKENIZER_FILE, tokenizer_json.as_bytes())
}

fn write_json(dir: &Path, file: &str, value: &impl Serialize) -> Result<(), PackageError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| PackageError::InvalidSpec(format!("{file}: {e}")))?;
    write_file(dir, file, format!("{text}\n").as_bytes())
}

fn cog_yaml(spec: &SynthSpec) -> String {
    format!(
        "# {name}: a Llama-architecture model with seeded random weights, written by Hearth.\n\
         # Hearth serves it natively; predict.py only lets Cog accept the directory too.\n\
         build:\n  gpu: {gpu}\n  python_version: \"3.11\"\n\
         predict: \"predict.py:Predictor\"\n\
         concurrency:\n  max: 16\n",
        name = spec.name,
        gpu = spec.gpu,
    )
}

/// A predictor whose signature declares the inputs Hearth's Cog surface serves, with Hearth's
/// defaults and limits, so that Cog publishes the same input schema.
fn predict_py() -> String {
    let d = SamplingParams::default();
    format!(
        r#"# Hearth serves this package natively from config.json, tokenizer.json and the
# safetensors weights. This predictor exists so that Cog accepts the directory and publishes
# the same inputs; it does not run the model itself.
from typing import Optional

from cog import BasePredictor, ConcatenateIterator, Input


class Predictor(BasePredictor):
    def predict(
        self,
        prompt: str = Input(description="Prompt to send to the model."),
        system_prompt: str = Input(description="System prompt that guides the model.", default=""),
        max_tokens: int = Input(description="Maximum number of tokens to generate.", default={max_tokens}, ge=1),
        temperature: float = Input(description="Sampling temperature; 0 picks the most likely token.", default={temperature:?}, ge=0.0, le=100.0),
        top_p: float = Input(description="Sample from the smallest set of tokens whose probability adds up to top_p (above 0).", default={top_p:?}, le=1.0),
        top_k: int = Input(description="Sample from the k most likely tokens; 0 means no limit.", default={top_k}, ge=0),
        stop_sequences: str = Input(description="Comma-separated sequences that stop generation.", default=""),
        seed: Optional[int] = Input(description="Random seed; leave blank for a random one.", default=None),
        presence_penalty: float = Input(description="Penalty for tokens already generated.", default={presence:?}, ge=-2.0, le=2.0),
        frequency_penalty: float = Input(description="Penalty per occurrence of tokens already generated.", default={frequency:?}, ge=-2.0, le=2.0),
    ) -> ConcatenateIterator[str]:
        raise NotImplementedError("Hearth serves this package natively; run it with `hearth serve`.")
"#,
        max_tokens = d.max_tokens,
        temperature = d.temperature,
        top_p = d.top_p,
        top_k = d.top_k,
        presence = d.presence_penalty,
        frequency = d.frequency_penalty,
    )
}

/// `config.json` in Hugging Face's Llama format.
#[derive(Serialize)]
struct LlamaConfig {
    architectures: [&'static str; 1],
    model_type: &'static str,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    head_dim: usize,
    hidden_act: &'static str,
    max_position_embeddings: usize,
    rms_norm_eps: f64,
    rope_theta: f64,
    rope_scaling: Option<()>,
    attention_bias: bool,
    attention_dropout: f64,
    mlp_bias: bool,
    initializer_range: f64,
    tie_word_embeddings: bool,
    vocab_size: usize,
    bos_token_id: u32,
    eos_token_id: u32,
    torch_dtype: &'static str,
    use_cache: bool,
    #[serde(flatten)]
    gemma: Option<GemmaConfig>,
    #[serde(flatten)]
    moe: Option<MoeConfig>,
}

/// What a mixture-of-experts config adds, under each family's own keys.
#[derive(Serialize, Default)]
struct MoeConfig {
    /// Qwen's name for the expert count; Mixtral's is `num_local_experts`.
    #[serde(skip_serializing_if = "Option::is_none")]
    num_experts: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    num_local_experts: Option<usize>,
    num_experts_per_tok: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    moe_intermediate_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shared_expert_intermediate_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    norm_topk_prob: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decoder_sparse_step: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mlp_only_layers: Option<[usize; 0]>,
}

impl MoeConfig {
    fn new(spec: &SynthSpec) -> Option<Self> {
        let inter = spec.intermediate_size;
        let qwen = |norm_topk_prob, shared| Self {
            num_experts: Some(MOE_EXPERTS),
            num_experts_per_tok: MOE_TOP_K,
            moe_intermediate_size: Some(inter / 4),
            shared_expert_intermediate_size: shared,
            norm_topk_prob: Some(norm_topk_prob),
            decoder_sparse_step: Some(1),
            mlp_only_layers: Some([]),
            ..Self::default()
        };
        match spec.family {
            SynthFamily::Qwen3Moe => Some(qwen(true, None)),
            SynthFamily::Qwen2Moe => Some(qwen(false, Some(inter / 2))),
            SynthFamily::Mixtral => Some(Self {
                num_local_experts: Some(MOE_EXPERTS),
                num_experts_per_tok: MOE_TOP_K,
                ..Self::default()
            }),
            _ => None,
        }
    }
}

/// What a Gemma config adds: the values of the published Gemma 2 and Gemma 3 checkpoints.
#[derive(Serialize)]
struct GemmaConfig {
    hidden_activation: &'static str,
    query_pre_attn_scalar: usize,
    sliding_window: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    sliding_window_pattern: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rope_local_base_freq: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    final_logit_softcapping: Option<f64>,
}

impl GemmaConfig {
    fn new(spec: &SynthSpec) -> Option<Self> {
        let gemma2 = match spec.family {
            SynthFamily::Llama
            | SynthFamily::Qwen3
            | SynthFamily::Phi3
            | SynthFamily::Qwen3Moe
            | SynthFamily::Qwen2Moe
            | SynthFamily::Mixtral => return None,
            SynthFamily::Gemma2 => true,
            SynthFamily::Gemma3 => false,
        };
        Some(Self {
            hidden_activation: "gelu_pytorch_tanh",
            query_pre_attn_scalar: spec.head_dim(),
            sliding_window: 512,
            sliding_window_pattern: (!gemma2).then_some(6),
            rope_local_base_freq: (!gemma2).then_some(10_000.0),
            attn_logit_softcapping: gemma2.then_some(50.0),
            final_logit_softcapping: gemma2.then_some(30.0),
        })
    }
}

impl LlamaConfig {
    fn new(spec: &SynthSpec) -> Self {
        Self {
            architectures: match spec.family {
                SynthFamily::Llama => ["LlamaForCausalLM"],
                SynthFamily::Qwen3 => ["Qwen3ForCausalLM"],
                SynthFamily::Gemma2 => ["Gemma2ForCausalLM"],
                SynthFamily::Gemma3 => ["Gemma3ForCausalLM"],
                SynthFamily::Phi3 => ["Phi3ForCausalLM"],
                SynthFamily::Qwen3Moe => ["Qwen3MoeForCausalLM"],
                SynthFamily::Qwen2Moe => ["Qwen2MoeForCausalLM"],
                SynthFamily::Mixtral => ["MixtralForCausalLM"],
            },
            model_type: match spec.family {
                SynthFamily::Llama => "llama",
                SynthFamily::Qwen3 => "qwen3",
                SynthFamily::Gemma2 => "gemma2",
                SynthFamily::Gemma3 => "gemma3_text",
                SynthFamily::Phi3 => "phi3",
                SynthFamily::Qwen3Moe => "qwen3_moe",
                SynthFamily::Qwen2Moe => "qwen2_moe",
                SynthFamily::Mixtral => "mixtral",
            },
            hidden_size: spec.hidden_size,
            intermediate_size: spec.intermediate_size,
            num_hidden_layers: spec.num_hidden_layers,
            num_attention_heads: spec.num_attention_heads,
            num_key_value_heads: spec.num_key_value_heads,
            head_dim: spec.head_dim(),
            hidden_act: match spec.family {
                SynthFamily::Gemma2 | SynthFamily::Gemma3 => "gelu_pytorch_tanh",
                _ => "silu",
            },
            max_position_embeddings: spec.max_position_embeddings,
            rms_norm_eps: 1e-5,
            rope_theta: spec.rope_theta,
            rope_scaling: None,
            attention_bias: false,
            attention_dropout: 0.0,
            mlp_bias: false,
            initializer_range: 0.02,
            tie_word_embeddings: spec.tie_word_embeddings,
            vocab_size: spec.vocab_size,
            bos_token_id: BOS_TOKEN_ID,
            eos_token_id: EOS_TOKEN_ID,
            torch_dtype: spec.dtype.torch_name(),
            use_cache: true,
            gemma: GemmaConfig::new(spec),
            moe: MoeConfig::new(spec),
        }
    }
}

/// `generation_config.json`: stop at the end of a turn or of the text.
#[derive(Serialize)]
struct GenerationConfig {
    bos_token_id: u32,
    eos_token_id: [u32; 2],
}

impl GenerationConfig {
    fn new() -> Self {
        Self { bos_token_id: BOS_TOKEN_ID, eos_token_id: [EOS_TOKEN_ID, END_OF_TEXT_ID] }
    }
}

#[derive(Serialize)]
struct TokenizerConfig {
    add_bos_token: bool,
    add_eos_token: bool,
    bos_token: &'static str,
    eos_token: &'static str,
    pad_token: &'static str,
    unk_token: Option<()>,
    chat_template: &'static str,
    clean_up_tokenization_spaces: bool,
    model_max_length: usize,
    tokenizer_class: &'static str,
}

impl TokenizerConfig {
    fn new(spec: &SynthSpec) -> Self {
        let token = |id: u32| SPECIAL_TOKENS[id as usize];
        Self {
            // ChatML marks turns itself; like SmolLM2, no BOS is prepended to raw prompts.
            add_bos_token: false,
            add_eos_token: false,
            bos_token: token(BOS_TOKEN_ID),
            eos_token: token(EOS_TOKEN_ID),
            pad_token: token(END_OF_TEXT_ID),
            unk_token: None,
            chat_template: CHAT_TEMPLATE,
            clean_up_tokenization_spaces: false,
            model_max_length: spec.max_position_embeddings,
            tokenizer_class: "PreTrainedTokenizerFast",
        }
    }
}
