//! `config.json` for the Llama family: parsing, validation, and the checkpoint layout it implies.

use serde::Deserialize;

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
    #[serde(default)]
    pub tie_word_embeddings: bool,
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
    #[serde(default)]
    rope_parameters: Option<RawRope>,
    #[serde(default)]
    partial_rotary_factor: Option<f64>,
    /// Outer `None`: key absent (family default applies); inner `None`: explicitly `null`.
    #[serde(default, deserialize_with = "present")]
    sliding_window: Option<Option<usize>>,
    #[serde(default)]
    use_sliding_window: bool,
    #[serde(default)]
    max_window_layers: Option<usize>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct RawRope {
    rope_type: Option<String>,
    /// Older spelling of `rope_type`.
    #[serde(rename = "type")]
    legacy_type: Option<String>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<f64>,
    partial_rotary_factor: Option<f64>,
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
}

impl Family {
    const SUPPORTED: &'static str =
        "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM";

    fn from_architecture(name: &str) -> Option<Self> {
        match name {
            "LlamaForCausalLM" => Some(Self::Llama),
            "MistralForCausalLM" => Some(Self::Mistral),
            "Qwen2ForCausalLM" => Some(Self::Qwen2),
            "Qwen3ForCausalLM" => Some(Self::Qwen3),
            _ => None,
        }
    }
}

/// How RoPE frequencies are derived from `theta`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1's banded frequency scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    pub theta: f64,
    pub scaling: RopeScaling,
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

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, reason: reason.into() }
}

/// Which optional weights a family's checkpoints carry.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub qk_norm: bool,
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
        if self.hidden_act != "silu" {
            return Err(invalid(
                "hidden_act",
                format!("`{}` is not supported (only `silu`)", self.hidden_act),
            ));
        }
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
        self.rope()?;
        self.sliding_windows().map(|_| ())
    }

    pub fn family(&self) -> std::result::Result<Family, ConfigError> {
        let arch = self
            .architectures
            .first()
            .ok_or_else(|| invalid("architectures", "is missing or empty"))?;
        Family::from_architecture(arch)
            .ok_or_else(|| ConfigError::UnsupportedArchitecture(arch.clone()))
    }

    pub fn num_key_value_heads(&self) -> usize {
        self.kv_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        match (self.explicit_head_dim, self.family()) {
            (Some(d), _) => d,
            // transformers' Qwen3Config defaults head_dim to 128 rather than deriving it.
            (None, Ok(Family::Qwen3)) => 128,
            (None, _) => self.hidden_size / self.num_attention_heads.max(1),
        }
    }

    /// RoPE base and scaling, from either `rope_theta` + `rope_scaling` or `rope_parameters`.
    pub fn rope(&self) -> std::result::Result<Rope, ConfigError> {
        let raw =
            self.rope_scaling.clone().or_else(|| self.rope_parameters.clone()).unwrap_or_default();
        let theta = raw.rope_theta.or(self.rope_theta).unwrap_or(10_000.0);
        if theta.is_nan() || theta <= 0.0 {
            return Err(invalid("rope_theta", "must be positive"));
        }
        let partial = raw.partial_rotary_factor.or(self.partial_rotary_factor).unwrap_or(1.0);
        if partial != 1.0 {
            return Err(invalid(
                "partial_rotary_factor",
                "partial rotary embeddings are not supported",
            ));
        }
        let kind = raw.rope_type.as_deref().or(raw.legacy_type.as_deref()).unwrap_or("default");
        let need = |v: Option<f64>, name: &str| {
            v.filter(|v| *v > 0.0).ok_or_else(|| {
                invalid("rope_scaling", format!("`{kind}` needs a positive `{name}`"))
            })
        };
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor: need(raw.factor, "factor")? },
            "llama3" => RopeScaling::Llama3 {
                factor: need(raw.factor, "factor")?,
                low_freq_factor: need(raw.low_freq_factor, "low_freq_factor")?,
                high_freq_factor: need(raw.high_freq_factor, "high_freq_factor")?,
                original_max_position_embeddings: need(
                    raw.original_max_position_embeddings,
                    "original_max_position_embeddings",
                )?,
            },
            other => {
                let reason =
                    format!("rope type `{other}` is not supported (default, linear, llama3)");
                return Err(invalid("rope_scaling", reason));
            }
        };
        if let RopeScaling::Llama3 { low_freq_factor, high_freq_factor, .. } = scaling {
            if high_freq_factor <= low_freq_factor {
                return Err(invalid(
                    "rope_scaling",
                    "llama3 needs high_freq_factor > low_freq_factor",
                ));
            }
        }
        Ok(Rope { theta, scaling })
    }

    /// Each layer's attention window (`None`: full causal attention), as transformers decides it.
    pub fn sliding_windows(&self) -> std::result::Result<Vec<Option<usize>>, ConfigError> {
        let family = self.family()?;
        // transformers' Mistral and Qwen configs default the window to 4096 when the key is absent.
        let window = self.sliding_window.unwrap_or(Some(4096));
        let windows = match family {
            Family::Llama => vec![None; self.num_hidden_layers],
            Family::Mistral => vec![window; self.num_hidden_layers],
            Family::Qwen2 | Family::Qwen3 => {
                self.qwen_windows(window.filter(|_| self.use_sliding_window))?
            }
        };
        if windows.contains(&Some(0)) {
            return Err(invalid("sliding_window", "must be at least 1"));
        }
        Ok(windows)
    }

    /// Qwen: explicit `layer_types`, else layers from `max_window_layers` on slide when enabled.
    fn qwen_windows(
        &self,
        window: Option<usize>,
    ) -> std::result::Result<Vec<Option<usize>>, ConfigError> {
        let Some(types) = &self.layer_types else {
            let first = self.max_window_layers.unwrap_or(28);
            return Ok((0..self.num_hidden_layers)
                .map(|i| window.filter(|_| i >= first))
                .collect());
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
        // A config that failed validation is described by plain Llama rules.
        match self.family().unwrap_or(Family::Llama) {
            Family::Llama => Layout {
                qkv_bias: self.attention_bias,
                o_bias: self.attention_bias,
                mlp_bias: self.mlp_bias,
                qk_norm: false,
            },
            Family::Mistral => {
                Layout { qkv_bias: false, o_bias: false, mlp_bias: false, qk_norm: false }
            }
            Family::Qwen2 => {
                Layout { qkv_bias: true, o_bias: false, mlp_bias: false, qk_norm: false }
            }
            Family::Qwen3 => Layout {
                qkv_bias: self.attention_bias,
                o_bias: self.attention_bias,
                mlp_bias: false,
                qk_norm: true,
            },
        }
    }
}

/// The exact tensor names and shapes a checkpoint for `cfg` must hold.
pub fn expected_tensors(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (h, hd, inter) = (cfg.hidden_size, cfg.head_dim(), cfg.intermediate_size);
    let (q_out, kv_out) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads() * hd);
    let layout = cfg.layout();
    let mut out = vec![("model.embed_tokens.weight".to_owned(), vec![cfg.vocab_size, h])];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let mut push = |name: &str, shape: Vec<usize>| out.push((format!("{p}.{name}"), shape));
        push("input_layernorm.weight", vec![h]);
        push("post_attention_layernorm.weight", vec![h]);
        let linears = [
            ("self_attn.q_proj", q_out, h, layout.qkv_bias),
            ("self_attn.k_proj", kv_out, h, layout.qkv_bias),
            ("self_attn.v_proj", kv_out, h, layout.qkv_bias),
            ("self_attn.o_proj", h, q_out, layout.o_bias),
            ("mlp.gate_proj", inter, h, layout.mlp_bias),
            ("mlp.up_proj", inter, h, layout.mlp_bias),
            ("mlp.down_proj", h, inter, layout.mlp_bias),
        ];
        for (name, rows, cols, bias) in linears {
            push(&format!("{name}.weight"), vec![rows, cols]);
            if bias {
                push(&format!("{name}.bias"), vec![rows]);
            }
        }
        if layout.qk_norm {
            push("self_attn.q_norm.weight", vec![hd]);
            push("self_attn.k_norm.weight", vec![hd]);
        }
    }
    out.push(("model.norm.weight".to_owned(), vec![h]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_owned(), vec![cfg.vocab_size, h]));
    }
    out
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
            with(json!({"hidden_act": "gelu"})),
            with(json!({"num_key_value_heads": 3})),
        ];
        for case in cases {
            assert!(LlamaConfig::from_value(&case).is_err(), "{case}");
        }
        let err = LlamaConfig::from_value(&with(json!({"architectures": ["Foo"]}))).unwrap_err();
        assert!(err.to_string().contains("Qwen3ForCausalLM"), "{err}");
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
