//! `config.json` for the Llama family: parsing, validation, and the checkpoint layout it implies.
//!
//! Gemma 2 and Gemma 3 (text) are Llama-shaped decoders with extras, and are read here too:
//! norms that multiply by `1 + weight`, a second norm around each block ("sandwich" norms),
//! embeddings scaled by `√hidden_size`, GeLU, an attention scale from `query_pre_attn_scalar`,
//! tanh soft-capping of attention scores and logits (Gemma 2), QK norms and a RoPE base per layer
//! kind (Gemma 3), and sliding-window layers alternating with global ones.

use serde::Deserialize;

use super::moe::{MoeFields, MoeSpec};
pub use super::rope::{LongRope, Rope, RopeScaling};
use super::rope::{RawRope, RopeContext};
pub use crate::models::activation::Activation;

/// What a Hugging Face `config.json` says about a Llama-family model. Deserialize it with
/// [`LlamaConfig::from_value`], which also validates it.
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// Gemma's name for the MLP activation (its `hidden_act` is not what runs).
    #[serde(default)]
    hidden_activation: Option<String>,
    /// Absent: the family's default (tied for Gemma, untied otherwise).
    #[serde(default, rename = "tie_word_embeddings")]
    tied: Option<bool>,
    #[serde(default, rename = "num_key_value_heads")]
    kv_heads: Option<usize>,
    #[serde(default, rename = "head_dim")]
    explicit_head_dim: Option<usize>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    rope_theta: Option<f64>,
    /// The layout published checkpoints use; `transformers` 5 writes `rope_parameters` instead.
    #[serde(default)]
    rope_scaling: Option<RawRope>,
    /// One rope, or (Gemma 3 in transformers 5) one per layer kind: `{"full_attention": {…},
    /// "sliding_attention": {…}}`.
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
    /// Gemma 3's RoPE base for its sliding-window layers, in published checkpoints.
    #[serde(default)]
    rope_local_base_freq: Option<f64>,
    #[serde(default)]
    partial_rotary_factor: Option<f64>,
    /// Phi-3's pretraining context, where LongRoPE switches to its long factors.
    #[serde(default)]
    original_max_position_embeddings: Option<usize>,
    /// Outer `None`: key absent (family default applies); inner `None`: explicitly `null`.
    #[serde(default, deserialize_with = "present")]
    sliding_window: Option<Option<usize>>,
    #[serde(default)]
    use_sliding_window: bool,
    #[serde(default)]
    max_window_layers: Option<usize>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    /// Gemma 3: every `sliding_window_pattern`-th layer is global, when `layer_types` is absent.
    #[serde(default)]
    sliding_window_pattern: Option<usize>,
    /// Gemma: attention scores are scaled by `query_pre_attn_scalar^-0.5`, not `head_dim^-0.5`.
    #[serde(default)]
    query_pre_attn_scalar: Option<f64>,
    /// Gemma 2: scores become `cap · tanh(scores / cap)` before the mask and softmax.
    #[serde(default)]
    attn_logit_softcapping: Option<f64>,
    /// Gemma 2: logits become `cap · tanh(logits / cap)`.
    #[serde(default)]
    final_logit_softcapping: Option<f64>,
    #[serde(flatten)]
    moe: MoeFields,
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}

fn default_hidden_act() -> String {
    "silu".to_owned()
}

/// Keeps "key present but `null`" apart from "key absent", which takes the family default.
fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Option<usize>>, D::Error> {
    Option::<usize>::deserialize(d).map(Some)
}

/// The checkpoint layout a model follows, chosen by `architectures[0]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma2,
    Gemma3,
    /// Phi-3 and Phi-4 (`Phi3ForCausalLM`).
    Phi3,
    /// Mixtral's mixture of experts over a Mistral decoder.
    Mixtral,
    /// Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): experts plus a gated shared expert.
    Qwen2Moe,
    /// Qwen3-MoE (Qwen3-30B-A3B, 235B-A22B): experts over a Qwen3 decoder.
    Qwen3Moe,
}

impl Family {
    const SUPPORTED: &'static str = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, \
        Qwen3ForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, Phi3ForCausalLM, \
        MixtralForCausalLM, Qwen2MoeForCausalLM, Qwen3MoeForCausalLM";

    fn from_architecture(name: &str) -> Option<Self> {
        match name {
            "LlamaForCausalLM" => Some(Self::Llama),
            "MistralForCausalLM" => Some(Self::Mistral),
            "Qwen2ForCausalLM" => Some(Self::Qwen2),
            "Qwen3ForCausalLM" => Some(Self::Qwen3),
            "Gemma2ForCausalLM" => Some(Self::Gemma2),
            "Gemma3ForCausalLM" => Some(Self::Gemma3),
            "Phi3ForCausalLM" => Some(Self::Phi3),
            "MixtralForCausalLM" => Some(Self::Mixtral),
            "Qwen2MoeForCausalLM" => Some(Self::Qwen2Moe),
            "Qwen3MoeForCausalLM" => Some(Self::Qwen3Moe),
            _ => None,
        }
    }

    fn is_gemma(self) -> bool {
        matches!(self, Self::Gemma2 | Self::Gemma3)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported architecture `{0}`; supported: {supported}", supported = Family::SUPPORTED)]
    UnsupportedArchitecture(String),
    #[error("`{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

pub(super) fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, reason: reason.into() }
}

/// Which optional weights a family's checkpoints carry, and how its blocks use them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub qk_norm: bool,
    /// Norm weights are stored as `w` and multiply by `1 + w` (Gemma).
    pub norm_offset: bool,
    /// Attention and MLP outputs are normed again before their residual add, and the MLP's input
    /// norm is `pre_feedforward_layernorm` (Gemma's `post_attention_layernorm` is the former).
    pub sandwich_norms: bool,
    /// Embeddings are multiplied by `√hidden_size` (Gemma).
    pub scaled_embeddings: bool,
    /// One `qkv_proj` (queries, keys, values in that order) and one `gate_up_proj` (gate, then
    /// up) instead of separate projections (Phi-3).
    pub fused_projections: bool,
}

impl LlamaConfig {
    /// Parses and validates a `config.json` document.
    pub fn from_value(value: &serde_json::Value) -> std::result::Result<Self, ConfigError> {
        let cfg = Self::deserialize(value)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        self.family()?;
        self.activation()?;
        let nonzero = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads()),
        ];
        if let Some((field, _)) = nonzero.iter().find(|(_, v)| *v == 0) {
            return Err(invalid(field, "must be at least 1"));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads()) {
            return Err(invalid("num_key_value_heads", "must divide num_attention_heads"));
        }
        if self.explicit_head_dim.is_none()
            && !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(invalid("hidden_size", "must be a multiple of num_attention_heads"));
        }
        if self.head_dim() == 0 || !self.head_dim().is_multiple_of(2) {
            return Err(invalid("head_dim", "RoPE needs an even, nonzero head dimension"));
        }
        let caps = [
            ("query_pre_attn_scalar", self.query_pre_attn_scalar),
            ("attn_logit_softcapping", self.attn_logit_softcapping),
            ("final_logit_softcapping", self.final_logit_softcapping),
        ];
        if let Some((field, _)) =
            caps.iter().find(|(_, v)| v.is_some_and(|v| v.is_nan() || v <= 0.0))
        {
            return Err(invalid(field, "must be positive"));
        }
        self.layer_ropes()?;
        self.moe()?;
        self.sliding_windows().map(|_| ())
    }

    /// The mixture-of-experts layers (`None`: a dense model).
    pub fn moe(&self) -> std::result::Result<Option<MoeSpec>, ConfigError> {
        self.moe.spec(self.family()?, self.num_hidden_layers, self.intermediate_size)
    }

    /// The MLP's activation: `hidden_act`, or Gemma's `hidden_activation`.
    pub fn activation(&self) -> std::result::Result<Activation, ConfigError> {
        let (field, name) = match (&self.hidden_activation, self.family()?.is_gemma()) {
            (Some(name), true) => ("hidden_activation", name.as_str()),
            (None, true) => ("hidden_activation", "gelu_pytorch_tanh"),
            (_, false) => ("hidden_act", self.hidden_act.as_str()),
        };
        match Activation::parse(name) {
            Ok(a @ (Activation::Silu | Activation::GeluTanh | Activation::Gelu)) => Ok(a),
            Ok(_) => Err(invalid(field, format!("`{name}` is not supported in a decoder"))),
            Err(reason) => Err(invalid(field, reason)),
        }
    }

    /// The factor attention scores are multiplied by before the softmax.
    pub fn attention_scale(&self) -> f64 {
        match self.query_pre_attn_scalar {
            Some(s) if self.family().is_ok_and(Family::is_gemma) => s.powf(-0.5),
            _ => (self.head_dim() as f64).powf(-0.5),
        }
    }

    /// Gemma 2's soft cap on attention scores (`None`: uncapped).
    pub fn attention_softcap(&self) -> Option<f64> {
        self.attn_logit_softcapping.filter(|_| self.family().is_ok_and(Family::is_gemma))
    }

    /// Gemma 2's soft cap on the final logits (`None`: uncapped).
    pub fn logit_softcap(&self) -> Option<f64> {
        self.final_logit_softcapping.filter(|_| self.family().is_ok_and(Family::is_gemma))
    }

    pub fn family(&self) -> std::result::Result<Family, ConfigError> {
        let arch = self
            .architectures
            .first()
            .ok_or_else(|| invalid("architectures", "is missing or empty"))?;
        Family::from_architecture(arch)
            .ok_or_else(|| ConfigError::UnsupportedArchitecture(arch.clone()))
    }

    /// Whether the LM head is the embedding matrix (no `lm_head.weight`).
    pub fn tie_word_embeddings(&self) -> bool {
        self.tied.unwrap_or_else(|| self.family().is_ok_and(Family::is_gemma))
    }

    pub fn num_key_value_heads(&self) -> usize {
        self.kv_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        match (self.explicit_head_dim, self.family()) {
            (Some(d), _) => d,
            // transformers' Qwen3 and Gemma configs default head_dim rather than deriving it.
            (None, Ok(Family::Qwen3)) => 128,
            (None, Ok(Family::Gemma2 | Family::Gemma3)) => 256,
            (None, _) => self.hidden_size / self.num_attention_heads.max(1),
        }
    }

    /// RoPE base and scaling of the full-attention layers (of every layer but Gemma 3's
    /// sliding ones), from either `rope_theta` + `rope_scaling` or `rope_parameters`.
    pub fn rope(&self) -> std::result::Result<Rope, ConfigError> {
        self.rope_of(false)
    }

    /// Each layer's RoPE, in layer order.
    pub fn layer_ropes(&self) -> std::result::Result<Vec<Rope>, ConfigError> {
        let full = self.rope_of(false)?;
        let sliding = self.rope_of(true)?;
        let windows = self.sliding_windows()?;
        Ok(windows
            .iter()
            .map(|w| if w.is_some() { sliding.clone() } else { full.clone() })
            .collect())
    }

    /// The RoPE of full (`sliding = false`) or sliding-window layers: the same but in Gemma 3,
    /// whose sliding layers have their own base (`rope_local_base_freq`, or the
    /// `sliding_attention` entry of transformers 5's `rope_parameters`) and no scaling.
    fn rope_of(&self, sliding: bool) -> std::result::Result<Rope, ConfigError> {
        let gemma3 = self.family()? == Family::Gemma3;
        let per_kind = self
            .rope_parameters
            .as_ref()
            .filter(|v| v.get("full_attention").is_some() || v.get("sliding_attention").is_some());
        let kind = if sliding && gemma3 { "sliding_attention" } else { "full_attention" };
        let raw = match (per_kind, &self.rope_scaling, &self.rope_parameters) {
            (Some(params), _, _) => match params.get(kind) {
                Some(params) => RawRope::deserialize(params)?,
                None => return Err(invalid("rope_parameters", format!("no `{kind}` entry"))),
            },
            _ if sliding && gemma3 => RawRope::plain(self.rope_local_base_freq.unwrap_or(10_000.0)),
            (None, Some(scaling), _) => scaling.clone(),
            (None, None, Some(params)) => RawRope::deserialize(params)?,
            (None, None, None) => RawRope::default(),
        };
        // transformers' Gemma3TextConfig defaults rope_theta to 1e6, the others to 1e4.
        let default_theta = if gemma3 { 1_000_000.0 } else { 10_000.0 };
        raw.parse(&RopeContext {
            default_theta: self.rope_theta.unwrap_or(default_theta),
            partial_rotary_factor: self.partial_rotary_factor,
            max_position_embeddings: self.max_position_embeddings,
            original_max_position_embeddings: self.original_max_position_embeddings,
            head_dim: self.head_dim(),
        })
    }

    /// Each layer's attention window (`None`: full causal attention), as transformers decides it.
    pub fn sliding_windows(&self) -> std::result::Result<Vec<Option<usize>>, ConfigError> {
        let family = self.family()?;
        // transformers' Mistral and Qwen configs default the window to 4096 when the key is absent.
        let window = self.sliding_window.unwrap_or(Some(4096));
        let windows = match family {
            Family::Llama => vec![None; self.num_hidden_layers],
            Family::Mistral => vec![window; self.num_hidden_layers],
            // transformers' Phi3 and Mixtral configs have no window unless the checkpoint names one.
            Family::Phi3 | Family::Mixtral => {
                vec![self.sliding_window.flatten(); self.num_hidden_layers]
            }
            Family::Qwen3Moe => {
                vec![window.filter(|_| self.use_sliding_window); self.num_hidden_layers]
            }
            // transformers: even layers below max_window_layers, when sliding is on.
            Family::Qwen2Moe => {
                let first = self.max_window_layers.unwrap_or(28);
                let slides = |i: usize| i.is_multiple_of(2) && i < first;
                self.typed_windows(window.filter(|_| self.use_sliding_window), slides)?
            }
            Family::Qwen2 | Family::Qwen3 => {
                let first = self.max_window_layers.unwrap_or(28);
                self.typed_windows(window.filter(|_| self.use_sliding_window), |i| i >= first)?
            }
            // transformers: Gemma 2's even layers slide; Gemma 3's all but every sixth.
            Family::Gemma2 => self.typed_windows(window, |i| i.is_multiple_of(2))?,
            Family::Gemma3 => {
                let every = self.sliding_window_pattern.unwrap_or(6);
                if every == 0 {
                    return Err(invalid("sliding_window_pattern", "must be at least 1"));
                }
                self.typed_windows(window, |i| (i + 1) % every != 0)?
            }
        };
        if windows.contains(&Some(0)) {
            return Err(invalid("sliding_window", "must be at least 1"));
        }
        Ok(windows)
    }

    /// Explicit `layer_types`, else the family's rule: layer `i` slides where `slides(i)`.
    fn typed_windows(
        &self,
        window: Option<usize>,
        slides: impl Fn(usize) -> bool,
    ) -> std::result::Result<Vec<Option<usize>>, ConfigError> {
        let Some(types) = &self.layer_types else {
            return Ok((0..self.num_hidden_layers).map(|i| window.filter(|_| slides(i))).collect());
        };
        if types.len() != self.num_hidden_layers {
            return Err(invalid("layer_types", "needs one entry per hidden layer"));
        }
        types
            .iter()
            .map(|t| match t.as_str() {
                "full_attention" => Ok(None),
                "sliding_attention" => Ok(window),
                other => Err(invalid("layer_types", format!("unknown layer type `{other}`"))),
            })
            .collect()
    }

    pub(super) fn layout(&self) -> Layout {
        let plain = Layout {
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
            norm_offset: false,
            sandwich_norms: false,
            scaled_embeddings: false,
            fused_projections: false,
        };
        // A config that failed validation is described by plain Llama rules.
        let family = self.family().unwrap_or(Family::Llama);
        match family {
            Family::Llama => Layout {
                qkv_bias: self.attention_bias,
                o_bias: self.attention_bias,
                mlp_bias: self.mlp_bias,
                ..plain
            },
            Family::Mistral | Family::Mixtral => plain,
            Family::Phi3 => Layout { fused_projections: true, ..plain },
            Family::Qwen2 | Family::Qwen2Moe => Layout { qkv_bias: true, ..plain },
            Family::Qwen3 | Family::Qwen3Moe => Layout {
                qkv_bias: self.attention_bias,
                o_bias: self.attention_bias,
                qk_norm: true,
                ..plain
            },
            Family::Gemma2 | Family::Gemma3 => Layout {
                qkv_bias: self.attention_bias,
                o_bias: self.attention_bias,
                qk_norm: family == Family::Gemma3,
                norm_offset: true,
                sandwich_norms: true,
                scaled_embeddings: true,
                ..plain
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> serde_json::Value {
        json!({
            "architectures": ["LlamaForCausalLM"], "vocab_size": 32, "hidden_size": 16,
            "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 64
        })
    }

    fn with(patch: serde_json::Value) -> serde_json::Value {
        let mut v = base();
        for (k, x) in patch.as_object().into_iter().flatten() {
            v[k] = x.clone();
        }
        v
    }

    #[test]
    fn reads_both_rope_layouts() {
        let scaling = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let legacy =
            LlamaConfig::from_value(&with(json!({"rope_theta": 5e5, "rope_scaling": scaling})))
                .unwrap();
        let mut params = scaling.clone();
        params["rope_theta"] = json!(5e5);
        let modern = LlamaConfig::from_value(&with(json!({"rope_parameters": params}))).unwrap();
        assert_eq!(legacy.rope().unwrap(), modern.rope().unwrap());
        assert_eq!(legacy.rope().unwrap().theta, 5e5);
        let linear = with(json!({"rope_scaling": {"type": "linear", "factor": 2.0}}));
        let linear = LlamaConfig::from_value(&linear).unwrap().rope().unwrap();
        assert_eq!(linear.scaling, RopeScaling::Linear { factor: 2.0 });
    }

    #[test]
    fn rejects_what_it_cannot_run() {
        let cases = [
            with(json!({"architectures": ["GPT2LMHeadModel"]})),
            with(json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})),
            with(json!({"hidden_act": "relu"})),
            with(json!({"num_key_value_heads": 3})),
        ];
        for case in cases {
            assert!(LlamaConfig::from_value(&case).is_err(), "{case}");
        }
        let err = LlamaConfig::from_value(&with(json!({"architectures": ["Foo"]}))).unwrap_err();
        assert!(err.to_string().contains("Qwen3ForCausalLM"), "{err}");
    }

    /// Gemma 3 as published (`rope_theta`, `rope_local_base_freq`, `rope_scaling`) and as
    /// transformers 5 writes it (`rope_parameters` per layer kind) are the same model.
    #[test]
    fn gemma3_ropes_in_both_layouts() {
        let gemma3 = |patch: serde_json::Value| {
            let mut v =
                with(json!({"architectures": ["Gemma3ForCausalLM"], "num_hidden_layers": 4,
                "sliding_window": 8, "sliding_window_pattern": 2}));
            v.as_object_mut().unwrap().extend(patch.as_object().unwrap().clone());
            LlamaConfig::from_value(&v).unwrap()
        };
        let published = gemma3(json!({"rope_theta": 1e6, "rope_local_base_freq": 1e4,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0}}));
        let modern = gemma3(json!({"rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}));
        let local = Rope { theta: 1e4, scaling: RopeScaling::None, partial_rotary_factor: 1.0 };
        let global = Rope {
            theta: 1e6,
            scaling: RopeScaling::Linear { factor: 8.0 },
            partial_rotary_factor: 1.0,
        };
        for cfg in [&published, &modern] {
            assert_eq!(
                cfg.layer_ropes().unwrap(),
                [&local, &global, &local, &global].map(Rope::clone)
            );
            assert_eq!(cfg.sliding_windows().unwrap(), [Some(8), None, Some(8), None]);
            assert!(cfg.tie_word_embeddings(), "Gemma ties its head unless told otherwise");
            assert_eq!(cfg.activation().unwrap(), Activation::GeluTanh);
        }
        let missing = json!({"rope_parameters": {"full_attention": {"rope_theta": 1e6}}});
        let mut v = with(json!({"architectures": ["Gemma3ForCausalLM"]}));
        v["rope_parameters"] = missing["rope_parameters"].clone();
        let err = LlamaConfig::from_value(&v).unwrap_err().to_string();
        assert!(err.contains("sliding_attention"), "{err}");
    }

    #[test]
    fn gemma2_alternates_windows_and_checks_its_caps() {
        let gemma2 = json!({"architectures": ["Gemma2ForCausalLM"], "num_hidden_layers": 3,
            "head_dim": 16,
            "sliding_window": 16, "query_pre_attn_scalar": 64, "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0});
        let cfg = LlamaConfig::from_value(&with(gemma2.clone())).unwrap();
        assert_eq!(cfg.sliding_windows().unwrap(), [Some(16), None, Some(16)]);
        assert_eq!(cfg.attention_scale(), 0.125);
        assert_eq!((cfg.attention_softcap(), cfg.logit_softcap()), (Some(50.0), Some(30.0)));
        assert_eq!(cfg.head_dim(), 16, "an explicit head_dim is kept");
        let mut bad = gemma2.clone();
        bad["attn_logit_softcapping"] = json!(0.0);
        let err = LlamaConfig::from_value(&with(bad)).unwrap_err().to_string();
        assert!(err.contains("attn_logit_softcapping"), "{err}");
        let mut relu = gemma2;
        relu["hidden_activation"] = json!("relu");
        assert!(LlamaConfig::from_value(&with(relu)).is_err());
        // The caps and scalar are Gemma's: another family ignores them.
        let llama =
            LlamaConfig::from_value(&with(json!({"final_logit_softcapping": 30.0}))).unwrap();
        assert_eq!(llama.logit_softcap(), None);
    }

    #[test]
    fn sliding_windows_follow_transformers() {
        let mistral = |w: serde_json::Value| {
            with(json!({"architectures": ["MistralForCausalLM"], "sliding_window": w}))
        };
        let windows = |v| LlamaConfig::from_value(&v).unwrap().sliding_windows().unwrap();
        assert_eq!(windows(mistral(json!(null))), [None, None]);
        assert_eq!(windows(mistral(json!(8))), [Some(8), Some(8)]);
        let mut absent = mistral(json!(null));
        absent.as_object_mut().unwrap().remove("sliding_window");
        assert_eq!(windows(absent), [Some(4096), Some(4096)]);
        let qwen = json!({"architectures": ["Qwen2ForCausalLM"], "sliding_window": 8, "max_window_layers": 1});
        assert_eq!(windows(with(qwen.clone())), [None, None]);
        let mut on = qwen;
        on["use_sliding_window"] = json!(true);
        assert_eq!(windows(with(on)), [None, Some(8)]);
    }
}
