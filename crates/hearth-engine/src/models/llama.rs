//! The Llama family over packed batches: Llama 2/3 (incl. llama3 RoPE scaling), Mistral (sliding
//! window), Qwen2/2.5 (QKV bias) and Qwen3 (per-head QK RMSNorm).
//!
//! Linear layers, norms and the MLP run once over all `T` packed tokens; RoPE uses each token's
//! own position; attention runs per sequence over its cached context read from the engine-owned
//! paged cache. Numerics follow Hugging Face `transformers` (see `tests/parity.rs`).

pub mod config;

pub use config::{expected_tensors, ConfigError, Family, LlamaConfig, Rope, RopeScaling};

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{rotary_emb::rope_thd, Embedding, RmsNorm, VarBuilder};

use crate::kernels::decode_attention::DecodeAttention;
use crate::kernels::linear::Linear;
use crate::kernels::softmax::{self, CausalRows};
use crate::loading::weights::WeightSource;

use crate::generation::kv_cache::{KvCache, PackedBatch, SeqSlice, SlotWriteIndex};

/// Inverse RoPE frequencies, `[1, head_dim / 2]` f32.
struct Rotary {
    inv_freq: Tensor,
}

impl Rotary {
    /// `factors`, when given, are per-frequency divisors stored in the weights (a GGUF's
    /// `rope_freqs.weight`, which llama.cpp's converter writes for Llama 3.1 scaling). They are
    /// what llama.cpp runs, so they replace config.json's llama3 scaling.
    fn new(rope: &Rope, head_dim: usize, factors: Option<&[f32]>, device: &Device) -> Result<Self> {
        let base =
            (0..head_dim / 2).map(|i| 1.0 / rope.theta.powf((2 * i) as f64 / head_dim as f64));
        let inv_freq: Vec<f32> = match factors {
            Some(factors) if factors.len() != head_dim / 2 => candle_core::bail!(
                "rope_freqs has {} factors, expected head_dim / 2 = {}",
                factors.len(),
                head_dim / 2
            ),
            Some(factors) => {
                let scaling = match rope.scaling {
                    RopeScaling::Llama3 { .. } => RopeScaling::None,
                    other => other,
                };
                base.zip(factors)
                    .map(|(f, &d)| scale_frequency(f / f64::from(d), &scaling) as f32)
                    .collect()
            }
            None => base.map(|f| scale_frequency(f, &rope.scaling) as f32).collect(),
        };
        let inv_freq = Tensor::from_vec(inv_freq, (1, head_dim / 2), device)?;
        Ok(Self { inv_freq })
    }

    /// `cos` and `sin` of every packed token's angles, each `[T, head_dim / 2]`, computed in f32
    /// as transformers does, then cast to the model's dtype.
    fn cos_sin(&self, positions: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let angles = positions.to_dtype(DType::F32)?.unsqueeze(1)?.broadcast_mul(&self.inv_freq)?;
        Ok((angles.cos()?.to_dtype(dtype)?, angles.sin()?.to_dtype(dtype)?))
    }
}

/// transformers' `_compute_linear_scaling_rope_parameters` / `_compute_llama3_parameters`.
fn scale_frequency(inv_freq: f64, scaling: &RopeScaling) -> f64 {
    match *scaling {
        RopeScaling::None => inv_freq,
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

/// Everything the layers share within one step, built once before the layer loop.
struct Step<'a> {
    batch: &'a PackedBatch,
    cos: Tensor,
    sin: Tensor,
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

/// `[len, context_len]` additive mask: 0 where query `i` (at `start_pos + i`) may see key `j`
/// (causal, and `q - k < window` as transformers' sliding window has it), `-inf` elsewhere.
fn attention_mask(
    seq: &SeqSlice,
    window: Option<usize>,
    dtype: DType,
    dev: &Device,
) -> Result<Option<Tensor>> {
    let (len, ctx) = (seq.len, seq.context_len);
    let windowed = window.filter(|w| ctx > *w);
    if len == 1 && windowed.is_none() {
        return Ok(None);
    }
    let q_pos = Tensor::arange(seq.start_pos() as u32, ctx as u32, dev)?.reshape((len, 1))?;
    let k_pos = Tensor::arange(0u32, ctx as u32, dev)?.reshape((1, ctx))?;
    let mut visible = k_pos.broadcast_le(&q_pos)?;
    if let Some(w) = windowed {
        let k_plus_w = Tensor::arange(w as u32, (ctx + w) as u32, dev)?.reshape((1, ctx))?;
        visible = (visible * k_plus_w.broadcast_gt(&q_pos)?)?;
    }
    let zeros = Tensor::zeros((len, ctx), dtype, dev)?;
    let neg_inf = Tensor::full(f32::NEG_INFINITY, (len, ctx), dev)?.to_dtype(dtype)?;
    visible.where_cond(&zeros, &neg_inf).map(Some)
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// Qwen3's per-head RMSNorm on queries and keys, applied before RoPE.
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    window: Option<usize>,
}

impl Attention {
    fn new(cfg: &LlamaConfig, window: Option<usize>, vb: WeightSource) -> Result<Self> {
        let (h, hd, layout) = (cfg.hidden_size, cfg.head_dim(), cfg.layout());
        let (q_out, kv_out) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads() * hd);
        let qk_norm = if layout.qk_norm {
            let q_norm = vb.pp("q_norm").rms_norm(hd, cfg.rms_norm_eps)?;
            Some((q_norm, vb.pp("k_norm").rms_norm(hd, cfg.rms_norm_eps)?))
        } else {
            None
        };
        Ok(Self {
            q_proj: vb.pp("q_proj").linear(h, q_out, layout.qkv_bias)?,
            k_proj: vb.pp("k_proj").linear(h, kv_out, layout.qkv_bias)?,
            v_proj: vb.pp("v_proj").linear(h, kv_out, layout.qkv_bias)?,
            o_proj: vb.pp("o_proj").linear(q_out, h, layout.o_bias)?,
            qk_norm,
            num_heads: cfg.num_attention_heads,
            num_kv_heads: cfg.num_key_value_heads(),
            head_dim: hd,
            window,
        })
    }

    fn forward(&self, x: &Tensor, layer: usize, step: &Step, kv: &mut KvCache) -> Result<Tensor> {
        let t = x.dim(0)?;
        let q = self.q_proj.forward(x)?.reshape((1, t, self.num_heads, self.head_dim))?;
        let k = self.k_proj.forward(x)?.reshape((1, t, self.num_kv_heads, self.head_dim))?;
        let v = self.v_proj.forward(x)?.reshape((t, self.num_kv_heads, self.head_dim))?;
        let (q, k) = match &self.qk_norm {
            Some((q_norm, k_norm)) => (q_norm.forward(&q)?, k_norm.forward(&k)?),
            None => (q, k),
        };
        let q = rope_thd(&q.contiguous()?, &step.cos, &step.sin)?.squeeze(0)?;
        let k = rope_thd(&k.contiguous()?, &step.cos, &step.sin)?.squeeze(0)?;
        kv.write(layer, &k, &v, &step.write_index)?;
        let decoded = self.attend_decode_rows(&q, kv, layer, step)?;
        if let Some(out) = decoded.as_ref().filter(|_| step.decode.is_whole_batch()) {
            return self.o_proj.forward(out);
        }
        let mut outs = Vec::with_capacity(step.batch.seqs.len());
        let mut next_decoded = 0;
        for (i, seq) in step.batch.seqs.iter().enumerate() {
            if let Some(rows) = decoded.as_ref().filter(|_| seq.len == 1) {
                outs.push(rows.narrow(0, next_decoded, 1)?);
                next_decoded += 1;
                continue;
            }
            let q_seq = q.narrow(0, seq.offset, seq.len)?;
            let (k_ctx, v_ctx) = match seq.start_pos() {
                // The whole context is this step's: skip the round trip through the cache.
                0 => (k.narrow(0, seq.offset, seq.len)?, v.narrow(0, seq.offset, seq.len)?),
                _ => self.read_context(kv, layer, step, i, q.dtype())?,
            };
            let rows = CausalRows {
                len: seq.len,
                start_pos: seq.start_pos(),
                window: self.window,
                scale: (self.head_dim as f32).powf(-0.5),
            };
            outs.push(self.attend(&q_seq, &k_ctx, &v_ctx, rows, step.mask(self.window, i))?);
        }
        let out = match outs.len() {
            1 => outs.swap_remove(0),
            _ => Tensor::cat(&outs, 0)?,
        };
        self.o_proj.forward(&out)
    }

    /// The attention output of every sequence adding one token this step, in batch order, from
    /// one CPU kernel over the paged cache (see `decode_attention.rs`); `None` when there are
    /// no such rows or the kernel does not apply (not CPU f32), and the general path runs.
    fn attend_decode_rows(
        &self,
        q: &Tensor,
        kv: &KvCache,
        layer: usize,
        step: &Step,
    ) -> Result<Option<Tensor>> {
        let decode = &step.decode;
        if decode.seqs.is_empty() {
            return Ok(None);
        }
        let q = match &decode.rows {
            None => q.clone(),
            Some(rows) => q.index_select(rows, 0)?,
        };
        let (keys, values) = kv.layer(layer)?;
        let op = DecodeAttention {
            contexts: &decode.contexts,
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            window: self.window,
        };
        op.forward(&q, keys, values)
    }

    fn read_context(
        &self,
        kv: &KvCache,
        layer: usize,
        step: &Step,
        seq: usize,
        dtype: DType,
    ) -> Result<(Tensor, Tensor)> {
        let slots = step
            .batch
            .context_slots(seq)
            .ok_or_else(|| candle_core::Error::Msg(format!("no sequence {seq}")))?;
        let (k, v) = kv.gather(layer, slots)?;
        Ok((k.to_dtype(dtype)?, v.to_dtype(dtype)?))
    }

    /// One sequence: `q` `[len, heads, hd]`, `k`/`v` `[ctx, kv_heads, hd]` → `[len, heads * hd]`.
    /// Grouped queries are folded into the row dimension so each KV head is used in place,
    /// never repeated in memory. The scores are scaled and masked by the fused CPU softmax
    /// where it applies, else by `rows.scale` and the additive `mask`.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        rows: CausalRows,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (len, ctx) = (q.dim(0)?, k.dim(0)?);
        let (kv_heads, hd) = (self.num_kv_heads, self.head_dim);
        let group = self.num_heads / kv_heads;
        let q = q.transpose(0, 1)?.contiguous()?.reshape((kv_heads, group * len, hd))?;
        let k = k.transpose(0, 1)?.contiguous()?;
        let v = v.transpose(0, 1)?.contiguous()?;
        let scores = q.matmul(&k.t()?)?;
        let probs = if softmax::fuses_masks(scores.device(), scores.dtype()) {
            softmax::causal_softmax(scores, rows)?
        } else {
            let scores = (scores * f64::from(rows.scale))?;
            let scores = match mask {
                Some(mask) => scores.reshape((kv_heads, group, len, ctx))?.broadcast_add(mask)?,
                None => scores,
            };
            softmax::softmax_last_dim(&scores)?.reshape((kv_heads, group * len, ctx))?
        };
        let out = probs.matmul(&v)?.reshape((self.num_heads, len, hd))?;
        out.transpose(0, 1)?.reshape((len, self.num_heads * hd))
    }
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn new(cfg: &LlamaConfig, vb: WeightSource) -> Result<Self> {
        let (h, inter, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.layout().mlp_bias);
        Ok(Self {
            gate_proj: vb.pp("gate_proj").linear(h, inter, bias)?,
            up_proj: vb.pp("up_proj").linear(h, inter, bias)?,
            down_proj: vb.pp("down_proj").linear(inter, h, bias)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(x)?.silu()?;
        self.down_proj.forward(&(gate * self.up_proj.forward(x)?)?)
    }
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn new(cfg: &LlamaConfig, window: Option<usize>, vb: WeightSource) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Ok(Self {
            input_layernorm: vb.pp("input_layernorm").rms_norm(h, eps)?,
            self_attn: Attention::new(cfg, window, vb.pp("self_attn"))?,
            post_attention_layernorm: vb.pp("post_attention_layernorm").rms_norm(h, eps)?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
        })
    }

    fn forward(&self, x: &Tensor, layer: usize, step: &Step, kv: &mut KvCache) -> Result<Tensor> {
        let attn = self.self_attn.forward(&self.input_layernorm.forward(x)?, layer, step, kv)?;
        let x = (x + attn)?;
        let mlp = self.mlp.forward(&self.post_attention_layernorm.forward(&x)?)?;
        x + mlp
    }
}

/// A Llama-family causal LM that runs packed batches against an external paged KV cache.
pub struct Llama {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: Rotary,
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
        let rope = cfg.rope().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let windows = cfg.sliding_windows().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let vb_m = vb.pp("model");
        let embed_tokens = vb_m.pp("embed_tokens").embedding(cfg.vocab_size, cfg.hidden_size)?;
        let layers = windows
            .iter()
            .enumerate()
            .map(|(i, w)| DecoderLayer::new(cfg, *w, vb_m.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        // A GGUF of a tied model may still ship `output.weight` (llama.cpp's converter does for
        // some); when present it is used, already quantized.
        let lm_head = if cfg.tie_word_embeddings && !vb.pp("lm_head").contains("weight") {
            vb.pp("lm_head").linear_from(embed_tokens.embeddings().clone())?
        } else {
            vb.pp("lm_head").linear(cfg.hidden_size, cfg.vocab_size, false)?
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm: vb_m.pp("norm").rms_norm(cfg.hidden_size, cfg.rms_norm_eps)?,
            lm_head,
            rotary: Rotary::new(
                &rope,
                cfg.head_dim(),
                vb.rope_freq_factors()?.as_deref(),
                &vb.device(),
            )?,
            vocab_size: cfg.vocab_size,
            dtype: vb.dtype(),
            device: vb.device(),
        })
    }

    /// Runs one step: writes every packed token's K/V into `kv` and returns f32 logits
    /// `[batch.logits_rows.len(), vocab]` for the requested rows, in that order.
    pub fn forward(&self, batch: &PackedBatch, kv: &mut KvCache) -> Result<Tensor> {
        let step = self.prepare(batch, kv)?;
        let mut x = self.embed_tokens.forward(&batch.input_ids)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, i, &step, kv)?;
        }
        let Some(rows) = batch.logits_index() else {
            return Tensor::zeros((0, self.vocab_size), DType::F32, &self.device);
        };
        // Norm and head are row-wise, so only the wanted rows go through them.
        let x = self.norm.forward(&x.index_select(rows, 0)?)?;
        self.lm_head.forward(&x)?.to_dtype(DType::F32)
    }

    fn prepare<'a>(&self, batch: &'a PackedBatch, kv: &KvCache) -> Result<Step<'a>> {
        let (cos, sin) = self.rotary.cos_sin(&batch.positions, self.dtype)?;
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
        Ok(Step { batch, cos, sin, write_index: kv.write_index(batch)?, masks, decode })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused softmax's visibility rule and `attention_mask` are written apart; they must
    /// agree on every kind of chunk.
    #[test]
    fn the_fused_softmax_masks_as_attention_mask_does() {
        if !softmax::fuses_masks(&Device::Cpu, DType::F32) {
            return;
        }
        let dev = &Device::Cpu;
        // (new tokens, context, window): a first chunk, a later one, a decode row, windows
        // shorter and longer than the context.
        for (len, context_len, window) in
            [(5, 5, None), (3, 40, None), (1, 9, None), (6, 26, Some(8)), (4, 6, Some(64))]
        {
            let seq = SeqSlice { offset: 0, len, context_len, block_table: Vec::new() };
            let rows = CausalRows { len, start_pos: seq.start_pos(), window, scale: 0.25 };
            let scores =
                (Tensor::randn(0f32, 1.0, (2, 3 * len, context_len), dev).unwrap() * 4.0).unwrap();
            let scaled = (&scores * 0.25).unwrap();
            let masked = match attention_mask(&seq, window, DType::F32, dev).unwrap() {
                Some(mask) => scaled
                    .reshape((2, 3, len, context_len))
                    .unwrap()
                    .broadcast_add(&mask)
                    .unwrap()
                    .reshape((2, 3 * len, context_len))
                    .unwrap(),
                None => scaled,
            };
            let want = candle_nn::ops::softmax_last_dim(&masked).unwrap();
            let got = softmax::causal_softmax(scores, rows).unwrap();
            let gap = (got - want).unwrap().abs().unwrap().max_all().unwrap();
            assert!(gap.to_scalar::<f32>().unwrap() <= 1e-6, "{len} {context_len} {window:?}");
        }
    }

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
        let rope = Rope { theta: 10_000.0, scaling };
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
