//! Dense f32 matrix multiplies on the CPU, split across cores.
//!
//! During decode a layer multiplies a few rows (one per running sequence) by its whole weight.
//! candle hands such a product to gemm's matrix-vector path, which runs on one thread, so a decode
//! step read the weights at one core's memory bandwidth while the other cores waited. Here the
//! weight's output rows are cut into one block per thread and gemm runs on every block at once;
//! decode is memory-bound, so this is close to a per-core speed-up. Prefill's many rows take the
//! same split, each block a single-threaded gemm: candle's own call runs gemm on rayon's
//! threads, which then compete for the cores with the barrier pool's workers still spinning
//! after the int8 kernels and decode products (an f32 file at c=8: 8 % more tokens/s and 12 %
//! lower TTFT p99 this way, `docs/benchmarks.md`).
//!
//! The blocks run on candle's barrier pool (the calling thread takes one block, pool workers
//! the others, and the workers spin briefly between calls): a decode step makes a couple of
//! hundred of these calls a few tens of microseconds apart, and a rayon pool, whose workers
//! sleep and must be woken each time, spent more on the hand-offs than it saved.
//!
//! Written here because neither candle nor gemm splits a matrix-vector product across threads,
//! and gemm's tiled kernel is slow for a handful of rows (see [`few_rows_product`]). One row
//! stays on gemm's matrix-vector kernel; 2 to 16 rows use a small SIMD kernel of our own.

use candle_core::utils::barrier_pool;
use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};
use std::sync::Mutex;

/// The most rows (tokens in the step) the few-rows kernel takes; past it, gemm's tiled kernel
/// wins.
pub const MAX_ROWS: usize = 16;

/// Output columns per block are a multiple of this, so blocks start on a cache line.
const COLUMN_ALIGN: usize = 16;

/// `x · Wᵀ` for a `[rows, in]` f32 input and an `[out, in]` f32 weight on the CPU, when it
/// applies: `None` for other devices or dtypes, or one thread.
pub fn forward(x: &Tensor, weight: &Tensor) -> Result<Option<Tensor>> {
    let threads = barrier_pool().n_workers() + 1;
    if threads < 2
        || !matches!(x.device(), Device::Cpu)
        || x.dtype() != DType::F32
        || weight.dtype() != DType::F32
    {
        return Ok(None);
    }
    let (out_dim, in_dim) = weight.dims2()?;
    let leading = x.dims().split_last().map(|(_, lead)| lead.to_vec()).unwrap_or_default();
    let rows: usize = leading.iter().product();
    if x.dims().last() != Some(&in_dim) || rows == 0 {
        return Ok(None);
    }
    let x2 = x.reshape((rows, in_dim))?.contiguous()?;
    // The op writes the product transposed, `[out, rows]`: each thread then owns a contiguous
    // block of output rows. For one row that is already the `[1, out]` layout.
    let yt = x2.apply_op2_no_bwd(&weight.contiguous()?, &SplitMatmul { threads })?;
    let y = if rows == 1 { yt.reshape((1, out_dim))? } else { yt.t()?.contiguous()? };
    let mut dims = leading;
    dims.push(out_dim);
    y.reshape(dims).map(Some)
}

struct SplitMatmul {
    threads: usize,
}

impl CustomOp2 for SplitMatmul {
    fn name(&self) -> &'static str {
        "split-matmul"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, in_dim) = x_layout.shape().dims2()?;
        let (out_dim, w_in) = w_layout.shape().dims2()?;
        if w_in != in_dim {
            candle_core::bail!("split-matmul: input has {in_dim} columns, weight {w_in}");
        }
        let (Some(x), Some(w)) = (contiguous_f32(x, x_layout), contiguous_f32(w, w_layout)) else {
            candle_core::bail!("split-matmul takes contiguous f32 operands");
        };
        let block = out_dim.div_ceil(self.threads).next_multiple_of(COLUMN_ALIGN).max(1);
        let mut yt = vec![0f32; out_dim * rows];
        // One block per thread id; each lock is taken once, by its own thread.
        let blocks: Vec<Mutex<&mut [f32]>> = yt.chunks_mut(block * rows).map(Mutex::new).collect();
        barrier_pool().execute(|tid| {
            let Some(slot) = blocks.get(tid) else { return };
            let mut dst = slot.lock().unwrap_or_else(|e| e.into_inner());
            let (first, cols) = (tid * block, dst.len() / rows);
            let w = &w[first * in_dim..(first + cols) * in_dim];
            match rows {
                2..=MAX_ROWS => few_rows_product(x, w, &mut dst, rows, in_dim),
                _ => block_product(x, w, &mut dst, rows, cols, in_dim),
            }
        });
        drop(blocks);
        Ok((CpuStorage::F32(yt), Shape::from((out_dim, rows))))
    }
}

/// The f32 data of a contiguous CPU tensor's storage (for the CPU kernels here and in
/// `decode_attention.rs`).
pub(super) fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Option<&'a [f32]> {
    let (start, end) = layout.contiguous_offsets()?;
    match storage {
        CpuStorage::F32(data) => data.get(start..end),
        _ => None,
    }
}

/// The same product as [`block_product`] for 2 to [`MAX_ROWS`] rows, reading each weight row
/// once for all of them. gemm's tiled kernel packs the weight block into a scratch copy on every
/// call and pads the rows to its tile height, which made an 8-row decode step cost three
/// single-row ones; this streams the weights once, like the matrix-vector path, with one
/// accumulator per row. Runs on the widest SIMD the CPU has (pulp dispatches at run time).
fn few_rows_product(x: &[f32], w: &[f32], dst: &mut [f32], rows: usize, k: usize) {
    macro_rules! with_rows {
        ($($n:literal)*) => {
            match rows {
                $($n => pulp::Arch::new().dispatch(FewRows::<$n> { x, w, dst, k }),)*
                _ => unreachable!("{rows} rows: the caller allows 2 to MAX_ROWS"),
            }
        };
    }
    with_rows!(2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
}

/// `dst[c * R + r] = Σ x[r, :] · w[c, :]` with R accumulators kept in registers.
struct FewRows<'a, const R: usize> {
    x: &'a [f32],
    w: &'a [f32],
    dst: &'a mut [f32],
    k: usize,
}

impl<const R: usize> pulp::WithSimd for FewRows<'_, R> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let Self { x, w, dst, k } = self;
        let xs: [(&[S::f32s], &[f32]); R] =
            std::array::from_fn(|r| S::as_simd_f32s(&x[r * k..(r + 1) * k]));
        for (w_row, out) in w.chunks_exact(k).zip(dst.chunks_exact_mut(R)) {
            let (w_simd, w_tail) = S::as_simd_f32s(w_row);
            let mut acc = [simd.splat_f32s(0.0); R];
            for (c, &wc) in w_simd.iter().enumerate() {
                for r in 0..R {
                    acc[r] = simd.mul_add_f32s(wc, xs[r].0[c], acc[r]);
                }
            }
            for r in 0..R {
                let tail: f32 = w_tail.iter().zip(xs[r].1).map(|(a, b)| a * b).sum();
                out[r] = simd.reduce_sum_f32s(acc[r]) + tail;
            }
        }
    }
}

/// `dst[c * rows + r] = Σₖ x[r * k + k'] · w[c * k + k']` for one block of `cols` weight rows.
fn block_product(x: &[f32], w: &[f32], dst: &mut [f32], rows: usize, cols: usize, k: usize) {
    assert!(x.len() == rows * k && w.len() == cols * k && dst.len() == rows * cols);
    let (k_i, rows_i) = (k as isize, rows as isize);
    // SAFETY: the asserts above bound every access. gemm reads `x` as a [rows, k] matrix
    // (row stride k, column stride 1) and `w` as the [k, cols] matrix Wᵀ (row stride 1,
    // column stride k), and writes `dst` as a [rows, cols] matrix with row stride 1 and
    // column stride `rows`; the largest offsets are (rows-1)·k + k-1, (cols-1)·k + k-1 and
    // (cols-1)·rows + rows-1, all inside the slices. `dst` is borrowed mutably and alone.
    unsafe {
        gemm::gemm(
            rows,
            cols,
            k,
            dst.as_mut_ptr(),
            rows_i,
            1,
            false,
            x.as_ptr(),
            1,
            k_i,
            w.as_ptr(),
            k_i,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &Tensor, w: &Tensor) -> Tensor {
        x.broadcast_matmul(&w.t().unwrap()).unwrap()
    }

    #[test]
    fn matches_candle_for_every_row_count_and_odd_widths() {
        let device = Device::Cpu;
        // 200 output columns: blocks of 112 and 88 on two threads, not a multiple of 16; an
        // input width of 99 leaves a tail after the SIMD chunks.
        let w = Tensor::randn(0f32, 1.0, (200, 99), &device).unwrap();
        for rows in [1, 2, 3, 7, 8, 13, MAX_ROWS, MAX_ROWS + 1, 70] {
            let x = Tensor::randn(0f32, 1.0, (rows, 99), &device).unwrap();
            let Some(y) = forward(&x, &w).unwrap() else {
                assert_eq!(barrier_pool().n_workers(), 0, "only one thread skips the path");
                return;
            };
            let diff = (y - reference(&x, &w)).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-4, "rows {rows}");
        }
    }

    #[test]
    fn keeps_leading_dimensions_and_declines_other_dtypes() {
        let device = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (64, 32), &device).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 3, 32), &device).unwrap();
        if let Some(y) = forward(&x, &w).unwrap() {
            assert_eq!(y.dims(), &[1, 3, 64]);
            let diff = (y - reference(&x, &w)).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-4);
        }
        let half = x.to_dtype(DType::F16).unwrap();
        assert!(forward(&half, &w.to_dtype(DType::F16).unwrap()).unwrap().is_none());
    }
}
