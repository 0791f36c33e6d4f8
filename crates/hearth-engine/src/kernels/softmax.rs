//! Softmax over the last dimension of attention scores, with a vectorized `exp`.
//!
//! A prompt chunk's attention (`Attention::attend`) takes a softmax over `heads × rows ×
//! context` scores per layer. candle's CPU softmax calls the C library's scalar `expf` per
//! value: in an agent workload (histories of ~3,600 tokens, ~80 new tokens a turn) that one
//! function took 15 % of the CPU. Here AVX-512 computes 16 values at a time: `exp(x) =
//! 2ⁿ · exp(r)` with `n = round(x / ln 2)`, `|r| ≤ ln 2 / 2`, and `exp(r)` from a degree-6
//! polynomial (Cephes' `expf` coefficients, relative error about 1e-7, as the scalar
//! function). Rows are spread over candle's barrier pool. Other CPUs and dtypes keep candle's.
//!
//! [`causal_softmax`] goes further for a prompt chunk: it takes the raw `q·kᵀ` scores
//! and applies the `1/√d` scale and the causal (and sliding-window) mask itself, in place. The
//! unfused path made three more passes over the `heads × rows × context` scores, each into a
//! new tensor (scale, mask add, the softmax's own copy): with a 3,600-token history that is
//! 16 MB a layer, read and written each time.
//!
//! Written here because candle has no vectorized `exp` on the CPU and no crate at hand offers
//! one for `f32` slices without pulling in a BLAS.

use std::ops::Range;
use std::sync::Mutex;

use candle_core::utils::barrier_pool;
use candle_core::{
    CpuStorage, CustomOp1, DType, Device, InplaceOp1, Layout, Result, Shape, Tensor,
};

/// `softmax(x)` over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && supported() {
        x.contiguous()?.apply_op1_no_bwd(&Softmax)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// Which scores of a prompt chunk each row may use. Row `r` of the scores (heads' rows stacked,
/// `len` rows each) is the query at position `start_pos + r % len`; it sees key `k` when
/// `k ≤ q` and, with a sliding window, `q − k < window`, as the additive mask of the unfused
/// path has it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CausalRows {
    pub len: usize,
    pub start_pos: usize,
    pub window: Option<usize>,
    /// Multiplies every score before the softmax (`1/√head_dim`).
    pub scale: f32,
}

impl CausalRows {
    /// The keys row `row` sees, out of `ctx`.
    fn visible(&self, row: usize, ctx: usize) -> Range<usize> {
        let next = self.start_pos + row % self.len.max(1) + 1;
        let end = next.min(ctx);
        let start = self.window.map_or(0, |w| next.saturating_sub(w)).min(end);
        start..end
    }
}

/// Whether [`causal_softmax`] takes scores of this device and dtype (CPU f32 with AVX-512);
/// elsewhere the caller scales, masks and takes the softmax itself.
pub(crate) fn fuses_masks(device: &Device, dtype: DType) -> bool {
    device.is_cpu() && dtype == DType::F32 && supported()
}

/// `softmax(scale · scores)` over the last dimension, each row over the keys its query sees
/// (the others get 0), written over `scores`, which must be a tensor no other holds (a
/// product's fresh output). An error where [`fuses_masks`] does not hold.
pub(crate) fn causal_softmax(scores: Tensor, rows: CausalRows) -> Result<Tensor> {
    if !fuses_masks(scores.device(), scores.dtype()) {
        candle_core::bail!("the causal softmax takes CPU f32 scores on a CPU with AVX-512");
    }
    if rows.scale <= 0.0 {
        candle_core::bail!("the causal softmax needs a positive scale, not {}", rows.scale);
    }
    let scores = scores.contiguous()?;
    scores.inplace_op1(&CausalSoftmax(rows))?;
    Ok(scores)
}

/// `softmax(row)` in place, for kernels that hold their scores in a slice (decode attention).
pub fn softmax_in_place(row: &mut [f32]) {
    if supported() {
        // SAFETY: the CPU has AVX-512 (checked).
        unsafe { softmax_row(row, 1.0) };
    } else {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for s in row.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        row.iter_mut().for_each(|s| *s /= sum);
    }
}

fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-avx512"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some(x) = super::split_matmul::contiguous_f32(storage, layout) else {
            candle_core::bail!("softmax takes a contiguous f32 input");
        };
        let width = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut y = x.to_vec();
        for_each_row(&mut y, width, |_, row| {
            // SAFETY: the op is only applied where `supported()` held.
            unsafe { softmax_row(row, 1.0) }
        });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }
}

struct CausalSoftmax(CausalRows);

impl InplaceOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax-avx512"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let (CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("the causal softmax takes a contiguous f32 tensor");
        };
        let width = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        for_each_row(&mut data[start..end], width, |index, row| {
            let visible = self.0.visible(index, width);
            row[..visible.start].fill(0.0);
            row[visible.end..].fill(0.0);
            // SAFETY: the op is only applied where `supported()` held.
            unsafe { softmax_row(&mut row[visible], self.0.scale) }
        });
        Ok(())
    }
}

/// Calls `f(index, row)` for every row of `width` values of `data`, rows split over candle's
/// barrier pool in contiguous runs.
fn for_each_row(data: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let threads = barrier_pool().n_workers() + 1;
    let rows = data.len() / width;
    let per_thread = rows.div_ceil(threads).max(1);
    let parts: Vec<Mutex<&mut [f32]>> =
        data.chunks_mut(per_thread * width).map(Mutex::new).collect();
    barrier_pool().execute(|tid| {
        let Some(part) = parts.get(tid) else { return };
        let mut part = part.lock().unwrap_or_else(|e| e.into_inner());
        for (i, row) in part.chunks_mut(width).enumerate() {
            f(tid * per_thread + i, row);
        }
    });
}

/// Scores this far below their row's maximum get probability 0 (below 2⁻⁹², far under f32's
/// precision against the maximum's share). Without it, masked positions (−inf) and remote ones
/// became subnormal probabilities once divided by the sum, and the product with the values
/// that follows ran on the CPU's slow subnormal path: a cold 3,000-token prompt took 24 s
/// instead of 15.
const NEGLIGIBLE: f32 = -64.0;

/// `softmax(scale · row)` in place; `scale` is positive.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_row(row: &mut [f32], scale: f32) {
    use std::arch::x86_64::*;
    let (chunks, tail) = row.as_chunks_mut::<16>();
    let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
    for c in chunks.iter() {
        max = _mm512_max_ps(max, _mm512_loadu_ps(c.as_ptr()));
    }
    let max = tail.iter().fold(_mm512_reduce_max_ps(max), |m, &v| m.max(v));
    // A row with nothing to attend to (every score masked) gives zeros, not NaN.
    if max == f32::NEG_INFINITY {
        row.fill(0.0);
        return;
    }
    let shift = _mm512_set1_ps(max);
    let scales = _mm512_set1_ps(scale);
    let negligible = _mm512_set1_ps(NEGLIGIBLE);
    let mut sum = _mm512_setzero_ps();
    for c in chunks.iter_mut() {
        let x = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), shift), scales);
        let e = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, negligible), exp(x));
        sum = _mm512_add_ps(sum, e);
        _mm512_storeu_ps(c.as_mut_ptr(), e);
    }
    let mut total = _mm512_reduce_add_ps(sum);
    for v in tail.iter_mut() {
        let x = (*v - max) * scale;
        *v = if x >= NEGLIGIBLE { x.exp() } else { 0.0 };
        total += *v;
    }
    let inverse = _mm512_set1_ps(1.0 / total);
    for c in chunks.iter_mut() {
        _mm512_storeu_ps(c.as_mut_ptr(), _mm512_mul_ps(_mm512_loadu_ps(c.as_ptr()), inverse));
    }
    tail.iter_mut().for_each(|v| *v /= total);
}

/// `exp` of 16 values at most 0 (scores less their row's maximum); below −87 it is 0, as the
/// scalar function is to within f32's smallest normal.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn exp(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    // r = x − n·ln 2, with ln 2 in two parts so that r keeps its low bits.
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let r2 = _mm512_mul_ps(r, r);
    let e = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
    _mm512_scalef_ps(e, n)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn softmax_row(_: &mut [f32], _: f32) {
    unreachable!("only applied where supported() holds")
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_candles_softmax_with_masks_and_odd_widths() {
        for width in [1, 7, 16, 33, 300] {
            let x = (Tensor::randn(0f32, 4.0, (3, 5, width), &Device::Cpu).unwrap() * 3.0).unwrap();
            // A causal-style mask: later positions of early rows at −inf.
            let mask: Vec<f32> = (0..5 * width)
                .map(|i| if i % width > i / width + 2 { f32::NEG_INFINITY } else { 0.0 })
                .collect();
            let mask = Tensor::from_vec(mask, (5, width), &Device::Cpu).unwrap();
            let x = x.broadcast_add(&mask).unwrap();
            let want = candle_nn::ops::softmax_last_dim(&x).unwrap();
            let got = softmax_last_dim(&x).unwrap();
            let gap = (got - want).unwrap().abs().unwrap().max_all().unwrap();
            let gap = gap.to_scalar::<f32>().unwrap();
            assert!(gap <= 1e-6, "width {width}: {gap}");
        }
    }

    /// The unfused path: scale, additive causal mask, softmax.
    fn masked_reference(scores: &Tensor, rows: CausalRows) -> Tensor {
        let (_, num_rows, ctx) = scores.dims3().unwrap();
        let mask: Vec<f32> = (0..num_rows * ctx)
            .map(|i| {
                let (q, k) = (rows.start_pos + (i / ctx) % rows.len, i % ctx);
                let seen = k <= q && rows.window.is_none_or(|w| q - k < w);
                if seen {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (num_rows, ctx), &Device::Cpu).unwrap();
        let x = (scores * f64::from(rows.scale)).unwrap().broadcast_add(&mask).unwrap();
        candle_nn::ops::softmax_last_dim(&x).unwrap()
    }

    #[test]
    fn the_causal_softmax_matches_scale_mask_and_softmax() {
        if !supported() {
            return;
        }
        // (heads, len, start_pos, ctx, window): a first chunk, a later one, a decode row, and
        // sliding windows shorter and longer than the context.
        let cases = [
            (3, 5, 0, 5, None),
            (2, 7, 30, 37, None),
            (4, 1, 40, 41, None),
            (2, 6, 20, 26, Some(8)),
            (3, 4, 2, 6, Some(64)),
        ];
        for (heads, len, start_pos, ctx, window) in cases {
            let rows = CausalRows { len, start_pos, window, scale: 0.125 };
            let scores = (Tensor::randn(0f32, 4.0, (2, heads * len, ctx), &Device::Cpu).unwrap()
                * 8.0)
                .unwrap();
            let want = masked_reference(&scores, rows);
            let got = causal_softmax(scores, rows).unwrap();
            let gap = (got - want).unwrap().abs().unwrap().max_all().unwrap();
            let gap = gap.to_scalar::<f32>().unwrap();
            assert!(gap <= 1e-6, "{rows:?}: {gap}");
        }
    }

    #[test]
    fn the_causal_softmax_takes_strided_scores_and_refuses_other_dtypes() {
        let rows = CausalRows { len: 4, start_pos: 0, window: None, scale: 1.0 };
        let half = Tensor::ones((4, 4), DType::F16, &Device::Cpu).unwrap();
        assert!(!fuses_masks(&Device::Cpu, DType::F16));
        assert!(causal_softmax(half, rows).is_err());
        if !supported() {
            return;
        }
        let zero_scale = CausalRows { scale: 0.0, ..rows };
        let ones = Tensor::ones((4, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(causal_softmax(ones, zero_scale).is_err());
        let scores = Tensor::randn(0f32, 1.0, (1, 4, 4), &Device::Cpu).unwrap();
        let transposed = scores.transpose(1, 2).unwrap();
        let want = masked_reference(&transposed.contiguous().unwrap(), rows);
        let got = causal_softmax(transposed, rows).unwrap();
        let gap = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(gap.to_scalar::<f32>().unwrap() <= 1e-6);
    }

    #[test]
    fn a_fully_masked_row_is_zeros() {
        let x = Tensor::full(f32::NEG_INFINITY, (2, 40), &Device::Cpu).unwrap();
        let got = softmax_last_dim(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        if supported() {
            assert!(got.iter().all(|&v| v == 0.0), "{got:?}");
        }
    }

    #[test]
    fn exp_is_accurate_over_the_range_scores_take() {
        #[cfg(target_arch = "x86_64")]
        if supported() {
            use std::arch::x86_64::*;
            for start in (0..2000).map(|i| -90.0 + i as f32 * 0.045) {
                let xs: [f32; 16] = std::array::from_fn(|i| start + i as f32 * 0.0028);
                let mut out = [0f32; 16];
                // SAFETY: AVX-512 checked above.
                unsafe { _mm512_storeu_ps(out.as_mut_ptr(), exp(_mm512_loadu_ps(xs.as_ptr()))) };
                for (x, got) in xs.iter().zip(out) {
                    let want = x.exp();
                    let close = (got - want).abs() <= 3e-7 * want.max(f32::MIN_POSITIVE)
                        || (*x < -87.0 && got < 1e-37);
                    assert!(close, "exp({x}) = {got}, want {want}");
                }
            }
        }
    }
}
