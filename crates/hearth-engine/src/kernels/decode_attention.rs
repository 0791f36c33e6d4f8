//! Attention for a step's decode rows on the CPU: every sequence that adds one token, in one op,
//! reading its keys and values in place from the paged cache.
//!
//! The general path (`Attention::attend`) gathers each sequence's context out of the cache and
//! runs a dozen candle ops per sequence and layer. For a prompt chunk that work is large and
//! those ops are efficient; for one decode token it is tiny, and at eight sequences the per-op
//! overhead and the gathers made a decode step cost three times a one-sequence step. Here a
//! query head's scores, softmax and weighted sum are computed directly, each cached key and
//! value read once per KV head, the (sequence, KV head) pairs spread over candle's barrier pool.
//!
//! Written here because candle has no paged attention for the CPU.

use std::sync::Mutex;

use candle_core::utils::barrier_pool;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};

use super::split_matmul::contiguous_f32;

/// What the op needs besides its three tensors.
pub struct DecodeAttention<'a> {
    /// Per decode sequence, the cache slots of its whole context (the new token's included), in
    /// position order.
    pub contexts: &'a [&'a [u32]],
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Sliding window: only the last `window` positions are attended to.
    pub window: Option<usize>,
    /// What scores are multiplied by (`1/√head_dim` in most families).
    pub scale: f32,
    /// Scores become `cap · tanh(scores / cap)` after the scale (Gemma 2).
    pub softcap: Option<f32>,
}

impl DecodeAttention<'_> {
    /// `q` `[n, heads, hd]` (after RoPE), `keys`/`values` one layer's cache `[slots, kv_heads,
    /// hd]` → `[n, heads * hd]`. `None` where it does not apply (not CPU f32).
    pub fn forward(&self, q: &Tensor, keys: &Tensor, values: &Tensor) -> Result<Option<Tensor>> {
        let f32_cpu = |t: &Tensor| t.dtype() == DType::F32 && matches!(t.device(), Device::Cpu);
        if !(f32_cpu(q) && f32_cpu(keys) && f32_cpu(values)) {
            return Ok(None);
        }
        let out = q.contiguous()?.apply_op3_no_bwd(keys, values, self)?;
        Ok(Some(out))
    }
}

impl CustomOp3 for DecodeAttention<'_> {
    fn name(&self) -> &'static str {
        "decode-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, heads, hd) = q_layout.shape().dims3()?;
        let (_, kv_heads, k_hd) = k_layout.shape().dims3()?;
        if heads != self.num_heads || kv_heads != self.num_kv_heads || hd != self.head_dim {
            candle_core::bail!("decode-attention: shapes do not match the layer");
        }
        if k_hd != hd || v_layout.shape() != k_layout.shape() || n != self.contexts.len() {
            candle_core::bail!("decode-attention: {n} queries, {} contexts", self.contexts.len());
        }
        let (Some(q), Some(k), Some(v)) =
            (contiguous_f32(q, q_layout), contiguous_f32(k, k_layout), contiguous_f32(v, v_layout))
        else {
            candle_core::bail!("decode-attention takes contiguous f32 tensors");
        };
        let group = heads / kv_heads;
        let mut out = vec![0f32; n * heads * hd];
        // One work item per (sequence, KV head): its `group` query heads' outputs, contiguous.
        let items: Vec<Mutex<&mut [f32]>> = out.chunks_mut(group * hd).map(Mutex::new).collect();
        let threads = barrier_pool().n_workers() + 1;
        barrier_pool().execute(|tid| {
            for (i, item) in items.iter().enumerate().skip(tid).step_by(threads) {
                let (seq, kv_head) = (i / kv_heads, i % kv_heads);
                let context = self.window_of(self.contexts[seq]);
                let q = &q[(seq * heads + kv_head * group) * hd..][..group * hd];
                let mut dst = item.lock().unwrap_or_else(|e| e.into_inner());
                pulp::Arch::new().dispatch(Item {
                    q,
                    k,
                    v,
                    context,
                    kv_head,
                    kv_heads,
                    hd,
                    scale: self.scale,
                    softcap: self.softcap,
                    dst: &mut dst,
                });
            }
        });
        drop(items);
        Ok((CpuStorage::F32(out), Shape::from((n, heads * hd))))
    }
}

impl DecodeAttention<'_> {
    fn window_of<'c>(&self, context: &'c [u32]) -> &'c [u32] {
        match self.window {
            Some(w) if context.len() > w => &context[context.len() - w..],
            _ => context,
        }
    }
}

/// One (sequence, KV head): the group's query heads `q` `[group, hd]` against the cached keys
/// and values at `context`, into `dst` `[group, hd]`.
struct Item<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    context: &'a [u32],
    kv_head: usize,
    kv_heads: usize,
    hd: usize,
    scale: f32,
    softcap: Option<f32>,
    dst: &'a mut [f32],
}

impl pulp::WithSimd for Item<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let Item { q, k, v, context, kv_head, kv_heads, hd, scale, softcap, dst } = self;
        let group = q.len() / hd;
        let row = |cache, slot| cache_row(cache, slot, kv_heads, kv_head, hd);
        // scores[h * ctx + p], then probabilities in place.
        let ctx = context.len();
        let mut scores = vec![0f32; group * ctx];
        for (p, &slot) in context.iter().enumerate() {
            let key = row(k, slot);
            for h in 0..group {
                scores[h * ctx + p] = dot(simd, &q[h * hd..(h + 1) * hd], key) * scale;
            }
        }
        if let Some(cap) = softcap {
            scores.iter_mut().for_each(|s| *s = cap * (*s / cap).tanh());
        }
        scores.chunks_mut(ctx).for_each(super::softmax::softmax_in_place);
        dst.fill(0.0);
        for (p, &slot) in context.iter().enumerate() {
            let value = row(v, slot);
            for h in 0..group {
                axpy(simd, scores[h * ctx + p], value, &mut dst[h * hd..(h + 1) * hd]);
            }
        }
    }
}

/// One position's key or value of one KV head: the cache is `[slots, kv_heads, hd]`.
#[inline(always)]
fn cache_row(cache: &[f32], slot: u32, kv_heads: usize, kv_head: usize, hd: usize) -> &[f32] {
    &cache[(slot as usize * kv_heads + kv_head) * hd..][..hd]
}

#[inline(always)]
pub(crate) fn dot<S: pulp::Simd>(simd: S, a: &[f32], b: &[f32]) -> f32 {
    let (a_simd, a_tail) = S::as_simd_f32s(a);
    let (b_simd, b_tail) = S::as_simd_f32s(b);
    let mut acc = simd.splat_f32s(0.0);
    for (&x, &y) in a_simd.iter().zip(b_simd) {
        acc = simd.mul_add_f32s(x, y, acc);
    }
    simd.reduce_sum_f32s(acc) + a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum::<f32>()
}

/// `y += alpha · x`.
#[inline(always)]
pub(crate) fn axpy<S: pulp::Simd>(simd: S, alpha: f32, x: &[f32], y: &mut [f32]) {
    let (x_simd, x_tail) = S::as_simd_f32s(x);
    let (y_simd, y_tail) = S::as_mut_simd_f32s(y);
    let a = simd.splat_f32s(alpha);
    for (&xv, yv) in x_simd.iter().zip(y_simd) {
        *yv = simd.mul_add_f32s(a, xv, *yv);
    }
    for (xs, ys) in x_tail.iter().zip(y_tail) {
        *ys += alpha * xs;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain attention of one query row against gathered keys/values, head by head, with
    /// the op's scale and soft cap.
    fn reference(
        op: &DecodeAttention,
        q: &Tensor,
        (k, v): (&Tensor, &Tensor),
        context: &[u32],
    ) -> Tensor {
        let group = op.num_heads / op.num_kv_heads;
        let slots = Tensor::new(context, &Device::Cpu).unwrap();
        let (k, v) = (k.index_select(&slots, 0).unwrap(), v.index_select(&slots, 0).unwrap());
        let heads = q.dim(0).unwrap();
        let rows: Vec<Tensor> = (0..heads)
            .map(|h| {
                let kv_head = h / group;
                let kh = k.narrow(1, kv_head, 1).unwrap().squeeze(1).unwrap();
                let vh = v.narrow(1, kv_head, 1).unwrap().squeeze(1).unwrap();
                let qh = q.narrow(0, h, 1).unwrap();
                let scores = (qh.matmul(&kh.t().unwrap()).unwrap() * f64::from(op.scale)).unwrap();
                let scores = match op.softcap.map(f64::from) {
                    Some(cap) => ((scores / cap).unwrap().tanh().unwrap() * cap).unwrap(),
                    None => scores,
                };
                let probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
                probs.matmul(&vh).unwrap()
            })
            .collect();
        Tensor::cat(&rows, 1).unwrap().squeeze(0).unwrap()
    }

    #[test]
    fn matches_plain_attention_with_grouped_heads_a_window_and_a_soft_cap() {
        let device = Device::Cpu;
        let (slots, kv_heads, heads, hd) = (24, 2, 6, 20);
        let k = Tensor::randn(0f32, 1.0, (slots, kv_heads, hd), &device).unwrap();
        let v = Tensor::randn(0f32, 1.0, (slots, kv_heads, hd), &device).unwrap();
        let q = Tensor::randn(0f32, 1.0, (3, heads, hd), &device).unwrap();
        let contexts: [&[u32]; 3] = [&[5], &[3, 7, 1, 0], &[23, 2, 9, 11, 4, 17, 6, 8, 20]];
        // Scores of a few units, so that a cap of 1.5 bends them and a window cuts them.
        let cases = [(None, 0.2, None), (Some(3), 0.2, None), (Some(3), 0.7, Some(1.5))];
        for (window, scale, softcap) in cases {
            let op = DecodeAttention {
                contexts: &contexts,
                num_heads: heads,
                num_kv_heads: kv_heads,
                head_dim: hd,
                window,
                scale,
                softcap,
            };
            let out = op.forward(&q, &k, &v).unwrap().expect("CPU f32 applies");
            assert_eq!(out.dims(), &[3, heads * hd]);
            for (i, context) in contexts.iter().enumerate() {
                let seen = op.window_of(context);
                let q_i = q.narrow(0, i, 1).unwrap().squeeze(0).unwrap();
                let want = reference(&op, &q_i, (&k, &v), seen);
                let got = out.narrow(0, i, 1).unwrap().squeeze(0).unwrap();
                let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
                assert!(diff.to_scalar::<f32>().unwrap() < 1e-5, "seq {i}, {window:?} {softcap:?}");
            }
        }
        let half = q.to_dtype(DType::F16).unwrap();
        let op = DecodeAttention {
            contexts: &contexts,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim: hd,
            window: None,
            scale: 0.2,
            softcap: None,
        };
        assert!(op.forward(&half, &k, &v).unwrap().is_none(), "only CPU f32 takes this path");
    }
}
