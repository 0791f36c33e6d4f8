//! q8_0 matrix products on CPUs with AVX-512 VNNI.
//!
//! A q8_0 weight is blocks of 32 int8 values with one f16 scale each (ggml's `block_q8_0`).
//! candle's CPU product takes one dot product per (row, output) pair through an AVX2 kernel
//! that converts two f16 scales per block; its faster repacked x86 path quantizes activations
//! in 256-value super-blocks and so only takes layers whose input size is a multiple of 256
//! (a 576-wide model such as SmolLM2 gets it for none but `down_proj`). Decode is memory-bound:
//! the weights must stream at the cores' bandwidth with little work per byte. Prefill is
//! compute-bound, and one `vpdpbusd` does 64 multiply-adds where an f32 FMA does 16.
//!
//! Here the weight is repacked once, at load, into tiles of 16 output rows × one 32-value
//! block: 16 f16 scales, then 8 groups of 4 input positions × 16 rows × 4 bytes, each byte the
//! weight plus 128. One `vpdpbusd` multiplies a group (64 bytes, all 16 rows) by 4 activation
//! bytes broadcast to every lane, so a block costs 8 of them per activation row; the +128
//! offset makes the weights unsigned, as the instruction wants, and is taken back out with the
//! activation block's sum, which is computed once per row and shared by every output. The
//! activations are quantized to q8_0 per call, as llama.cpp and candle also do.
//!
//! Tiles of 16 outputs are spread over candle's barrier pool (as in `split_matmul`): each
//! thread walks its own stripes of tiles, 8 activation rows at a time, so a stripe (a few
//! kilobytes per output tile row) is read from memory once and from L1 for the other rows.
//! Written here because no crate at hand runs q8_0 products at memory speed for any input size.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Result, Tensor};

use super::activations::{Activations, Output, PackedWeight, RowGroups, BLOCK, TILE_ROWS};
use super::amx;

/// Bytes of one ggml `block_q8_0`: an f16 scale, then 32 int8 values.
const BLOCK_BYTES: usize = 2 + BLOCK;

/// 16 output rows × one block of inputs.
#[derive(Clone, Copy)]
#[repr(C)]
struct Tile {
    /// The 16 rows' scales, f16 bits.
    scales: [u16; TILE_ROWS],
    /// `qs[g][4 * row + j]` = weight (row, 4g + j) + 128.
    qs: [[u8; 4 * TILE_ROWS]; BLOCK / 4],
}

/// A q8_0 weight `[out, in]` repacked for [`PackedQ8_0::forward`].
#[derive(Clone)]
pub struct PackedQ8_0 {
    /// `tiles[stripe * blocks + block]`, stripes of 16 output rows.
    tiles: Vec<Tile>,
    out_dim: usize,
    in_dim: usize,
}

impl std::fmt::Debug for PackedQ8_0 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedQ8_0 [{}, {}]", self.out_dim, self.in_dim)
    }
}

/// Whether this CPU has the instructions the kernel uses.
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl PackedQ8_0 {
    /// Repacks a q8_0 CPU weight; `None` when the kernel cannot take it (another type or
    /// device, an output size that is not a multiple of 16, or a CPU without AVX-512 VNNI).
    pub fn from_qtensor(weight: &QTensor) -> Result<Option<Self>> {
        let (out_dim, in_dim) = weight.shape().dims2()?;
        if weight.dtype() != GgmlDType::Q8_0
            || !weight.device().is_cpu()
            || out_dim % TILE_ROWS != 0
            || in_dim % BLOCK != 0
            || !supported()
        {
            return Ok(None);
        }
        Ok(Some(Self::repack(&weight.data()?, out_dim, in_dim)))
    }

    fn repack(data: &[u8], out_dim: usize, in_dim: usize) -> Self {
        let blocks = in_dim / BLOCK;
        let block_at = |row: usize, b: usize| {
            let at = (row * blocks + b) * BLOCK_BYTES;
            &data[at..at + BLOCK_BYTES]
        };
        let mut tiles = Vec::with_capacity(out_dim / TILE_ROWS * blocks);
        for stripe in 0..out_dim / TILE_ROWS {
            for b in 0..blocks {
                let mut tile = Tile { scales: [0; TILE_ROWS], qs: [[0; 4 * TILE_ROWS]; BLOCK / 4] };
                for r in 0..TILE_ROWS {
                    let block = block_at(stripe * TILE_ROWS + r, b);
                    tile.scales[r] = u16::from_le_bytes([block[0], block[1]]);
                    for (i, &q) in block[2..].iter().enumerate() {
                        tile.qs[i / 4][4 * r + i % 4] = (q as i8 as i16 + 128) as u8;
                    }
                }
                tiles.push(tile);
            }
        }
        Self { tiles, out_dim, in_dim }
    }

    /// The weight as a dense f32 `[out, in]` tensor (to check the repacking).
    #[cfg(test)]
    fn dequantize(&self) -> Result<Tensor> {
        let blocks = self.in_dim / BLOCK;
        let mut w = vec![0f32; self.out_dim * self.in_dim];
        for (t, tile) in self.tiles.iter().enumerate() {
            let (stripe, b) = (t / blocks, t % blocks);
            for r in 0..TILE_ROWS {
                let scale = half::f16::from_bits(tile.scales[r]).to_f32();
                let row = &mut w[(stripe * TILE_ROWS + r) * self.in_dim + b * BLOCK..][..BLOCK];
                for (i, out) in row.iter_mut().enumerate() {
                    *out = scale * (tile.qs[i / 4][4 * r + i % 4] as i32 - 128) as f32;
                }
            }
        }
        Tensor::from_vec(w, (self.out_dim, self.in_dim), &candle_core::Device::Cpu)
    }

    /// `x · Wᵀ` for an f32 `[.., in]` input on the CPU, for any number of rows: decode's few,
    /// and prefill's hundreds, where int8 products (64 multiply-adds an instruction) also beat
    /// a tiled f32 product (16), with no dequantized copy of the weight.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        super::activations::forward(self, x)
    }
}

impl PackedWeight for PackedQ8_0 {
    const NAME: &'static str = "q8_0-vnni-matmul";

    fn dims(&self) -> (usize, usize) {
        (self.out_dim, self.in_dim)
    }

    unsafe fn stripe(&self, x: &Activations, stripe: usize, out: Output) {
        let tiles = &self.tiles[stripe * x.blocks..(stripe + 1) * x.blocks];
        let job = Stripe { tiles, x, stripe, out_dim: self.out_dim, out };
        // SAFETY: the caller's (`PackedWeight::stripe`); `PackedQ8_0` exists only where
        // `supported()` held. The kernel's writes are bounds-checked.
        unsafe { job.all_rows(x.rows, x.tiled) };
    }
}

/// One thread's share of a product: a stripe of 16 output columns, every row.
struct Stripe<'a> {
    tiles: &'a [Tile],
    x: &'a Activations,
    stripe: usize,
    out_dim: usize,
    out: Output,
}

#[cfg(target_arch = "x86_64")]
impl Stripe<'_> {
    /// Rows `first..first + N` (all present), their accumulators in registers: per tile, its 8
    /// groups of weights are loaded once and serve every row, and each row's 4 activation
    /// bytes are broadcast straight from memory into the multiply-add.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn kernel<const N: usize>(&self, first: usize) {
        use std::arch::x86_64::*;
        let blocks = self.x.blocks;
        assert!((first + N) * blocks <= self.x.scales.len());
        let mut acc = [_mm512_setzero_ps(); N];
        for (b, tile) in self.tiles.iter().enumerate() {
            // SAFETY (loads): a tile is 32 + 512 bytes, read with unaligned loads inside it.
            let w: [__m512i; BLOCK / 4] =
                std::array::from_fn(|g| _mm512_loadu_si512(tile.qs[g].as_ptr() as *const __m512i));
            let scales =
                _mm512_cvtph_ps(_mm256_loadu_si256(tile.scales.as_ptr() as *const __m256i));
            for (slot, acc) in acc.iter_mut().enumerate() {
                let at = (first + slot) * blocks + b;
                // SAFETY: block `at` exists (asserted above); its 32 bytes are 8 groups of 4.
                let xq = unsafe { self.x.qs.as_ptr().add(at * BLOCK) } as *const i32;
                let [low, high] = self.x.half_sums[at];
                // Two chains, so that each dpbusd waits on one half as many before it.
                let mut even = _mm512_set1_epi32(-128 * (low + high));
                let mut odd = _mm512_setzero_si512();
                for g in (0..BLOCK / 4).step_by(2) {
                    // SAFETY: groups `g` and `g + 1` lie inside the block.
                    let (x0, x1) =
                        unsafe { (xq.add(g).read_unaligned(), xq.add(g + 1).read_unaligned()) };
                    even = _mm512_dpbusd_epi32(even, w[g], _mm512_set1_epi32(x0));
                    odd = _mm512_dpbusd_epi32(odd, w[g + 1], _mm512_set1_epi32(x1));
                }
                let dot = _mm512_add_epi32(even, odd);
                let scale = _mm512_mul_ps(scales, _mm512_set1_ps(self.x.scales[at]));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, *acc);
            }
        }
        self.store(first, &acc);
    }

    /// Rows `first..first + 16 chunks` (all present) through AMX: one tile product per block
    /// and chunk of 16 rows (their 32 activation bytes by the weight tile), then the blocks'
    /// scales in AVX-512.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tiled(&self, first: usize, chunks: usize, tiles: &amx::Tiles) {
        use std::arch::x86_64::*;
        assert_eq!(tiles.inputs(), BLOCK, "tiles configured for this kernel");
        let to = amx::Columns {
            out: self.out,
            out_dim: self.out_dim,
            first_column: self.stripe * TILE_ROWS,
        };
        let prepare = |scratch: &mut amx::Scratch| {
            for (tile, lanes) in self.tiles.iter().zip(scratch.lanes.chunks_exact_mut(2)) {
                scratch.weight_tiles.push(tile.qs.as_ptr() as *const u8);
                // The weights' scales, and 128 times them (for the +128 offset).
                // SAFETY: a tile's scales are 32 bytes, `Lanes` 64 aligned bytes.
                let scales =
                    _mm512_cvtph_ps(_mm256_loadu_si256(tile.scales.as_ptr() as *const __m256i));
                _mm512_store_ps(lanes[0].0.as_mut_ptr(), scales);
                _mm512_store_ps(
                    lanes[1].0.as_mut_ptr(),
                    _mm512_mul_ps(scales, _mm512_set1_ps(128.0)),
                );
            }
        };
        // SAFETY: the caller's for the rows and the columns; a tile's `qs` is 512 bytes of the
        // weight, which outlives the pass.
        unsafe { tiles.tile_pass(self.x, first, chunks, 0, to, prepare) };
    }

    /// Writes rows `first..` of the stripe's 16 columns.
    #[target_feature(enable = "avx512f")]
    unsafe fn store(&self, first: usize, acc: &[std::arch::x86_64::__m512]) {
        for (slot, acc) in acc.iter().enumerate() {
            let at = (first + slot) * self.out_dim + self.stripe * TILE_ROWS;
            assert!(at + TILE_ROWS <= self.out.len);
            // SAFETY: in bounds (asserted); each stripe's columns belong to one thread.
            unsafe { std::arch::x86_64::_mm512_storeu_ps(self.out.ptr.add(at), *acc) };
        }
    }
}

impl RowGroups for Stripe<'_> {
    unsafe fn rows<const N: usize>(&self, first: usize) {
        // SAFETY: the caller's (`RowGroups::rows`).
        unsafe { self.kernel::<N>(first) }
    }

    const TILED: bool = cfg!(target_arch = "x86_64");

    #[cfg(target_arch = "x86_64")]
    unsafe fn tile_rows(&self, first: usize, chunks: usize, tiles: &amx::Tiles) {
        // SAFETY: the caller's (`RowGroups::tile_rows`); AMX implies AVX-512 VNNI.
        unsafe { self.tiled(first, chunks, tiles) };
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl Stripe<'_> {
    unsafe fn kernel<const N: usize>(&self, _: usize) {
        unreachable!("PackedQ8_0 is only built where supported() holds")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::activations::tile_path_matches_vnni;
    use candle_core::DType;
    use candle_core::Device;

    fn q8_0_weight(out_dim: usize, in_dim: usize) -> QTensor {
        let w = Tensor::randn(0f32, 1.0, (out_dim, in_dim), &Device::Cpu).unwrap();
        QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()
    }

    #[test]
    fn repacking_keeps_every_weight() {
        let q = q8_0_weight(32, 96);
        let packed = PackedQ8_0::repack(&q.data().unwrap(), 32, 96);
        let want = q.dequantize(&Device::Cpu).unwrap();
        let diff = (packed.dequantize().unwrap() - want).unwrap().abs().unwrap();
        assert_eq!(diff.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn matches_candles_q8_0_product_for_every_row_count() {
        let q = q8_0_weight(48, 576);
        let Some(packed) = PackedQ8_0::from_qtensor(&q).unwrap() else {
            assert!(!supported(), "a q8_0 CPU weight of 48 x 576 qualifies");
            return;
        };
        let reference = candle_core::quantized::QMatMul::from_qtensor(q).unwrap();
        for rows in [1, 2, 5, 8, 9, 16, 37] {
            let x = Tensor::randn(0f32, 1.0, (rows, 576), &Device::Cpu).unwrap();
            let want = candle_core::Module::forward(&reference, &x).unwrap();
            let got = packed.forward(&x).unwrap();
            // Both quantize the activations to q8_0 with f16 scales, but an exact tie rounds
            // to even here (llama.cpp's SIMD quantizer) and away from zero in candle's scalar
            // one: about one run in ten has a value a quantum apart (a gap near 1e-3).
            let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
            let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let d = diff.to_scalar::<f32>().unwrap();
            assert!(d <= 4e-3 * scale, "rows {rows}: {d} vs {scale}");
        }
        let batched = Tensor::randn(0f32, 1.0, (2, 3, 576), &Device::Cpu).unwrap();
        assert_eq!(packed.forward(&batched).unwrap().dims(), &[2, 3, 48]);
        let narrow = Tensor::zeros((1, 64), DType::F32, &Device::Cpu).unwrap();
        assert!(packed.forward(&narrow).is_err(), "the input width must match");
    }

    #[test]
    fn declines_weights_it_cannot_tile() {
        assert!(PackedQ8_0::from_qtensor(&q8_0_weight(40, 64)).unwrap().is_none());
        let q4 = QTensor::quantize(
            &Tensor::randn(0f32, 1.0, (32, 256), &Device::Cpu).unwrap(),
            GgmlDType::Q4K,
        )
        .unwrap();
        assert!(PackedQ8_0::from_qtensor(&q4).unwrap().is_none());
    }

    #[test]
    fn tile_products_match_the_vnni_path() {
        for (out_dim, in_dim) in [(48, 512), (1536, 512), (576, 1536)] {
            let w = Tensor::randn(0f32, 1.0, (out_dim, in_dim), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
            let Some(packed) = PackedQ8_0::from_qtensor(&q).unwrap() else {
                return; // no VNNI, so no AMX either
            };
            if !tile_path_matches_vnni(&packed, &format!("q8_0 {out_dim}x{in_dim}")) {
                eprintln!("no AMX on this CPU: the tile path is not run here");
                return;
            }
        }
    }
}
