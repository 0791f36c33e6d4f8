//! Mixture-of-experts feed-forward blocks: Mixtral, Qwen2-MoE (with its gated shared expert) and
//! Qwen3-MoE. A router scores every expert for each token and keeps the top k; then each expert
//! runs once over all the step's tokens routed to it (tokens grouped by expert, one product per
//! expert and projection, never a loop over tokens), and its outputs are added back into their
//! rows, weighted by the router.

use candle_core::{DType, Module, Result, Tensor};
use serde::Deserialize;

use super::config::{invalid, ConfigError, Family};
use super::{LlamaConfig, Mlp};
use crate::kernels::linear::Linear;
use crate::loading::weights::WeightSource;

/// The MoE keys of `config.json` (`num_local_experts` is Mixtral's name for `num_experts`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MoeFields {
    #[serde(default)]
    num_experts: Option<usize>,
    #[serde(default)]
    num_local_experts: Option<usize>,
    #[serde(default)]
    num_experts_per_tok: Option<usize>,
    #[serde(default)]
    moe_intermediate_size: Option<usize>,
    #[serde(default)]
    shared_expert_intermediate_size: Option<usize>,
    #[serde(default)]
    norm_topk_prob: Option<bool>,
    #[serde(default)]
    decoder_sparse_step: Option<usize>,
    #[serde(default)]
    mlp_only_layers: Option<Vec<usize>>,
}

/// A family's sparse layers, as its config describes them.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeSpec {
    pub num_experts: usize,
    pub top_k: usize,
    pub expert_intermediate_size: usize,
    /// Whether the top-k probabilities are renormalized to sum to 1 (always in Mixtral).
    pub normalize: bool,
    /// Qwen2-MoE's shared expert, added to every token through a sigmoid gate.
    pub shared_intermediate_size: Option<usize>,
    /// Per layer: sparse (`true`) or a dense MLP of `intermediate_size`.
    pub sparse_layers: Vec<bool>,
    pub naming: ExpertNaming,
}

/// Where a family keeps its expert tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertNaming {
    /// `block_sparse_moe.gate`, `block_sparse_moe.experts.{e}.w1|w3|w2`.
    Mixtral,
    /// `mlp.gate`, `mlp.experts.{e}.gate_proj|up_proj|down_proj`, `mlp.shared_expert*`.
    Qwen,
}

impl ExpertNaming {
    /// The block's prefix within a layer.
    pub fn block(self) -> &'static str {
        match self {
            Self::Mixtral => "block_sparse_moe",
            Self::Qwen => "mlp",
        }
    }

    /// Gate, up and down projections of one expert.
    pub fn projections(self) -> [&'static str; 3] {
        match self {
            Self::Mixtral => ["w1", "w3", "w2"],
            Self::Qwen => ["gate_proj", "up_proj", "down_proj"],
        }
    }
}

impl MoeFields {
    /// The sparse layers of `family`'s `layers`, `None` for dense families.
    pub(super) fn spec(
        &self,
        family: Family,
        layers: usize,
        intermediate_size: usize,
    ) -> std::result::Result<Option<MoeSpec>, ConfigError> {
        let (naming, default_normalize) = match family {
            Family::Mixtral => (ExpertNaming::Mixtral, true),
            Family::Qwen2Moe | Family::Qwen3Moe => (ExpertNaming::Qwen, false),
            _ => return Ok(None),
        };
        let num_experts = self.num_experts.or(self.num_local_experts).unwrap_or(0);
        let top_k = self.num_experts_per_tok.unwrap_or(2);
        if num_experts == 0 || top_k == 0 || top_k > num_experts {
            let reason = format!("{top_k} of {num_experts} experts per token");
            return Err(invalid("num_experts_per_tok", reason));
        }
        let step = self.decoder_sparse_step.unwrap_or(1).max(1);
        let dense = self.mlp_only_layers.clone().unwrap_or_default();
        let sparse_layers = (0..layers).map(|i| !dense.contains(&i) && (i + 1) % step == 0);
        Ok(Some(MoeSpec {
            num_experts,
            top_k,
            expert_intermediate_size: match naming {
                ExpertNaming::Mixtral => intermediate_size,
                ExpertNaming::Qwen => self.moe_intermediate_size.unwrap_or(intermediate_size),
            },
            // Mixtral always renormalizes; Qwen as `norm_topk_prob` says.
            normalize: naming == ExpertNaming::Mixtral
                || self.norm_topk_prob.unwrap_or(default_normalize),
            shared_intermediate_size: (family == Family::Qwen2Moe)
                .then_some(self.shared_expert_intermediate_size)
                .flatten()
                .filter(|n| *n > 0),
            sparse_layers: sparse_layers.collect(),
            naming,
        }))
    }
}

/// The tensors of one sparse layer under `prefix` (`model.layers.N`), with their shapes.
pub fn expected_tensors(spec: &MoeSpec, prefix: &str, hidden: usize) -> Vec<(String, Vec<usize>)> {
    let block = format!("{prefix}.{}", spec.naming.block());
    let inter = spec.expert_intermediate_size;
    let mut out = vec![(format!("{block}.gate.weight"), vec![spec.num_experts, hidden])];
    let [gate, up, down] = spec.naming.projections();
    for e in 0..spec.num_experts {
        let expert = format!("{block}.experts.{e}");
        out.push((format!("{expert}.{gate}.weight"), vec![inter, hidden]));
        out.push((format!("{expert}.{up}.weight"), vec![inter, hidden]));
        out.push((format!("{expert}.{down}.weight"), vec![hidden, inter]));
    }
    if let Some(shared) = spec.shared_intermediate_size {
        for (name, shape) in [
            ("shared_expert.gate_proj", vec![shared, hidden]),
            ("shared_expert.up_proj", vec![shared, hidden]),
            ("shared_expert.down_proj", vec![hidden, shared]),
            ("shared_expert_gate", vec![1, hidden]),
        ] {
            out.push((format!("{block}.{name}.weight"), shape));
        }
    }
    out
}

/// One sparse feed-forward layer.
pub(super) struct SparseMoe {
    /// `[hidden, num_experts]` f32, the router's weight transposed: routing runs in f32, as
    /// transformers takes its softmax.
    router: Tensor,
    experts: Vec<Mlp>,
    shared: Option<(Mlp, Linear)>,
    top_k: usize,
    normalize: bool,
}

impl SparseMoe {
    /// The layer's block at `vb` (a layer's prefix).
    pub fn new(cfg: &LlamaConfig, spec: &MoeSpec, vb: &WeightSource) -> Result<Self> {
        let (h, vb) = (cfg.hidden_size, vb.pp(spec.naming.block()));
        let router = vb.pp("gate").get((spec.num_experts, h), "weight")?;
        let names = spec.naming.projections();
        let inter = spec.expert_intermediate_size;
        let experts = (0..spec.num_experts)
            .map(|e| Mlp::with_names(cfg, &vb.pp(format!("experts.{e}")), inter, names))
            .collect::<Result<Vec<_>>>()?;
        let shared = match spec.shared_intermediate_size {
            Some(n) => {
                let names = ExpertNaming::Qwen.projections();
                let mlp = Mlp::with_names(cfg, &vb.pp("shared_expert"), n, names)?;
                Some((mlp, vb.pp("shared_expert_gate").linear(h, 1, false)?))
            }
            None => None,
        };
        Ok(Self {
            router: router.to_dtype(DType::F32)?.t()?.contiguous()?,
            experts,
            shared,
            top_k: spec.top_k,
            normalize: spec.normalize,
        })
    }

    /// `x` `[T, hidden]` → `[T, hidden]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut out = x.zeros_like()?;
        for (expert, (rows, weights)) in self.route(x)?.into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let n = rows.len();
            let rows = Tensor::from_vec(rows, n, x.device())?;
            let weights = Tensor::from_vec(weights, (n, 1), x.device())?.to_dtype(x.dtype())?;
            let y = self.experts[expert].forward(&x.index_select(&rows, 0)?, None)?;
            out = out.index_add(&rows, &y.broadcast_mul(&weights)?, 0)?;
        }
        if let Some((mlp, gate)) = &self.shared {
            let gate = candle_nn::ops::sigmoid(&gate.forward(x)?)?;
            out = (out + mlp.forward(x, None)?.broadcast_mul(&gate)?)?;
        }
        Ok(out)
    }

    /// Per expert, the rows routed to it and their weights: softmax over the router's scores,
    /// the top k kept (renormalized where the family does).
    fn route(&self, x: &Tensor) -> Result<Vec<(Vec<u32>, Vec<f32>)>> {
        let logits = x.to_dtype(DType::F32)?.matmul(&self.router)?;
        let probs = candle_nn::ops::softmax_last_dim(&logits)?.to_vec2::<f32>()?;
        let mut routes = vec![(Vec::new(), Vec::new()); self.router.dim(1)?];
        for (row, p) in probs.iter().enumerate() {
            let mut order: Vec<usize> = (0..p.len()).collect();
            // Highest first; among equals the lower index, as torch.topk keeps it.
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
            let chosen = &order[..self.top_k];
            let total: f32 = chosen.iter().map(|&e| p[e]).sum();
            for &e in chosen {
                let weight = if self.normalize { p[e] / total } else { p[e] };
                routes[e].0.push(row as u32);
                routes[e].1.push(weight);
            }
        }
        Ok(routes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(patch: serde_json::Value) -> std::result::Result<LlamaConfig, ConfigError> {
        let mut v = json!({
            "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 4,
            "num_attention_heads": 4, "max_position_embeddings": 64
        });
        v.as_object_mut().unwrap().extend(patch.as_object().unwrap().clone());
        LlamaConfig::from_value(&v)
    }

    #[test]
    fn sparse_layers_and_normalization_follow_each_family() {
        let qwen2 = config(json!({"architectures": ["Qwen2MoeForCausalLM"], "num_experts": 8,
            "num_experts_per_tok": 2, "moe_intermediate_size": 8, "decoder_sparse_step": 2,
            "mlp_only_layers": [3], "shared_expert_intermediate_size": 12}))
        .unwrap();
        let spec = qwen2.moe().unwrap().unwrap();
        assert_eq!(spec.sparse_layers, [false, true, false, false], "every 2nd, not layer 3");
        assert_eq!((spec.expert_intermediate_size, spec.shared_intermediate_size), (8, Some(12)));
        assert!(!spec.normalize, "Qwen leaves norm_topk_prob off unless told");
        let mixtral = config(json!({"architectures": ["MixtralForCausalLM"],
            "num_local_experts": 4, "num_experts_per_tok": 2}))
        .unwrap();
        let spec = mixtral.moe().unwrap().unwrap();
        assert!(spec.normalize && spec.sparse_layers.iter().all(|s| *s));
        assert_eq!((spec.naming, spec.expert_intermediate_size), (ExpertNaming::Mixtral, 32));
        let dense = config(json!({"architectures": ["LlamaForCausalLM"], "num_experts": 4}));
        assert_eq!(dense.unwrap().moe().unwrap(), None, "experts only where the family has them");
        let err = config(json!({"architectures": ["Qwen3MoeForCausalLM"], "num_experts": 2,
            "num_experts_per_tok": 3}))
        .unwrap_err()
        .to_string();
        assert!(err.contains("3 of 2 experts"), "{err}");
    }

    /// Routing: the top k by probability, renormalized where the family says so, and every
    /// token's rows grouped under its experts.
    #[test]
    fn routes_tokens_to_their_top_experts() {
        let dev = candle_core::Device::Cpu;
        // Three experts' router rows over 2-wide inputs.
        let router = Tensor::new(&[[0f32, 2.0], [2.0, 0.0], [1.0, 1.0]], &dev).unwrap();
        let moe = |normalize| SparseMoe {
            router: router.t().unwrap().contiguous().unwrap(),
            experts: Vec::new(),
            shared: None,
            top_k: 2,
            normalize,
        };
        let x = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &dev).unwrap();
        let routes = moe(false).route(&x).unwrap();
        // Row 0: logits (0, 2, 1) → experts 1 and 2; row 1: (2, 0, 1) → experts 0 and 2.
        assert_eq!(routes[0].0, [1]);
        assert_eq!(routes[1].0, [0]);
        assert_eq!(routes[2].0, [0, 1]);
        let p = |l: f32| l.exp() / (1f32.exp() + 2f32.exp() + 1.0);
        assert!((routes[1].1[0] - p(2.0)).abs() < 1e-6);
        let normalized = moe(true).route(&x).unwrap();
        assert!((normalized[1].1[0] + normalized[2].1[0] - 1.0).abs() < 1e-6);
    }
}
