//! The input rows of an int8 product, quantized once per call to q8_0 (blocks of 32 values,
//! one scale each, rounded as ggml's `quantize_row_q8_0` rounds), with the integer sum of each
//! 16-value half kept beside them: the int8 kernels need those sums to take out the offset of
//! unsigned weights and to apply a block's minimum (`w = scale·v − min`).
//!
//! Also what every int8 kernel does around its inner loop, written once: checking the input,
//! quantizing it, and spreading stripes of 16 output rows over candle's barrier pool
//! ([`PackedWeight`], [`forward`]).

use candle_core::utils::barrier_pool;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use super::amx;

/// Values per activation block.
pub const BLOCK: usize = 32;
/// Values per half block: the finest group a weight scale covers (ggml's k-quants).
pub const HALF: usize = 16;

/// The input rows quantized to q8_0, with what the kernels need per block.
pub struct Activations {
    pub rows: usize,
    pub blocks: usize,
    /// `qs[row * in + i]`.
    pub qs: Vec<i8>,
    /// Per (row, block): the scale.
    pub scales: Vec<f32>,
    /// Per (row, block): the sums of the quantized values of its two halves.
    pub half_sums: Vec<[i32; 2]>,
    /// Whether whole groups of 16 rows go through AMX tile products (see `amx.rs`): set where
    /// the CPU has them and there are 16 rows or more.
    pub tiled: bool,
    /// Where `tiled`, per (row, block): the block's sum times its scale (the tile kernels'
    /// offset and minimum term, computed once rather than per stripe).
    pub scaled_sums: Vec<f32>,
}

/// Rows of activations below which quantizing them is not worth waking the pool for.
const PARALLEL_QUANTIZE_ROWS: usize = 32;

impl Activations {
    /// Quantizes `rows` rows of `in_dim` values (a multiple of [`BLOCK`]); prefill's many rows
    /// are split over the barrier pool.
    pub fn quantize(x: &[f32], rows: usize, in_dim: usize) -> Self {
        let blocks = in_dim / BLOCK;
        let mut qs = vec![0i8; rows * in_dim];
        let mut scales = vec![0f32; rows * blocks];
        let mut half_sums = vec![[0i32; 2]; rows * blocks];
        let threads = barrier_pool().n_workers() + 1;
        if rows < PARALLEL_QUANTIZE_ROWS || threads < 2 {
            quantize_blocks(x, &mut qs, &mut scales, &mut half_sums);
        } else {
            // One range of whole rows per thread; each lock is taken once, by its own thread.
            let per_thread = rows.div_ceil(threads);
            let parts: Vec<_> = x
                .chunks(per_thread * in_dim)
                .zip(qs.chunks_mut(per_thread * in_dim))
                .zip(
                    scales
                        .chunks_mut(per_thread * blocks)
                        .zip(half_sums.chunks_mut(per_thread * blocks)),
                )
                .map(std::sync::Mutex::new)
                .collect();
            barrier_pool().execute(|tid| {
                let Some(part) = parts.get(tid) else { return };
                let mut part = part.lock().unwrap_or_else(|e| e.into_inner());
                let ((x, qs), (scales, sums)) = &mut *part;
                quantize_blocks(x, qs, scales, sums);
            });
        }
        let tiled = rows >= amx::ROWS && amx::available();
        let scaled_sums = match tiled {
            true => scales
                .iter()
                .zip(&half_sums)
                .map(|(&s, &[low, high])| (low + high) as f32 * s)
                .collect(),
            false => Vec::new(),
        };
        Self { rows, blocks, qs, scales, half_sums, tiled, scaled_sums }
    }

    /// The quantized values of block `b` of `row`.
    pub fn block(&self, row: usize, b: usize) -> &[i8] {
        &self.qs[(row * self.blocks + b) * BLOCK..][..BLOCK]
    }
}

/// Quantizes whole blocks; rounding is to nearest, ties to even, as llama.cpp's SIMD quantizer
/// (`quantize_row_q8_0`) rounds.
fn quantize_blocks(x: &[f32], qs: &mut [i8], scales: &mut [f32], sums: &mut [[i32; 2]]) {
    assert_eq!(x.len(), qs.len());
    assert_eq!(x.len(), scales.len() * BLOCK);
    assert_eq!(sums.len(), scales.len());
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has the instructions (checked), and the lengths agree (asserted).
        unsafe { quantize_blocks_avx512(x, qs, scales, sums) };
        return;
    }
    quantize_blocks_scalar(x, qs, scales, sums);
}

/// The scale a block's largest magnitude gives, and its inverse (0 for an all-zero block).
fn scale_of(max: f32) -> (f32, f32) {
    let scale = max / 127.0;
    (scale, if scale > 0.0 { 1.0 / scale } else { 0.0 })
}

/// Stored in f16, as ggml's `block_q8_0` stores it (the values were rounded with the exact
/// scale): the same numbers candle's and llama.cpp's q8_0 products use.
fn stored_scale(scale: f32) -> f32 {
    half::f16::from_f32(scale).to_f32()
}

/// Two vectors a block: `roundf` per value took a sixth of a prefill step when it was scalar.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_blocks_avx512(
    x: &[f32],
    qs: &mut [i8],
    scales: &mut [f32],
    sums: &mut [[i32; 2]],
) {
    use std::arch::x86_64::*;
    for (b, (scale_out, sum)) in scales.iter_mut().zip(sums).enumerate() {
        // SAFETY: block `b`'s 32 values and 32 bytes lie inside `x` and `qs` (the caller's
        // lengths agree).
        let (input, output) =
            unsafe { (x.as_ptr().add(b * BLOCK), qs.as_mut_ptr().add(b * BLOCK)) };
        let halves = [0, HALF].map(|at| unsafe { _mm512_loadu_ps(input.add(at)) });
        let max =
            _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(halves[0]), _mm512_abs_ps(halves[1])));
        let (scale, inverse) = scale_of(max);
        for (h, half) in halves.into_iter().enumerate() {
            // Round to nearest even (the default rounding mode), as `round_ties_even`.
            let q = _mm512_cvtps_epi32(_mm512_mul_ps(half, _mm512_set1_ps(inverse)));
            sum[h] = _mm512_reduce_add_epi32(q);
            unsafe {
                _mm_storeu_si128(output.add(h * HALF) as *mut __m128i, _mm512_cvtepi32_epi8(q))
            };
        }
        *scale_out = stored_scale(scale);
    }
}

fn quantize_blocks_scalar(x: &[f32], qs: &mut [i8], scales: &mut [f32], sums: &mut [[i32; 2]]) {
    let blocks = x.chunks_exact(BLOCK).zip(qs.chunks_exact_mut(BLOCK));
    for ((block, out), (scale_out, sum)) in blocks.zip(scales.iter_mut().zip(sums)) {
        let (scale, inverse) = scale_of(block.iter().fold(0f32, |m, v| m.max(v.abs())));
        *sum = [0; 2];
        for (i, (q, v)) in out.iter_mut().zip(block).enumerate() {
            *q = (v * inverse).round_ties_even() as i8;
            sum[i / HALF] += *q as i32;
        }
        *scale_out = stored_scale(scale);
    }
}

/// The output of a product, written by several threads at once, each to its own columns.
#[derive(Clone, Copy)]
pub struct Output {
    pub ptr: *mut f32,
    pub len: usize,
}

// SAFETY: the kernels give each thread its own stripes of output columns, so no two threads
// write the same element; every write is bounds-checked against `len`.
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

/// Output rows per stripe: one 512-bit register of 32-bit lanes.
pub const TILE_ROWS: usize = 16;

/// A weight `[out, in]` repacked for an int8 kernel, in stripes of [`TILE_ROWS`] output rows.
pub trait PackedWeight: Sync {
    /// The op's name, for candle and for errors.
    const NAME: &'static str;

    /// `(out, in)`.
    fn dims(&self) -> (usize, usize);

    /// Writes the stripe's [`TILE_ROWS`] columns of every row of `x` into `out`
    /// (`x.rows × out_dim` values).
    ///
    /// # Safety
    /// The weight must have been built for instructions this CPU has, and no other thread may
    /// write this stripe's columns meanwhile.
    unsafe fn stripe(&self, x: &Activations, stripe: usize, out: Output);
}

/// A kernel over a group of activation rows whose count is a constant, so that the group's
/// accumulators stay in registers; [`RowGroups::all_rows`] covers any number of rows with it.
pub trait RowGroups {
    /// Rows `first..first + N`.
    ///
    /// # Safety
    /// Those rows exist, and the CPU has the kernel's instructions.
    unsafe fn rows<const N: usize>(&self, first: usize);

    /// Whether the kernel has [`Self::tile_rows`]; without it, `all_rows` configures no tiles.
    const TILED: bool = false;

    /// Rows `first..first + 16 chunks` (`chunks` 1 or 2) through AMX tile products.
    ///
    /// # Safety
    /// Those rows exist, `tiles` is this thread's configuration, and the kernel is `TILED`.
    unsafe fn tile_rows(&self, _first: usize, _chunks: usize, _tiles: &amx::Tiles) {
        unreachable!("tile_rows on a kernel without a tile path")
    }

    /// Rows `0..rows`: in tile products of 32 and 16 where `tiled` (see [`Activations::tiled`]), then
    /// in groups of 8, then at most one group each of 4, 2 and 1.
    ///
    /// # Safety
    /// As [`Self::rows`], for every row below `rows`; `tiled` only where [`amx::available`].
    unsafe fn all_rows(&self, rows: usize, tiled: bool) {
        let mut first = 0;
        #[cfg(target_arch = "x86_64")]
        if Self::TILED && tiled {
            // SAFETY: the caller's: AMX is available.
            let tiles = unsafe { amx::Tiles::configure(BLOCK) };
            while rows - first >= amx::ROWS {
                let chunks = if rows - first >= 2 * amx::ROWS { 2 } else { 1 };
                // SAFETY: the caller's; rows `first..first + 16 chunks` lie below `rows`.
                unsafe { self.tile_rows(first, chunks, &tiles) };
                first += chunks * amx::ROWS;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = tiled;
        while first < rows {
            let n = match rows - first {
                n if n >= 8 => 8,
                n if n >= 4 => 4,
                n if n >= 2 => 2,
                _ => 1,
            };
            // SAFETY: the caller's; rows `first..first + n` lie below `rows`.
            unsafe {
                match n {
                    8 => self.rows::<8>(first),
                    4 => self.rows::<4>(first),
                    2 => self.rows::<2>(first),
                    _ => self.rows::<1>(first),
                }
            }
            first += n;
        }
    }
}

/// `x · Wᵀ` for an f32 `[.., in]` input on the CPU, for any number of rows.
pub fn forward<W: PackedWeight>(weight: &W, x: &Tensor) -> Result<Tensor> {
    let (out_dim, in_dim) = weight.dims();
    if !x.device().is_cpu() || x.dtype() != DType::F32 || x.dims().last() != Some(&in_dim) {
        candle_core::bail!(
            "{} takes an f32 CPU input of width {in_dim}, got {:?} {:?} on {:?}",
            W::NAME,
            x.dtype(),
            x.dims(),
            x.device()
        );
    }
    let y = x.contiguous()?.apply_op1_no_bwd(&Op(weight))?;
    let mut dims = x.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = out_dim;
    }
    y.reshape(dims)
}

/// A packed weight as a candle op.
struct Op<'a, W>(&'a W);

impl<W: PackedWeight> CustomOp1 for Op<'_, W> {
    fn name(&self) -> &'static str {
        W::NAME
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some(x) = super::split_matmul::contiguous_f32(storage, layout) else {
            candle_core::bail!("{} takes a contiguous f32 input", W::NAME);
        };
        let (out_dim, in_dim) = self.0.dims();
        let rows = x.len() / in_dim;
        let activations = Activations::quantize(x, rows, in_dim);
        let mut y = vec![0f32; rows * out_dim];
        product(self.0, &activations, &mut y);
        Ok((CpuStorage::F32(y), Shape::from((rows, out_dim))))
    }
}

/// Every stripe of the product, split over the barrier pool: each thread walks its own run of
/// stripes, so a stripe's tiles are read from memory once and from cache for the other rows.
fn product<W: PackedWeight>(weight: &W, x: &Activations, y: &mut [f32]) {
    let (out_dim, in_dim) = weight.dims();
    assert_eq!(y.len(), x.rows * out_dim);
    assert_eq!(x.blocks, in_dim / BLOCK);
    let stripes = out_dim / TILE_ROWS;
    let threads = barrier_pool().n_workers() + 1;
    let per_thread = stripes.div_ceil(threads);
    let out = Output { ptr: y.as_mut_ptr(), len: y.len() };
    barrier_pool().execute(|tid| {
        let first = (tid * per_thread).min(stripes);
        let last = ((tid + 1) * per_thread).min(stripes);
        for stripe in first..last {
            // SAFETY: a packed weight exists only for instructions its CPU has (its
            // constructors check), and each stripe belongs to one thread.
            unsafe { weight.stripe(x, stripe, out) };
        }
    });
}

/// For the kernels' tests: runs `weight`'s product of 16, 33, 48 and 64 random rows with AMX
/// tile products and without, and checks they agree. The int32 sums are exact either way; the
/// scales, offsets and minimums are applied in another order (folded per block), so the two
/// differ by f32 rounding only, and rows past the last whole 16 take the VNNI path in both.
/// Returns `false`, having checked nothing, where this CPU has no AMX.
#[cfg(test)]
pub fn tile_path_matches_vnni<W: PackedWeight>(weight: &W, what: &str) -> bool {
    let (out_dim, in_dim) = weight.dims();
    for rows in [16, 33, 48, 64] {
        let x = Tensor::randn(0f32, 1.0, (rows, in_dim), &candle_core::Device::Cpu).unwrap();
        let values = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut activations = Activations::quantize(&values, rows, in_dim);
        let run = |x: &Activations| {
            let mut y = vec![0f32; rows * out_dim];
            product(weight, x, &mut y);
            y
        };
        if !activations.tiled {
            return false;
        }
        let tiled = run(&activations);
        activations.tiled = false;
        let untiled = run(&activations);
        let largest = untiled.iter().fold(0f32, |m, v| m.max(v.abs()));
        let gap = tiled.iter().zip(&untiled).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(gap <= 1e-5 * largest, "{what}, {rows} rows: {gap} (largest {largest})");
        let tail = rows % amx::ROWS * out_dim;
        assert_eq!(tiled[tiled.len() - tail..], untiled[untiled.len() - tail..], "{what}");
    }
    true
}

/// For the kernels' tests: the largest difference between two products, relative to the
/// largest output of `want`.
#[cfg(test)]
pub fn relative_gap(got: &Tensor, want: &Tensor) -> f32 {
    let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
    let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    diff.to_scalar::<f32>().unwrap() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values with every kind of block: random, all zero, one large value, exact ties.
    fn inputs(blocks: usize) -> Vec<f32> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut x: Vec<f32> = (0..blocks * BLOCK)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 20_001) as f32 / 1_000.0 - 10.0
            })
            .collect();
        x[BLOCK..2 * BLOCK].fill(0.0);
        x[2 * BLOCK + 5] = 1e4;
        // max 127 gives scale 1: 2.5 and -3.5 are exact ties.
        x[3 * BLOCK..4 * BLOCK].fill(2.5);
        x[3 * BLOCK] = 127.0;
        x[3 * BLOCK + 1] = -3.5;
        x
    }

    fn quantized(x: &[f32], avx512: bool) -> (Vec<i8>, Vec<f32>, Vec<[i32; 2]>) {
        let blocks = x.len() / BLOCK;
        let (mut qs, mut scales, mut sums) =
            (vec![0i8; x.len()], vec![0f32; blocks], vec![[0i32; 2]; blocks]);
        if avx512 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: only called where the CPU has AVX-512 (checked by the test).
            unsafe {
                quantize_blocks_avx512(x, &mut qs, &mut scales, &mut sums)
            };
        } else {
            quantize_blocks_scalar(x, &mut qs, &mut scales, &mut sums);
        }
        (qs, scales, sums)
    }

    #[test]
    fn scalar_quantizer_rounds_ties_to_even_and_sums_halves() {
        let x = inputs(64);
        let (qs, scales, sums) = quantized(&x, false);
        assert_eq!(scales[1], 0.0, "an all-zero block has scale 0");
        assert!(qs[BLOCK..2 * BLOCK].iter().all(|&q| q == 0));
        assert_eq!(qs[2 * BLOCK + 5], 127);
        assert_eq!(scales[3], 1.0);
        assert_eq!(&qs[3 * BLOCK..3 * BLOCK + 3], &[127, -4, 2], "ties round to even");
        for (b, sum) in sums.iter().enumerate() {
            let half = |h: usize| qs[b * BLOCK + h * HALF..][..HALF].iter().map(|&q| q as i32);
            assert_eq!(*sum, [half(0).sum::<i32>(), half(1).sum()]);
        }
    }

    #[test]
    fn avx512_quantizer_matches_the_scalar_one_exactly() {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw") {
            let x = inputs(64);
            assert_eq!(quantized(&x, true), quantized(&x, false));
            return;
        }
        eprintln!("no AVX-512 on this CPU: only the scalar quantizer runs here");
    }
}
