//! BERT-family encoders (BERT, MiniLM and the sentence-transformers models built on them) over
//! right-padded batches.
//!
//! Input is `[batch, len]` token ids and a `[batch, len]` mask (1 for a token, 0 for padding).
//! Embeddings add word, absolute position and token-type (segment 0) vectors, then LayerNorm;
//! each layer runs bidirectional self-attention in which padded keys are masked out, then a
//! post-LayerNorm residual, a GELU MLP and another post-LayerNorm residual. The output is every
//! token's final hidden state, `[batch, len, hidden]`; pooling is the embedder's job. Numerics
//! follow Hugging Face `transformers`' `BertModel` (checked against sentence-transformers
//! vectors of the real all-MiniLM-L6-v2 in `tests/embedder.rs`).

use super::activation::Activation;
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

/// What a Hugging Face `config.json` says about a BERT model. Build it with
/// [`BertConfig::from_value`], which also validates it.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

fn default_hidden_act() -> String {
    "gelu".to_owned()
}

fn default_type_vocab_size() -> usize {
    2
}

fn default_layer_norm_eps() -> f64 {
    1e-12
}

#[derive(Debug, thiserror::Error)]
pub enum BertConfigError {
    #[error("{0}")]
    Parse(#[from] serde_json::Error),
    #[error("`{field}` {message}")]
    Invalid { field: &'static str, message: String },
}

impl BertConfig {
    /// Parses and validates `config.json`.
    pub fn from_value(value: &serde_json::Value) -> std::result::Result<Self, BertConfigError> {
        let cfg = Self::deserialize(value)?;
        let invalid = |field, message: String| BertConfigError::Invalid { field, message };
        for (field, v) in [
            ("vocab_size", cfg.vocab_size),
            ("hidden_size", cfg.hidden_size),
            ("num_hidden_layers", cfg.num_hidden_layers),
            ("num_attention_heads", cfg.num_attention_heads),
            ("intermediate_size", cfg.intermediate_size),
            ("max_position_embeddings", cfg.max_position_embeddings),
            ("type_vocab_size", cfg.type_vocab_size),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be at least 1".into()));
            }
        }
        if cfg.hidden_size % cfg.num_attention_heads != 0 {
            return Err(invalid(
                "hidden_size",
                format!(
                    "({}) must be a multiple of num_attention_heads ({})",
                    cfg.hidden_size, cfg.num_attention_heads
                ),
            ));
        }
        if let Some(kind) = cfg.position_embedding_type.as_deref().filter(|k| *k != "absolute") {
            return Err(invalid(
                "position_embedding_type",
                format!("`{kind}` is not supported (only `absolute`)"),
            ));
        }
        Activation::parse(&cfg.hidden_act).map_err(|m| invalid("hidden_act", m))?;
        Ok(cfg)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The id padded positions get; their value never matters, since the mask hides them.
    pub fn pad_token_id(&self) -> u32 {
        self.pad_token_id.filter(|id| (*id as usize) < self.vocab_size).unwrap_or(0)
    }
}

/// Where the encoder's tensors live in a checkpoint: at the top (`BertModel`, as
/// sentence-transformers saves it) or under `bert.` (`BertForMaskedLM` and friends).
pub fn weight_prefix<'a>(mut names: impl Iterator<Item = &'a str>) -> &'static str {
    if names.any(|n| n.starts_with("bert.embeddings.")) {
        "bert."
    } else {
        ""
    }
}

/// Every tensor the encoder loads, with its shape, under `prefix` (see [`weight_prefix`]).
pub fn expected_tensors(cfg: &BertConfig, prefix: &str) -> Vec<(String, Vec<usize>)> {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let mut out = Vec::new();
    let mut add = |name: String, shape: Vec<usize>| out.push((format!("{prefix}{name}"), shape));
    add("embeddings.word_embeddings.weight".into(), vec![cfg.vocab_size, h]);
    add("embeddings.position_embeddings.weight".into(), vec![cfg.max_position_embeddings, h]);
    add("embeddings.token_type_embeddings.weight".into(), vec![cfg.type_vocab_size, h]);
    add("embeddings.LayerNorm.weight".into(), vec![h]);
    add("embeddings.LayerNorm.bias".into(), vec![h]);
    for l in 0..cfg.num_hidden_layers {
        let p = format!("encoder.layer.{l}");
        for proj in ["attention.self.query", "attention.self.key", "attention.self.value"] {
            add(format!("{p}.{proj}.weight"), vec![h, h]);
            add(format!("{p}.{proj}.bias"), vec![h]);
        }
        add(format!("{p}.attention.output.dense.weight"), vec![h, h]);
        add(format!("{p}.attention.output.dense.bias"), vec![h]);
        add(format!("{p}.attention.output.LayerNorm.weight"), vec![h]);
        add(format!("{p}.attention.output.LayerNorm.bias"), vec![h]);
        add(format!("{p}.intermediate.dense.weight"), vec![i, h]);
        add(format!("{p}.intermediate.dense.bias"), vec![i]);
        add(format!("{p}.output.dense.weight"), vec![h, i]);
        add(format!("{p}.output.dense.bias"), vec![h]);
        add(format!("{p}.output.LayerNorm.weight"), vec![h]);
        add(format!("{p}.output.LayerNorm.bias"), vec![h]);
    }
    out
}

/// Tensors a BERT checkpoint may carry that an encoder does not use: the pooler (trained for
/// next-sentence prediction, not used by sentence-transformers), buffers, and task heads.
pub fn unused_tensor_prefixes(prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = ["pooler.", "embeddings.position_ids", "embeddings.token_type_ids"]
        .iter()
        .map(|name| format!("{prefix}{name}"))
        .collect();
    if !prefix.is_empty() {
        out.extend(["cls.".to_owned(), "classifier.".to_owned(), "qa_outputs.".to_owned()]);
    }
    out
}

struct Embeddings {
    word: Embedding,
    /// `[max_position_embeddings, hidden]`.
    position: Tensor,
    /// Segment 0's vector, `[hidden]`: every input is a single segment.
    token_type: Tensor,
    norm: LayerNorm,
}

impl Embeddings {
    fn new(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let word = candle_nn::embedding(cfg.vocab_size, h, vb.pp("word_embeddings"))?;
        let position = vb.get((cfg.max_position_embeddings, h), "position_embeddings.weight")?;
        let token_type =
            vb.get((cfg.type_vocab_size, h), "token_type_embeddings.weight")?.get(0)?;
        let norm = candle_nn::layer_norm(h, cfg.layer_norm_eps, vb.pp("LayerNorm"))?;
        Ok(Self { word, position, token_type, norm })
    }

    /// `[b, l]` ids → `[b * l, hidden]`.
    fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        let words = self.word.forward(&input_ids.flatten_all()?)?.reshape((b, l, ()))?;
        let positions = self.position.narrow(0, 0, l)?;
        let xs = words.broadcast_add(&positions)?.broadcast_add(&self.token_type)?;
        self.norm.forward(&xs.reshape((b * l, ()))?)
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
    num_heads: usize,
    head_dim: usize,
    activation: Activation,
}

impl Layer {
    fn new(cfg: &BertConfig, activation: Activation, vb: VarBuilder) -> Result<Self> {
        let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        let attn = vb.pp("attention");
        Ok(Self {
            query: candle_nn::linear(h, h, attn.pp("self.query"))?,
            key: candle_nn::linear(h, h, attn.pp("self.key"))?,
            value: candle_nn::linear(h, h, attn.pp("self.value"))?,
            attention_out: candle_nn::linear(h, h, attn.pp("output.dense"))?,
            attention_norm: candle_nn::layer_norm(h, eps, attn.pp("output.LayerNorm"))?,
            intermediate: candle_nn::linear(h, i, vb.pp("intermediate.dense"))?,
            output: candle_nn::linear(i, h, vb.pp("output.dense"))?,
            output_norm: candle_nn::layer_norm(h, eps, vb.pp("output.LayerNorm"))?,
            num_heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
            activation,
        })
    }

    /// `xs` is `[b * l, hidden]`; `bias` is the additive key mask, `[b, 1, 1, l]`.
    fn forward(&self, xs: &Tensor, bias: &Tensor, b: usize, l: usize) -> Result<Tensor> {
        let heads = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, l, self.num_heads, self.head_dim))?.transpose(1, 2)?.contiguous()
        };
        let q = heads(self.query.forward(xs)?)?;
        let k = heads(self.key.forward(xs)?)?;
        let v = heads(self.value.forward(xs)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = probs.matmul(&v)?.transpose(1, 2)?.reshape((b * l, ()))?;
        let attended =
            self.attention_norm.forward(&(self.attention_out.forward(&context)? + xs)?)?;
        let hidden = self.activation.apply(&self.intermediate.forward(&attended)?)?;
        self.output_norm.forward(&(self.output.forward(&hidden)? + attended)?)
    }
}

/// A BERT encoder with its weights on a device.
pub struct Bert {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    hidden_size: usize,
    max_positions: usize,
}

impl Bert {
    /// Builds the encoder from `vb`, which must point at the encoder's own tensors (apply
    /// [`weight_prefix`] first).
    pub fn new(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let activation = Activation::parse(&cfg.hidden_act).map_err(candle_core::Error::msg)?;
        let embeddings = Embeddings::new(cfg, vb.pp("embeddings"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| Layer::new(cfg, activation, vb.pp(format!("encoder.layer.{l}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings,
            layers,
            hidden_size: cfg.hidden_size,
            max_positions: cfg.max_position_embeddings,
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// Runs a right-padded batch: `input_ids` `[b, l]` (u32), `mask` `[b, l]` in the model's
    /// dtype (1 for tokens, 0 for padding). Returns every position's final hidden state,
    /// `[b, l, hidden]`; padded positions hold values that pooling must ignore.
    pub fn forward(&self, input_ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        if l > self.max_positions {
            candle_core::bail!("{l} positions, but the model has {}", self.max_positions);
        }
        let mut xs = self.embeddings.forward(input_ids)?;
        // transformers' eager mask: 0 where a key is visible, the dtype's lowest value where it
        // is padding, so that its softmax weight is exactly 0.
        let lowest = match xs.dtype() {
            DType::F16 => -65504.0,
            DType::BF16 => -3.389_531_389_251_535e38,
            _ => f64::from(f32::MIN),
        };
        let bias =
            ((mask.to_dtype(xs.dtype())?.affine(-1.0, 1.0))? * lowest)?.reshape((b, 1, 1, l))?;
        for layer in &self.layers {
            xs = layer.forward(&xs, &bias, b, l)?;
        }
        xs.reshape((b, l, self.hidden_size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> serde_json::Value {
        serde_json::json!({
            "architectures": ["BertModel"], "model_type": "bert", "vocab_size": 50,
            "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 16, "max_position_embeddings": 32
        })
    }

    #[test]
    fn config_defaults_and_validation() {
        let cfg = BertConfig::from_value(&config()).unwrap();
        assert_eq!((cfg.hidden_act.as_str(), cfg.type_vocab_size, cfg.head_dim()), ("gelu", 2, 4));
        assert_eq!(cfg.pad_token_id(), 0);
        let mut bad = config();
        bad["num_attention_heads"] = 3.into();
        let err = BertConfig::from_value(&bad).unwrap_err().to_string();
        assert_eq!(err, "`hidden_size` (8) must be a multiple of num_attention_heads (3)");
        let mut bad = config();
        bad["position_embedding_type"] = "relative_key".into();
        assert!(BertConfig::from_value(&bad).unwrap_err().to_string().contains("relative_key"));
        let mut bad = config();
        bad["hidden_act"] = "mish".into();
        assert!(BertConfig::from_value(&bad).unwrap_err().to_string().contains("`mish`"));
    }

    #[test]
    fn tensor_names_follow_the_checkpoint_prefix() {
        let cfg = BertConfig::from_value(&config()).unwrap();
        let names = ["bert.embeddings.word_embeddings.weight", "cls.predictions.bias"];
        assert_eq!(weight_prefix(names.into_iter()), "bert.");
        assert_eq!(weight_prefix(["embeddings.LayerNorm.bias"].into_iter()), "");
        let expected = expected_tensors(&cfg, "");
        assert_eq!(expected.len(), 5 + 2 * 16);
        assert!(expected.contains(&("encoder.layer.1.output.dense.weight".into(), vec![8, 16])));
        assert!(unused_tensor_prefixes("bert.").contains(&"cls.".to_owned()));
    }
}
