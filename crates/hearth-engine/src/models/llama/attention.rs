//! Attention of the Llama family over a packed step: projections, QK norms, RoPE, the write
//! into the paged cache, then the decode-attention kernel for one-token rows and a per-sequence
//! product for prompt chunks.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::rotary_emb::rope_thd;
use candle_nn::RmsNorm;

use super::lora::Target;
use super::{rms_norm, LlamaConfig, Step};
use crate::generation::kv_cache::{KvCache, SeqSlice};
use crate::kernels::decode_attention::DecodeAttention;
use crate::kernels::linear::Linear;
use crate::kernels::softmax::{self, CausalRows};
use crate::loading::weights::WeightSource;

/// `[len, context_len]` additive mask: 0 where query `i` (at `start_pos + i`) may see key `j`
/// (causal, and `q - k < window` as transformers' sliding window has it), `-inf` elsewhere.
pub(super) fn attention_mask(
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

/// Which of the step's RoPE tables a layer uses (Gemma 3's differ by layer kind), and how many
/// of each head's dimensions it rotates (the rest pass through).
#[derive(Debug, Clone, Copy)]
pub(super) struct LayerRope {
    pub table: usize,
    pub rotary_dim: usize,
}

/// The query, key and value projections: separate, or Phi-3's one `qkv_proj`.
enum Qkv {
    Separate { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

pub(super) struct Attention {
    qkv: Qkv,
    o_proj: Linear,
    /// Qwen3's and Gemma 3's per-head RMSNorm on queries and keys, applied before RoPE.
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    pub(super) window: Option<usize>,
    rope: LayerRope,
    /// What scores are multiplied by (`1/√head_dim`, or Gemma's `query_pre_attn_scalar`).
    scale: f32,
    /// Gemma 2: scores become `cap · tanh(scores / cap)` before masking.
    softcap: Option<f32>,
}

impl Attention {
    /// `window` and `rope` are the layer's own.
    pub(super) fn new(
        cfg: &LlamaConfig,
        window: Option<usize>,
        rope: LayerRope,
        vb: WeightSource,
    ) -> Result<Self> {
        let (h, hd, layout) = (cfg.hidden_size, cfg.head_dim(), cfg.layout());
        let (q_out, kv_out) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads() * hd);
        let qk_norm = if layout.qk_norm {
            let q_norm = rms_norm(&vb.pp("q_norm"), hd, cfg)?;
            Some((q_norm, rms_norm(&vb.pp("k_norm"), hd, cfg)?))
        } else {
            None
        };
        Ok(Self {
            qkv: if layout.fused_projections {
                Qkv::Fused(vb.pp("qkv_proj").linear(h, q_out + 2 * kv_out, layout.qkv_bias)?)
            } else {
                Qkv::Separate {
                    q: vb.pp("q_proj").linear(h, q_out, layout.qkv_bias)?,
                    k: vb.pp("k_proj").linear(h, kv_out, layout.qkv_bias)?,
                    v: vb.pp("v_proj").linear(h, kv_out, layout.qkv_bias)?,
                }
            },
            o_proj: vb.pp("o_proj").linear(q_out, h, layout.o_bias)?,
            qk_norm,
            num_heads: cfg.num_attention_heads,
            num_kv_heads: cfg.num_key_value_heads(),
            head_dim: hd,
            window,
            rope,
            scale: cfg.attention_scale() as f32,
            softcap: cfg.attention_softcap().map(|c| c as f32),
        })
    }

    pub(super) fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        step: &Step,
        kv: &mut KvCache,
    ) -> Result<Tensor> {
        let t = x.dim(0)?;
        let (q, k, v) = self.project(x, layer, step)?;
        let q = q.reshape((1, t, self.num_heads, self.head_dim))?;
        let k = k.reshape((1, t, self.num_kv_heads, self.head_dim))?;
        let v = v.reshape((t, self.num_kv_heads, self.head_dim))?;
        let (q, k) = match &self.qk_norm {
            Some((q_norm, k_norm)) => (q_norm.forward(&q)?, k_norm.forward(&k)?),
            None => (q, k),
        };
        let q = self.rotate(&q, step)?;
        let k = self.rotate(&k, step)?;
        kv.write(layer, &k, &v, &step.write_index)?;
        let decoded = self.attend_decode_rows(&q, kv, layer, step)?;
        if let Some(out) = decoded.as_ref().filter(|_| step.decode.is_whole_batch()) {
            return self.output(out, layer, step);
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
                scale: self.scale,
            };
            outs.push(self.attend(&q_seq, &k_ctx, &v_ctx, rows, step.mask(self.window, i))?);
        }
        let out = match outs.len() {
            1 => outs.swap_remove(0),
            _ => Tensor::cat(&outs, 0)?,
        };
        self.output(&out, layer, step)
    }

    /// The output projection of the heads' concatenated outputs `[T, heads · head_dim]`.
    fn output(&self, out: &Tensor, layer: usize, step: &Step) -> Result<Tensor> {
        step.lora.apply(self.o_proj.forward(out)?, out, layer, Target::O)
    }

    /// Queries, keys and values `[T, heads · head_dim]` each.
    fn project(&self, x: &Tensor, layer: usize, step: &Step) -> Result<(Tensor, Tensor, Tensor)> {
        let adapt = |linear: &Linear, target| step.lora.apply(linear.forward(x)?, x, layer, target);
        match &self.qkv {
            Qkv::Separate { q, k, v } => {
                Ok((adapt(q, Target::Q)?, adapt(k, Target::K)?, adapt(v, Target::V)?))
            }
            Qkv::Fused(qkv) => {
                let all = adapt(qkv, Target::Qkv)?;
                let q_out = self.num_heads * self.head_dim;
                let kv_out = self.num_kv_heads * self.head_dim;
                let part = |from, len| all.narrow(1, from, len)?.contiguous();
                Ok((part(0, q_out)?, part(q_out, kv_out)?, part(q_out + kv_out, kv_out)?))
            }
        }
    }

    /// RoPE over `x` `[1, T, heads, head_dim]` → `[T, heads, head_dim]`; with a partial rotary
    /// factor only the first `rotary_dim` dimensions of each head turn.
    fn rotate(&self, x: &Tensor, step: &Step) -> Result<Tensor> {
        let (cos, sin) = &step.ropes[self.rope.table];
        let dim = self.rope.rotary_dim;
        if dim == self.head_dim {
            return rope_thd(&x.contiguous()?, cos, sin)?.squeeze(0);
        }
        let turned = rope_thd(&x.narrow(3, 0, dim)?.contiguous()?, cos, sin)?;
        let kept = x.narrow(3, dim, self.head_dim - dim)?;
        Tensor::cat(&[turned, kept], 3)?.squeeze(0)
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
            scale: self.scale,
            softcap: self.softcap,
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
    /// where it applies, else by `rows.scale` and the additive `mask`; a soft cap comes after the
    /// scale and before the mask, so with one the scale is applied first, here.
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
        let (scores, rows) = match self.softcap {
            Some(cap) => {
                let capped = ((scores * f64::from(rows.scale / cap))?.tanh()? * f64::from(cap))?;
                (capped, CausalRows { scale: 1.0, ..rows })
            }
            None => (scores, rows),
        };
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
            let seq =
                SeqSlice { offset: 0, len, context_len, block_table: Vec::new(), known_len: 0 };
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
}
