//! q4_0, q4_1, q5_0 and q5_1 products on CPUs with AVX-512 VNNI, with the weights kept at 4 and
//! 5 bits.
//!
//! Decode reads every weight once per token, so its speed is the bytes a weight takes. The int8
//! copy of `int8_matmul.rs` reads 1.5 bytes a weight where these files store 0.56 to 0.75, and
//! on a CPU with little memory bandwidth per core that made decoding them slower than
//! llama.cpp's. The four types store a weight as `w = d·(n − offset) − m` with `n` a 4- or 5-bit
//! integer and one f16 `d` and `m` per 32 values, so here a tile of 16 output rows × 32 inputs
//! is 256 bytes of low nibbles plus 16 f16 scales and 16 f16 minimums (320 bytes, 0.625 bytes a
//! weight), and for the 5-bit types a 64-byte plane of the fifth bits beside it (0.75 bytes a
//! weight): within a sixteenth of a byte of the files themselves (0.5625 to 0.75 bytes a
//! weight, their scales f16 as here). The 5-bit types matter beyond their own files:
//! llama.cpp writes them for the rows of a q4_k or q5_k file that are not whole 256-value
//! super-blocks (every layer of a 576-wide model).
//!
//! The nibbles of input groups `p` and `p + 4` (4 inputs × 16 rows each) share a 64-byte vector,
//! low and high halves of each byte. Per tile, the 4 vectors are split into the 8 byte vectors
//! `vpdpbusd` takes (unsigned, 0–15; the fifth bit added as 16 under a 64-bit mask, 0–31) once
//! for every activation row of a group, and the rest is the q8_0 kernel's: the offset taken back
//! out with the activation block's sum, one scale per block. The sums are exact integer dot
//! products of the stored integers, as in the other int8 kernels. Tiles of 16 outputs are spread
//! over the pool by `activations::forward`.
//!
//! Written here because no crate at hand runs 4- or 5-bit products for many rows without a
//! widened copy of the weight; llama.cpp's own kernels do the same at 4 and 5 bits.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Result, Tensor};

use super::activations::{Activations, Output, PackedWeight, RowGroups, BLOCK, HALF, TILE_ROWS};
use super::amx;
use super::ggml_groups::{self, Group};

/// 16 output rows × 32 inputs at 4 bits.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Tile {
    /// `qs[p][4 * row + j]`: `n(row, 4p + j)` in the low nibble, `n(row, 16 + 4p + j)` in the
    /// high one.
    qs: [[u8; 4 * TILE_ROWS]; BLOCK / 8],
    /// The 16 rows' `d`, f16 bits.
    scales: [u16; TILE_ROWS],
    /// The 16 rows' `m` (`w = d·(n − offset) − m`), f16 bits.
    mins: [u16; TILE_ROWS],
}

/// The fifth bits of a tile's 16 × 32 integers: `bits[g]` bit `4 * row + j` is bit 4 of
/// `n(row, 4g + j)`, the byte layout of the kernel's byte vector `g`, so that it is the mask
/// that adds 16 to those bytes.
type FifthBits = [u64; BLOCK / 4];

/// A q4_0, q4_1, q5_0 or q5_1 weight `[out, in]` repacked for [`PackedNibble::forward`].
#[derive(Clone)]
pub struct PackedNibble {
    /// `tiles[stripe * blocks + block]`, stripes of 16 output rows.
    tiles: Vec<Tile>,
    /// The 5-bit types' fifth bits, one per tile in the same order; empty for the 4-bit types.
    fifth_bits: Vec<FifthBits>,
    /// 4 or 5.
    bits: u32,
    /// What the stored integers exceed the type's by (8 for q4_0, 16 for q5_0, 0 for the
    /// types with a minimum).
    offset: i32,
    out_dim: usize,
    in_dim: usize,
}

impl std::fmt::Debug for PackedNibble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedNibble [{}, {}]", self.out_dim, self.in_dim)
    }
}

impl PackedNibble {
    /// Repacks a q4_0, q4_1, q5_0 or q5_1 CPU weight; `None` where the kernel cannot take it
    /// (another type or device, an output size that is not a multiple of 16, a CPU without
    /// AVX-512 VNNI, or values that are not the type's: those go to `int8_matmul.rs`, which
    /// checks them too).
    pub fn from_qtensor(weight: &QTensor) -> Result<Option<Self>> {
        let (offset, bits) = match weight.dtype() {
            GgmlDType::Q4_0 => (8, 4),
            GgmlDType::Q4_1 => (0, 4),
            GgmlDType::Q5_0 => (16, 5),
            GgmlDType::Q5_1 => (0, 5),
            _ => return Ok(None),
        };
        let (out_dim, in_dim) = weight.shape().dims2()?;
        if !weight.device().is_cpu()
            || !out_dim.is_multiple_of(TILE_ROWS)
            || !in_dim.is_multiple_of(BLOCK)
            || !super::q8_matmul::supported()
        {
            return Ok(None);
        }
        let blocks = in_dim / BLOCK;
        let num_tiles = out_dim / TILE_ROWS * blocks;
        let mut tiles = Vec::with_capacity(num_tiles);
        let mut fifth_bits = Vec::with_capacity(if bits == 5 { num_tiles } else { 0 });
        for stripe in 0..out_dim / TILE_ROWS {
            let rows = stripe * TILE_ROWS..(stripe + 1) * TILE_ROWS;
            let Ok(groups) = ggml_groups::read_rows(weight, rows) else { return Ok(None) };
            for b in 0..blocks {
                let Some((tile, high)) = tile(&groups, in_dim / HALF, b, offset, bits) else {
                    return Ok(None);
                };
                tiles.push(tile);
                if bits == 5 {
                    fifth_bits.push(high);
                }
            }
        }
        Ok(Some(Self { tiles, fifth_bits, bits, out_dim, in_dim, offset }))
    }

    /// `x · Wᵀ` for an f32 `[.., in]` input on the CPU, for any number of rows.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        super::activations::forward(self, x)
    }
}

/// Block `b` of a stripe's 16 rows (`groups`: `per_row` groups of 16 a row) and its fifth bits,
/// or `None` when a block's halves differ in scale or minimum, a scale is not an f16, or a
/// value does not fit `bits` bits after the offset.
fn tile(
    groups: &[Group],
    per_row: usize,
    b: usize,
    offset: i32,
    bits: u32,
) -> Option<(Tile, FifthBits)> {
    let as_f16 = |v: f32| {
        let h = half::f16::from_f32(v);
        (h.to_f32() == v).then_some(h.to_bits())
    };
    let mut tile =
        Tile { qs: [[0; 4 * TILE_ROWS]; BLOCK / 8], scales: [0; TILE_ROWS], mins: [0; TILE_ROWS] };
    let mut high: FifthBits = [0; BLOCK / 4];
    for r in 0..TILE_ROWS {
        let (low_half, high_half) =
            (&groups[r * per_row + 2 * b], &groups[r * per_row + 2 * b + 1]);
        if (low_half.scale, low_half.min) != (high_half.scale, high_half.min) {
            return None;
        }
        tile.scales[r] = as_f16(low_half.scale)?;
        tile.mins[r] = as_f16(low_half.min)?;
        for (i, &v) in low_half.v.iter().chain(&high_half.v).enumerate() {
            let n = u8::try_from(v as i32 + offset).ok().filter(|&n| n >> bits == 0)?;
            // Input i is group i / 4; groups 4..8 take the high nibbles of groups 0..4.
            let (g, j) = (i / 4, i % 4);
            tile.qs[g % 4][4 * r + j] |= (n & 0x0F) << (4 * (g / 4));
            high[g] |= u64::from(n >> 4) << (4 * r + j);
        }
    }
    Some((tile, high))
}

impl PackedWeight for PackedNibble {
    const NAME: &'static str = "q4-q5-nibble-vnni-matmul";

    fn dims(&self) -> (usize, usize) {
        (self.out_dim, self.in_dim)
    }

    unsafe fn stripe(&self, x: &Activations, stripe: usize, out: Output) {
        let range = stripe * x.blocks..(stripe + 1) * x.blocks;
        let tiles = &self.tiles[range.clone()];
        let fifth_bits: &[FifthBits] = match self.bits {
            5 => &self.fifth_bits[range],
            _ => &[],
        };
        let job = Stripe {
            tiles,
            fifth_bits,
            x,
            stripe,
            offset: self.offset,
            out_dim: self.out_dim,
            out,
        };
        // SAFETY: the caller's (`PackedWeight::stripe`); a `PackedNibble` exists only where
        // the CPU has AVX-512 VNNI. The kernel's writes are bounds-checked.
        unsafe { job.all_rows(x.rows, x.tiled) };
    }
}

/// One thread's share of a product: a stripe of 16 output columns, every row.
struct Stripe<'a> {
    tiles: &'a [Tile],
    /// One per tile for the 5-bit types, empty for the 4-bit ones.
    fifth_bits: &'a [FifthBits],
    x: &'a Activations,
    stripe: usize,
    offset: i32,
    out_dim: usize,
    out: Output,
}

#[cfg(target_arch = "x86_64")]
impl Stripe<'_> {
    /// Rows `first..first + N` (all present), their accumulators in registers; per tile, the
    /// nibbles (and fifth bits when `FIVE`) are split into byte vectors once for all N rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn kernel<const N: usize, const FIVE: bool>(&self, first: usize) {
        use std::arch::x86_64::*;
        let blocks = self.x.blocks;
        assert!((first + N) * blocks <= self.x.scales.len());
        assert!(!FIVE || self.fifth_bits.len() == self.tiles.len());
        let mut acc = [_mm512_setzero_ps(); N];
        for (b, tile) in self.tiles.iter().enumerate() {
            let w = self.unpack::<FIVE>(b, tile);
            let scales = _mm512_cvtph_ps(_mm256_load_si256(tile.scales.as_ptr() as *const __m256i));
            let mins = _mm512_cvtph_ps(_mm256_load_si256(tile.mins.as_ptr() as *const __m256i));
            for (slot, acc) in acc.iter_mut().enumerate() {
                let at = (first + slot) * blocks + b;
                // SAFETY: block `at` exists (asserted above); its 32 bytes are 8 groups of 4.
                let xq = unsafe { self.x.qs.as_ptr().add(at * BLOCK) } as *const i32;
                let [low, high] = self.x.half_sums[at];
                let sum = low + high;
                // Two chains, so that each dpbusd waits on one half as many before it.
                let mut even = _mm512_set1_epi32(-self.offset * sum);
                let mut odd = _mm512_setzero_si512();
                for g in (0..BLOCK / 4).step_by(2) {
                    // SAFETY: groups `g` and `g + 1` lie inside the block.
                    let (x0, x1) =
                        unsafe { (xq.add(g).read_unaligned(), xq.add(g + 1).read_unaligned()) };
                    even = _mm512_dpbusd_epi32(even, w[g], _mm512_set1_epi32(x0));
                    odd = _mm512_dpbusd_epi32(odd, w[g + 1], _mm512_set1_epi32(x1));
                }
                let dot = _mm512_cvtepi32_ps(_mm512_add_epi32(even, odd));
                let t =
                    _mm512_fnmadd_ps(mins, _mm512_set1_ps(sum as f32), _mm512_mul_ps(dot, scales));
                *acc = _mm512_fmadd_ps(t, _mm512_set1_ps(self.x.scales[at]), *acc);
            }
        }
        self.store(first, &acc);
    }

    /// Tile `b`'s integers as the 8 byte vectors of its input groups (unsigned, 0–15 or 0–31).
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn unpack<const FIVE: bool>(
        &self,
        b: usize,
        tile: &Tile,
    ) -> [std::arch::x86_64::__m512i; BLOCK / 4] {
        use std::arch::x86_64::*;
        let low_nibbles = _mm512_set1_epi8(0x0F);
        let sixteen = _mm512_set1_epi8(16);
        // SAFETY (loads): a tile is 64-byte aligned and its arrays are whole vectors.
        let packed: [__m512i; BLOCK / 8] =
            std::array::from_fn(|p| _mm512_load_si512(tile.qs[p].as_ptr() as *const __m512i));
        std::array::from_fn(|g| {
            let v = packed[g % 4];
            let v = if g < 4 { v } else { _mm512_srli_epi16::<4>(v) };
            let v = _mm512_and_si512(v, low_nibbles);
            if FIVE {
                _mm512_mask_add_epi8(v, self.fifth_bits[b][g], v, sixteen)
            } else {
                v
            }
        })
    }

    /// Rows `first..first + 16 chunks` (all present) through AMX: every tile unpacked to
    /// bytes, one tile product per block and chunk, then the scales and minimums in AVX-512.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tiled<const FIVE: bool>(&self, first: usize, chunks: usize, tiles: &amx::Tiles) {
        use std::arch::x86_64::*;
        assert!(!FIVE || self.fifth_bits.len() == self.tiles.len());
        assert_eq!(tiles.inputs(), BLOCK, "tiles configured for this kernel");
        let to = amx::Columns {
            out: self.out,
            out_dim: self.out_dim,
            first_column: self.stripe * TILE_ROWS,
        };
        let prepare = |scratch: &mut amx::Scratch| {
            let buffers = scratch.weights.iter_mut().zip(scratch.lanes.chunks_exact_mut(2));
            for (b, (tile, (bytes, lanes))) in self.tiles.iter().zip(buffers).enumerate() {
                for (out, w) in bytes.0.iter_mut().zip(self.unpack::<FIVE>(b, tile)) {
                    // SAFETY: each row of a weight tile is 64 aligned bytes.
                    _mm512_store_si512(out.as_mut_ptr() as *mut __m512i, w);
                }
                scratch.weight_tiles.push(bytes.0.as_ptr() as *const u8);
                // The weights' scales, and what a block's activation sum multiplies (the
                // stored integers' offset times the scale, plus the minimum).
                // SAFETY: a tile's f16 arrays are 32 aligned bytes, `Lanes` 64.
                let scales =
                    _mm512_cvtph_ps(_mm256_load_si256(tile.scales.as_ptr() as *const __m256i));
                let mins = _mm512_cvtph_ps(_mm256_load_si256(tile.mins.as_ptr() as *const __m256i));
                let offset = _mm512_set1_ps(self.offset as f32);
                _mm512_store_ps(lanes[0].0.as_mut_ptr(), scales);
                _mm512_store_ps(lanes[1].0.as_mut_ptr(), _mm512_fmadd_ps(scales, offset, mins));
            }
        };
        // SAFETY: the caller's for the rows and the columns; the weight tiles are the scratch's
        // own 512-byte buffers, alive for the pass.
        unsafe { tiles.tile_pass(self.x, first, chunks, self.tiles.len(), to, prepare) };
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
        unsafe {
            match self.fifth_bits.is_empty() {
                true => self.kernel::<N, false>(first),
                false => self.kernel::<N, true>(first),
            }
        }
    }

    const TILED: bool = cfg!(target_arch = "x86_64");

    #[cfg(target_arch = "x86_64")]
    unsafe fn tile_rows(&self, first: usize, chunks: usize, tiles: &amx::Tiles) {
        // SAFETY: the caller's (`RowGroups::tile_rows`); AMX implies AVX-512 VNNI.
        unsafe {
            match self.fifth_bits.is_empty() {
                true => self.tiled::<false>(first, chunks, tiles),
                false => self.tiled::<true>(first, chunks, tiles),
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl Stripe<'_> {
    unsafe fn kernel<const N: usize, const FIVE: bool>(&self, _: usize) {
        unreachable!("PackedNibble is only built where the CPU has AVX-512 VNNI")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::activations::relative_gap;
    use crate::kernels::activations::tile_path_matches_vnni;
    use candle_core::quantized::QMatMul;
    use candle_core::{Device, Module};

    fn packed(dtype: GgmlDType, out_dim: usize, in_dim: usize) -> Option<(PackedNibble, QTensor)> {
        let w = Tensor::randn(0f32, 1.0, (out_dim, in_dim), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        match PackedNibble::from_qtensor(&q).unwrap() {
            Some(p) => Some((p, q)),
            None => {
                assert!(!super::super::q8_matmul::supported(), "{dtype:?} {out_dim}x{in_dim} fits");
                None
            }
        }
    }

    const TYPES: [GgmlDType; 4] =
        [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1];

    #[test]
    fn equals_the_exact_product_of_its_quantized_operands() {
        for dtype in TYPES {
            let Some((packed, q)) = packed(dtype, 48, 256) else { return };
            let dense = q.dequantize(&Device::Cpu).unwrap();
            for rows in [1, 2, 3, 5, 8, 13] {
                // Every block of 32 holds a 127, so its q8_0 scale is exactly 1.
                let values: Vec<f32> = (0..rows * 256)
                    .map(|i| if i % 32 == 0 { 127.0 } else { (i * 37 % 255) as f32 - 127.0 })
                    .collect();
                let x = Tensor::from_vec(values, (rows, 256), &Device::Cpu).unwrap();
                let want = x.matmul(&dense.t().unwrap()).unwrap();
                let gap = relative_gap(&packed.forward(&x).unwrap(), &want);
                assert!(gap <= 1e-5, "{dtype:?} rows {rows}: {gap}");
            }
        }
    }

    #[test]
    fn matches_candle_on_the_families_layer_shapes() {
        let shapes = [(576, 576), (192, 576), (1536, 576), (576, 1536), (4864, 896)];
        for dtype in TYPES {
            for (out_dim, in_dim) in shapes {
                let Some((packed, q)) = packed(dtype, out_dim, in_dim) else { return };
                let reference = QMatMul::from_qtensor(q).unwrap();
                for rows in [1, 8, 19] {
                    let x = Tensor::randn(0f32, 1.0, (rows, in_dim), &Device::Cpu).unwrap();
                    let gap =
                        relative_gap(&packed.forward(&x).unwrap(), &reference.forward(&x).unwrap());
                    // candle quantizes q4_1's and q5_1's activations with q8_1: rounding
                    // differs a little.
                    assert!(gap <= 2e-2, "{dtype:?} {out_dim}x{in_dim} rows {rows}: {gap}");
                }
            }
        }
    }

    #[test]
    fn takes_only_the_4_and_5_bit_types() {
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::F16] {
            let w = Tensor::randn(0f32, 1.0, (32, 256), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            assert!(PackedNibble::from_qtensor(&q).unwrap().is_none(), "{dtype:?}");
        }
        let w = Tensor::randn(0f32, 1.0, (40, 64), &Device::Cpu).unwrap();
        let odd_rows = QTensor::quantize(&w, GgmlDType::Q4_0).unwrap();
        assert!(PackedNibble::from_qtensor(&odd_rows).unwrap().is_none());
    }

    #[test]
    fn tile_products_match_the_vnni_path() {
        for (out_dim, in_dim) in [(48, 512), (1536, 512), (576, 1536)] {
            let w = Tensor::randn(0f32, 1.0, (out_dim, in_dim), &Device::Cpu).unwrap();
            for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1] {
                let q = QTensor::quantize(&w, dtype).unwrap();
                let Some(packed) = PackedNibble::from_qtensor(&q).unwrap() else {
                    return; // no VNNI, so no AMX either
                };
                if !tile_path_matches_vnni(&packed, &format!("{dtype:?} {out_dim}x{in_dim}")) {
                    eprintln!("no AMX on this CPU: the tile path is not run here");
                    return;
                }
            }
        }
    }
}
