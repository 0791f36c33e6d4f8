//! Rotary position embeddings: the kinds `config.json` describes (default, linear, llama3 and
//! Phi-3's LongRoPE, over all or part of each head), and the cos/sin tables of a step's tokens.

use candle_core::{DType, Device, Result, Tensor};
use serde::Deserialize;

use super::config::{invalid, ConfigError};
use crate::generation::kv_cache::PackedBatch;

/// One RoPE entry as published checkpoints write it (`rope_scaling`) or as transformers 5 does
/// (`rope_parameters`).
#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct RawRope {
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
    long_factor: Option<Vec<f64>>,
    short_factor: Option<Vec<f64>>,
    attention_factor: Option<f64>,
}

/// How RoPE frequencies are derived from `theta`.
#[derive(Debug, Clone, PartialEq)]
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
    LongRope(LongRope),
}

/// Phi-3's LongRoPE: per-frequency divisors for sequences up to the pretraining context
/// (`short_factor`) and for longer ones (`long_factor`), and a factor on cos and sin.
#[derive(Debug, Clone, PartialEq)]
pub struct LongRope {
    pub short_factor: Vec<f64>,
    pub long_factor: Vec<f64>,
    pub original_max_position_embeddings: usize,
    pub attention_factor: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub theta: f64,
    pub scaling: RopeScaling,
    /// The share of each head's dimensions that is rotated (1 but in Phi-4-mini and the like).
    pub partial_rotary_factor: f64,
}

impl Rope {
    /// How many of a head's `head_dim` dimensions are rotated (transformers truncates).
    pub fn rotary_dim(&self, head_dim: usize) -> usize {
        (head_dim as f64 * self.partial_rotary_factor) as usize
    }
}

/// What the rest of `config.json` supplies to a RoPE entry.
pub(super) struct RopeContext {
    pub default_theta: f64,
    pub partial_rotary_factor: Option<f64>,
    pub max_position_embeddings: usize,
    pub original_max_position_embeddings: Option<usize>,
    pub head_dim: usize,
}

impl RawRope {
    /// Unscaled RoPE with base `theta`.
    pub(super) fn plain(theta: f64) -> Self {
        Self { rope_theta: Some(theta), ..Self::default() }
    }

    pub(super) fn parse(&self, cx: &RopeContext) -> std::result::Result<Rope, ConfigError> {
        let theta = self.rope_theta.unwrap_or(cx.default_theta);
        if theta.is_nan() || theta <= 0.0 {
            return Err(invalid("rope_theta", "must be positive"));
        }
        let partial = self.partial_rotary_factor.or(cx.partial_rotary_factor).unwrap_or(1.0);
        let rope = Rope { theta, scaling: RopeScaling::None, partial_rotary_factor: partial };
        let rotary_dim = rope.rotary_dim(cx.head_dim);
        if !(partial > 0.0 && partial <= 1.0) || rotary_dim < 2 || !rotary_dim.is_multiple_of(2) {
            let reason =
                format!("rotates {rotary_dim} of {} dimensions; needs an even number", cx.head_dim);
            return Err(invalid("partial_rotary_factor", reason));
        }
        let kind = self.rope_type.as_deref().or(self.legacy_type.as_deref()).unwrap_or("default");
        let need = |v: Option<f64>, name: &str| {
            v.filter(|v| *v > 0.0).ok_or_else(|| {
                invalid("rope_scaling", format!("`{kind}` needs a positive `{name}`"))
            })
        };
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor: need(self.factor, "factor")? },
            "llama3" => {
                let (low, high) = (self.low_freq_factor, self.high_freq_factor);
                let scaling = RopeScaling::Llama3 {
                    factor: need(self.factor, "factor")?,
                    low_freq_factor: need(low, "low_freq_factor")?,
                    high_freq_factor: need(high, "high_freq_factor")?,
                    original_max_position_embeddings: need(
                        self.original_max_position_embeddings,
                        "original_max_position_embeddings",
                    )?,
                };
                if high <= low {
                    let reason = "llama3 needs high_freq_factor > low_freq_factor";
                    return Err(invalid("rope_scaling", reason));
                }
                scaling
            }
            "longrope" | "su" => RopeScaling::LongRope(self.long_rope(cx, rotary_dim / 2)?),
            other => {
                let reason = format!(
                    "rope type `{other}` is not supported (default, linear, llama3, longrope)"
                );
                return Err(invalid("rope_scaling", reason));
            }
        };
        Ok(Rope { scaling, ..rope })
    }

    /// transformers' `_compute_longrope_parameters`: the attention factor, unless given, is
    /// `√(1 + ln s / ln L)` for the context growth `s` (`factor`, or the ratio of
    /// `max_position_embeddings` to the pretraining length `L`).
    fn long_rope(&self, cx: &RopeContext, n: usize) -> std::result::Result<LongRope, ConfigError> {
        let original = (self.original_max_position_embeddings.map(|v| v as usize))
            .or(cx.original_max_position_embeddings)
            .filter(|v| *v > 1)
            .ok_or_else(|| {
                invalid("rope_scaling", "`longrope` needs `original_max_position_embeddings`")
            })?;
        let factors = |v: &Option<Vec<f64>>, name: &str| match v {
            Some(f) if f.len() == n && f.iter().all(|x| *x > 0.0) => Ok(f.clone()),
            Some(f) => Err(invalid(
                "rope_scaling",
                format!("`{name}` needs {n} positive entries, not {}", f.len()),
            )),
            None => Err(invalid("rope_scaling", format!("`longrope` needs `{name}`"))),
        };
        let factor = self.factor.unwrap_or(cx.max_position_embeddings as f64 / original as f64);
        let attention_factor = self.attention_factor.unwrap_or(if factor <= 1.0 {
            1.0
        } else {
            (1.0 + factor.ln() / (original as f64).ln()).sqrt()
        });
        Ok(LongRope {
            short_factor: factors(&self.short_factor, "short_factor")?,
            long_factor: factors(&self.long_factor, "long_factor")?,
            original_max_position_embeddings: original,
            attention_factor,
        })
    }
}

/// Inverse RoPE frequencies, `[1, rotary_dim / 2]` f32, and what else a step's tables need.
pub(super) struct Rotary {
    inv_freq: Tensor,
    /// LongRoPE: the frequencies of sequences longer than the given pretraining length.
    long: Option<(Tensor, usize)>,
    /// Multiplies cos and sin (LongRoPE's attention factor; 1 otherwise).
    scale: f64,
}

impl Rotary {
    /// `factors`, when given, are per-frequency divisors stored in the weights (a GGUF's
    /// `rope_freqs.weight`, which llama.cpp's converter writes for Llama 3.1 scaling). They are
    /// what llama.cpp runs, so they replace config.json's llama3 scaling.
    pub fn new(
        rope: &Rope,
        head_dim: usize,
        factors: Option<&[f32]>,
        device: &Device,
    ) -> Result<Self> {
        let dim = rope.rotary_dim(head_dim);
        let base: Vec<f64> =
            (0..dim / 2).map(|i| 1.0 / rope.theta.powf((2 * i) as f64 / dim as f64)).collect();
        let table = |v: Vec<f32>| Tensor::from_vec(v, (1, dim / 2), device);
        let divided = |by: &[f64]| base.iter().zip(by).map(|(f, d)| (f / d) as f32).collect();
        if let RopeScaling::LongRope(long) = &rope.scaling {
            return Ok(Self {
                inv_freq: table(divided(&long.short_factor))?,
                long: Some((
                    table(divided(&long.long_factor))?,
                    long.original_max_position_embeddings,
                )),
                scale: long.attention_factor,
            });
        }
        let inv_freq: Vec<f32> = match factors {
            Some(factors) if factors.len() != dim / 2 => candle_core::bail!(
                "rope_freqs has {} factors, expected rotary_dim / 2 = {}",
                factors.len(),
                dim / 2
            ),
            Some(factors) => {
                let scaling = match &rope.scaling {
                    RopeScaling::Llama3 { .. } => RopeScaling::None,
                    other => other.clone(),
                };
                base.iter()
                    .zip(factors)
                    .map(|(f, &d)| scale_frequency(f / f64::from(d), &scaling) as f32)
                    .collect()
            }
            None => base.iter().map(|&f| scale_frequency(f, &rope.scaling) as f32).collect(),
        };
        Ok(Self { inv_freq: table(inv_freq)?, long: None, scale: 1.0 })
    }

    /// `cos` and `sin` of every packed token's angles, each `[T, rotary_dim / 2]`, computed in
    /// f32 as transformers does, then cast to the model's dtype. Under LongRoPE a sequence
    /// known to be longer than the pretraining context (its whole prompt counts from the first
    /// chunk) takes the long frequencies, as transformers takes them for the whole sequence.
    pub fn cos_sin(&self, batch: &PackedBatch, dtype: DType) -> Result<(Tensor, Tensor)> {
        let positions = batch.positions.to_dtype(DType::F32)?.unsqueeze(1)?;
        let mut angles = positions.broadcast_mul(&self.inv_freq)?;
        if let Some((long_freq, pretrained)) = &self.long {
            let mut long_rows = vec![0u8; positions.dim(0)?];
            for seq in batch.seqs.iter().filter(|s| s.known_len > *pretrained) {
                long_rows[seq.offset..seq.offset + seq.len].fill(1);
            }
            if long_rows.contains(&1) {
                let rows = long_rows.len();
                let mask = Tensor::from_vec(long_rows, (rows, 1), positions.device())?
                    .broadcast_as(angles.shape())?;
                angles = mask.where_cond(&positions.broadcast_mul(long_freq)?, &angles)?;
            }
        }
        let (cos, sin) = (angles.cos()?, angles.sin()?);
        let (cos, sin) = match self.scale {
            1.0 => (cos, sin),
            s => ((cos * s)?, (sin * s)?),
        };
        Ok((cos.to_dtype(dtype)?, sin.to_dtype(dtype)?))
    }
}

/// transformers' `_compute_linear_scaling_rope_parameters` / `_compute_llama3_parameters`.
fn scale_frequency(inv_freq: f64, scaling: &RopeScaling) -> f64 {
    match *scaling {
        RopeScaling::None | RopeScaling::LongRope(_) => inv_freq,
        RopeScaling::Linear { factor } => inv_freq / factor,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let wavelen = 2.0 * std::f64::consts::PI / inv_freq;
            if wavelen < original_max_position_embeddings / high_freq_factor {
                inv_freq
            } else if wavelen > original_max_position_embeddings / low_freq_factor {
                inv_freq / factor
            } else {
                let smooth = (original_max_position_embeddings / wavelen - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_frequency_bands() {
        let s = RopeScaling::Llama3 {
            factor: 4.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64.0,
        };
        assert_eq!(scale_frequency(1.0, &s), 1.0);
        assert!((scale_frequency(0.001, &s) - 0.00025).abs() < 1e-12);
        let mid = scale_frequency(0.1, &s);
        assert!(mid > 0.025 && mid < 0.1, "{mid}");
    }

    /// Stored factors (a GGUF's `rope_freqs`) computed from the same llama3 parameters give the
    /// frequencies config.json's scaling gives, and they replace that scaling rather than compound it.
    #[test]
    fn stored_rope_factors_replace_llama3_scaling() {
        let scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64.0,
        };
        let rope = Rope { theta: 10_000.0, scaling: scaling.clone(), partial_rotary_factor: 1.0 };
        let head_dim = 16;
        let factors: Vec<f32> = (0..head_dim / 2)
            .map(|i| {
                let f = 1.0 / 10_000f64.powf((2 * i) as f64 / head_dim as f64);
                (f / scale_frequency(f, &scaling)) as f32
            })
            .collect();
        assert!(factors.iter().any(|&d| d > 1.0) && factors.contains(&1.0), "{factors:?}");
        let from_config = Rotary::new(&rope, head_dim, None, &Device::Cpu).unwrap();
        let from_factors = Rotary::new(&rope, head_dim, Some(&factors), &Device::Cpu).unwrap();
        let a: Vec<f32> = from_config.inv_freq.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = from_factors.inv_freq.flatten_all().unwrap().to_vec1().unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-6 * x.abs(), "{a:?} vs {b:?}");
        }
        assert!(Rotary::new(&rope, head_dim, Some(&factors[1..]), &Device::Cpu).is_err());
    }
}

#[cfg(test)]
mod long_rope_tests {
    use super::*;
    use crate::models::llama::LlamaConfig;
    use serde_json::json;

    /// A Phi-3-style config.json (published layout: top-level original length, `rope_scaling`
    /// with the old `su` name).
    fn phi3(patch: serde_json::Value) -> std::result::Result<LlamaConfig, ConfigError> {
        let mut v = json!({
            "architectures": ["Phi3ForCausalLM"], "vocab_size": 32, "hidden_size": 64,
            "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
            "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
            "rope_scaling": {"type": "su", "short_factor": vec![1.0; 8], "long_factor": vec![2.0; 8]}
        });
        v.as_object_mut().unwrap().extend(patch.as_object().unwrap().clone());
        LlamaConfig::from_value(&v)
    }

    #[test]
    fn long_rope_reads_phi3_configs() {
        let rope = phi3(json!({})).unwrap().rope().unwrap();
        let RopeScaling::LongRope(long) = &rope.scaling else { panic!("{rope:?}") };
        assert_eq!(long.original_max_position_embeddings, 4096);
        // transformers: √(1 + ln(131072 / 4096) / ln 4096).
        assert!((long.attention_factor - 1.190_238_9).abs() < 1e-6, "{}", long.attention_factor);
        assert_eq!(long.long_factor, [2.0; 8]);
        let given = json!({"rope_scaling": {"rope_type": "longrope", "attention_factor": 1.5,
            "short_factor": vec![1.0; 8], "long_factor": vec![2.0; 8]}});
        let RopeScaling::LongRope(long) = phi3(given).unwrap().rope().unwrap().scaling else {
            panic!()
        };
        assert_eq!(long.attention_factor, 1.5, "a stated attention factor is kept");
    }

    #[test]
    fn long_rope_factors_must_cover_the_rotated_dimensions() {
        // Three quarters of 16 dimensions rotate: 6 frequencies, so 8 factors are refused.
        let err = phi3(json!({"partial_rotary_factor": 0.75})).unwrap_err().to_string();
        assert!(err.contains("needs 6 positive entries, not 8"), "{err}");
        let partial = json!({"partial_rotary_factor": 0.75, "rope_scaling": {"type": "longrope",
            "short_factor": vec![1.0; 6], "long_factor": vec![2.0; 6]}});
        let rope = phi3(partial).unwrap().rope().unwrap();
        assert_eq!(rope.rotary_dim(16), 12);
        let odd = phi3(json!({"partial_rotary_factor": 0.2})).unwrap_err().to_string();
        assert!(odd.contains("partial_rotary_factor"), "{odd}");
        let mut no_original = json!({});
        no_original["original_max_position_embeddings"] = json!(null);
        let err = phi3(no_original).unwrap_err().to_string();
        assert!(err.contains("original_max_position_embeddings"), "{err}");
    }
}
