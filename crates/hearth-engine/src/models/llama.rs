//! The Llama family over packed batches: Llama 2/3 (incl. llama3 RoPE scaling), Mistral (sliding
//! window), Qwen2/2.5 (QKV bias), Qwen3 (per-head QK RMSNorm), and Gemma 2 and 3 (text), whose
//! differences `config.rs` lists.
//!
//! Linear layers, norms and the MLP run once over all `T` packed tokens; RoPE uses each token's
//! own position; attention runs per sequence over its cached context read from the engine-owned
//! paged cache. Numerics follow Hugging Face `transformers` (see `tests/parity.rs`).

mod attention;
pub mod config;
pub mod lora;
pub mod moe;
mod rope;
mod tensors;

pub use config::{ConfigError, Family, LlamaConfig, Rope, RopeScaling};
pub use tensors::expected_tensors;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, RmsNorm, VarBuilder};

use self::attention::{attention_mask, Attention, LayerRope};
use self::lora::{LoraRows, Target};
use self::moe::{MoeSpec, SparseMoe};
use self::rope::Rotary;
use crate::generation::kv_cache::{KvCache, PackedBatch, SlotWriteIndex};
use crate::kernels::linear::Linear;
use crate::kernels::softmax;
use crate::loading::weights::WeightSource;
use crate::models::activation::Activation;

/// Everything the layers share within one step, built once before the layer loop.
struct Step<'a> {
    batch: &'a PackedBatch,
    /// `cos` and `sin` of every token's angles, per distinct RoPE of the model's layers.
    ropes: Vec<(Tensor, Tensor)>,
    /// The rows of each LoRA adapter in the step.
    lora: LoraRows,
    write_index: SlotWriteIndex,
    /// Per distinct window, each sequence's additive mask (`None` where nothing is masked).
    masks: Vec<(Option<usize>, Vec<Option<Tensor>>)>,
    decode: DecodeRows<'a>,
}

/// The sequences adding one token this step, found once per step for every layer's
/// decode-attention kernel.
struct DecodeRows<'a> {
    /// Their indices in the batch, in order.
    seqs: Vec<usize>,
    /// Their context slots on the host, in the same order.
    contexts: Vec<&'a [u32]>,
    /// Their rows of the packed input; `None` when every sequence decodes (then it is all rows).
    rows: Option<Tensor>,
}

impl<'a> DecodeRows<'a> {
    fn new(batch: &'a PackedBatch, device: &Device) -> Result<Self> {
        let seqs: Vec<usize> = (0..batch.seqs.len()).filter(|&i| batch.seqs[i].len == 1).collect();
        let contexts = seqs
            .iter()
            .map(|&i| batch.context_slot_list(i))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| candle_core::Error::Msg("a sequence without context slots".into()))?;
        let rows = if seqs.len() == batch.seqs.len() {
            None
        } else {
            let rows: Vec<u32> = seqs.iter().map(|&i| batch.seqs[i].offset as u32).collect();
            Some(Tensor::new(rows.as_slice(), device)?)
        };
        Ok(Self { seqs, contexts, rows })
    }

    /// Every sequence adds exactly one token (a pure decode step).
    fn is_whole_batch(&self) -> bool {
        !self.seqs.is_empty() && self.rows.is_none()
    }
}

impl Step<'_> {
    fn mask(&self, window: Option<usize>, seq: usize) -> Option<&Tensor> {
        let (_, masks) = self.masks.iter().find(|(w, _)| *w == window)?;
        masks.get(seq)?.as_ref()
    }
}

/// The RMS norm at `vb` over `size` values, as the family stores it: Gemma's multiplies by
/// `1 + weight`.
fn rms_norm(vb: &WeightSource, size: usize, cfg: &LlamaConfig) -> Result<RmsNorm> {
    if cfg.layout().norm_offset {
        vb.unit_offset_rms_norm(size, cfg.rms_norm_eps)
    } else {
        vb.rms_norm(size, cfg.rms_norm_eps)
    }
}

/// The MLP's input projections: separate, or Phi-3's one `gate_up_proj` (gate rows first).
enum GateUp {
    Separate { gate: Linear, up: Linear },
    Fused(Linear),
}

struct Mlp {
    gate_up: GateUp,
    down_proj: Linear,
    activation: Activation,
    intermediate_size: usize,
}

impl Mlp {
    /// The layer's dense MLP at `vb` (a layer's `mlp`).
    fn new(cfg: &LlamaConfig, vb: WeightSource) -> Result<Self> {
        let (h, inter, layout) = (cfg.hidden_size, cfg.intermediate_size, cfg.layout());
        if !layout.fused_projections {
            return Self::with_names(cfg, &vb, inter, ["gate_proj", "up_proj", "down_proj"]);
        }
        Ok(Self {
            gate_up: GateUp::Fused(vb.pp("gate_up_proj").linear(h, 2 * inter, layout.mlp_bias)?),
            down_proj: vb.pp("down_proj").linear(inter, h, layout.mlp_bias)?,
            activation: cfg.activation().map_err(candle_core::Error::wrap)?,
            intermediate_size: inter,
        })
    }

    /// Separate gate, up and down projections under `names`, `inter` wide (an expert's own).
    fn with_names(
        cfg: &LlamaConfig,
        vb: &WeightSource,
        inter: usize,
        [gate, up, down]: [&str; 3],
    ) -> Result<Self> {
        let (h, bias) = (cfg.hidden_size, cfg.layout().mlp_bias);
        Ok(Self {
            gate_up: GateUp::Separate {
                gate: vb.pp(gate).linear(h, inter, bias)?,
                up: vb.pp(up).linear(h, inter, bias)?,
            },
            down_proj: vb.pp(down).linear(inter, h, bias)?,
            activation: cfg.activation().map_err(candle_core::Error::wrap)?,
            intermediate_size: inter,
        })
    }

    /// `x` `[T, hidden]` → `[T, hidden]`; `lora`, when given, adds the step's adapters'
    /// updates of this layer's projections (experts have none).
    fn forward(&self, x: &Tensor, lora: Option<(&LoraRows, usize)>) -> Result<Tensor> {
        let adapt = |y: Tensor, x: &Tensor, target| match lora {
            Some((rows, layer)) => rows.apply(y, x, layer, target),
            None => Ok(y),
        };
        let (gate, up) = match &self.gate_up {
            GateUp::Separate { gate, up } => {
                (adapt(gate.forward(x)?, x, Target::Gate)?, adapt(up.forward(x)?, x, Target::Up)?)
            }
            GateUp::Fused(gate_up) => {
                let both = adapt(gate_up.forward(x)?, x, Target::GateUp)?;
                let inter = self.intermediate_size;
                (both.narrow(1, 0, inter)?, both.narrow(1, inter, inter)?)
            }
        };
        let hidden = (self.activation.apply(&gate)? * up)?;
        adapt(self.down_proj.forward(&hidden)?, &hidden, Target::Down)
    }
}

/// A layer's feed-forward block: one MLP, or a mixture of experts.
enum FeedForward {
    Dense(Mlp),
    Sparse(SparseMoe),
}

impl FeedForward {
    fn forward(&self, x: &Tensor, layer: usize, step: &Step) -> Result<Tensor> {
        match self {
            Self::Dense(mlp) => mlp.forward(x, Some((&step.lora, layer))),
            Self::Sparse(moe) => moe.forward(x),
        }
    }
}

/// Gemma's second norms, on the attention and MLP outputs before each residual add.
struct SandwichNorms {
    post_attention: RmsNorm,
    post_feedforward: RmsNorm,
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    /// The MLP's input norm: `post_attention_layernorm` in Llama's naming, Gemma's
    /// `pre_feedforward_layernorm`.
    pre_feedforward_layernorm: RmsNorm,
    sandwich: Option<SandwichNorms>,
    mlp: FeedForward,
}

impl DecoderLayer {
    fn new(
        cfg: &LlamaConfig,
        window: Option<usize>,
        rope: LayerRope,
        experts: Option<&MoeSpec>,
        vb: WeightSource,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let (pre_feedforward, sandwich) = if cfg.layout().sandwich_norms {
            let sandwich = SandwichNorms {
                post_attention: rms_norm(&vb.pp("post_attention_layernorm"), h, cfg)?,
                post_feedforward: rms_norm(&vb.pp("post_feedforward_layernorm"), h, cfg)?,
            };
            (rms_norm(&vb.pp("pre_feedforward_layernorm"), h, cfg)?, Some(sandwich))
        } else {
            (rms_norm(&vb.pp("post_attention_layernorm"), h, cfg)?, None)
        };
        Ok(Self {
            input_layernorm: rms_norm(&vb.pp("input_layernorm"), h, cfg)?,
            self_attn: Attention::new(cfg, window, rope, vb.pp("self_attn"))?,
            pre_feedforward_layernorm: pre_feedforward,
            sandwich,
            mlp: match experts {
                Some(spec) => FeedForward::Sparse(SparseMoe::new(cfg, spec, &vb)?),
                None => FeedForward::Dense(Mlp::new(cfg, vb.pp("mlp"))?),
            },
        })
    }

    fn forward(&self, x: &Tensor, layer: usize, step: &Step, kv: &mut KvCache) -> Result<Tensor> {
        let attn = self.self_attn.forward(&self.input_layernorm.forward(x)?, layer, step, kv)?;
        let attn = match &self.sandwich {
            Some(norms) => norms.post_attention.forward(&attn)?,
            None => attn,
        };
        let x = (x + attn)?;
        let mlp = self.mlp.forward(&self.pre_feedforward_layernorm.forward(&x)?, layer, step)?;
        let mlp = match &self.sandwich {
            Some(norms) => norms.post_feedforward.forward(&mlp)?,
            None => mlp,
        };
        x + mlp
    }
}

/// A Llama-family causal LM that runs packed batches against an external paged KV cache.
pub struct Llama {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    /// One per distinct RoPE of the layers (each layer's `Attention::rope` indexes this).
    rotaries: Vec<Rotary>,
    /// Gemma: embeddings are multiplied by `√hidden_size`.
    embed_scale: Option<f64>,
    /// Gemma 2: logits become `cap · tanh(logits / cap)`.
    logit_softcap: Option<f64>,
    vocab_size: usize,
    dtype: DType,
    device: Device,
}

impl Llama {
    /// A dense model over `vb`'s weights.
    pub fn new(cfg: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        Self::load(cfg, WeightSource::var_builder(vb, None))
    }

    /// A model over `src`'s weights: dense, quantized on load, or read from a GGUF file.
    pub fn load(cfg: &LlamaConfig, vb: WeightSource) -> Result<Self> {
        cfg.validate().map_err(|e| candle_core::Error::Msg(format!("config.json: {e}")))?;
        let ropes = cfg.layer_ropes().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let windows = cfg.sliding_windows().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let moe = cfg.moe().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mut distinct: Vec<Rope> = Vec::new();
        for rope in &ropes {
            if !distinct.contains(rope) {
                distinct.push(rope.clone());
            }
        }
        let vb_m = vb.pp("model");
        let embed_tokens = vb_m.pp("embed_tokens").embedding(cfg.vocab_size, cfg.hidden_size)?;
        let layers = windows
            .iter()
            .zip(&ropes)
            .enumerate()
            .map(|(i, (w, rope))| {
                let table = distinct.iter().position(|r| r == rope).unwrap_or(0);
                let rope = LayerRope { table, rotary_dim: rope.rotary_dim(cfg.head_dim()) };
                let experts = moe.as_ref().filter(|spec| spec.sparse_layers[i]);
                DecoderLayer::new(cfg, *w, rope, experts, vb_m.pp(format!("layers.{i}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let factors = vb.rope_freq_factors()?;
        let rotaries = distinct
            .iter()
            .map(|rope| Rotary::new(rope, cfg.head_dim(), factors.as_deref(), &vb.device()))
            .collect::<Result<Vec<_>>>()?;
        let layout = cfg.layout();
        // A GGUF of a tied model may still ship `output.weight` (llama.cpp's converter does for
        // some); when present it is used, already quantized.
        let lm_head = if cfg.tie_word_embeddings() && !vb.pp("lm_head").contains("weight") {
            vb.pp("lm_head").linear_from(embed_tokens.embeddings().clone())?
        } else {
            vb.pp("lm_head").linear(cfg.hidden_size, cfg.vocab_size, false)?
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm: rms_norm(&vb_m.pp("norm"), cfg.hidden_size, cfg)?,
            lm_head,
            rotaries,
            embed_scale: layout.scaled_embeddings.then(|| (cfg.hidden_size as f64).sqrt()),
            logit_softcap: cfg.logit_softcap(),
            vocab_size: cfg.vocab_size,
            dtype: vb.dtype(),
            device: vb.device(),
        })
    }

    /// The dtype of its weights and activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Runs one step: writes every packed token's K/V into `kv` and returns f32 logits
    /// `[batch.logits_rows.len(), vocab]` for the requested rows, in that order.
    pub fn forward(&self, batch: &PackedBatch, kv: &mut KvCache) -> Result<Tensor> {
        let step = self.prepare(batch, kv)?;
        let mut x = self.embed_tokens.forward(&batch.input_ids)?;
        if let Some(scale) = self.embed_scale {
            x = (x * scale)?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, i, &step, kv)?;
        }
        let Some(rows) = batch.logits_index() else {
            return Tensor::zeros((0, self.vocab_size), DType::F32, &self.device);
        };
        // Norm and head are row-wise, so only the wanted rows go through them.
        let x = self.norm.forward(&x.index_select(rows, 0)?)?;
        let logits = self.lm_head.forward(&x)?.to_dtype(DType::F32)?;
        match self.logit_softcap {
            Some(cap) => (logits / cap)?.tanh()? * cap,
            None => Ok(logits),
        }
    }

    fn prepare<'a>(&self, batch: &'a PackedBatch, kv: &KvCache) -> Result<Step<'a>> {
        let ropes = (self.rotaries.iter())
            .map(|r| r.cos_sin(batch, self.dtype))
            .collect::<Result<Vec<_>>>()?;
        let mut windows: Vec<Option<usize>> =
            self.layers.iter().map(|l| l.self_attn.window).collect();
        windows.sort_unstable();
        windows.dedup();
        // The fused CPU softmax masks as it goes; only the other paths add a mask.
        if softmax::fuses_masks(&self.device, self.dtype) {
            windows.clear();
        }
        let masks = windows
            .into_iter()
            .map(|w| {
                let per_seq =
                    batch.seqs.iter().map(|s| attention_mask(s, w, self.dtype, &self.device));
                Ok((w, per_seq.collect::<Result<Vec<_>>>()?))
            })
            .collect::<Result<Vec<_>>>()?;
        // The decode-attention kernel is CPU f32 only; elsewhere every row takes the general path.
        let decode = if self.device.is_cpu() && self.dtype == DType::F32 {
            DecodeRows::new(batch, &self.device)?
        } else {
            DecodeRows { seqs: Vec::new(), contexts: Vec::new(), rows: None }
        };
        let lora = LoraRows::new(batch, &self.device)?;
        Ok(Step { batch, ropes, lora, write_index: kv.write_index(batch)?, masks, decode })
    }
}
