//! Matrix products for every common ggml block type (q4_0 … q6_k), as int8 dot products.
//!
//! candle's CPU product for these types is one dot product per (row, output) pair, fine for
//! decode's one row but slow for several, and prefill used to dequantize the whole weight for
//! each call. Here each weight is read once, at load, into groups of 16 integers with a scale
//! and a minimum each (`w = scale·v − min`, see `ggml_groups.rs`: every type is exactly that)
//! and repacked into tiles of 16 output rows × 32 inputs. The activations are quantized to
//! q8_0 once per call, and a tile costs 8 int8 multiply-add instructions per activation row:
//!
//! - **AVX-512 VNNI**: one `vpdpbusd` multiplies 4 inputs of all 16 rows (the weights stored
//!   +128, unsigned as the instruction wants; the offset is taken back out with the activation
//!   half-block's sum, computed once per row).
//! - **AVX2**: `vpmaddubsw` + `vpmaddwd` on 8 rows at a time, with the usual sign trick
//!   (|x| times w with x's sign) so that no pair of products saturates 16 bits; the weights
//!   are stored signed for this path, and each activation group's |x| serves both halves of
//!   the tile.
//!
//! A group's scale and minimum are applied in f32 once per 16 inputs, so the sums are exact
//! integer dot products of the stored integers: the same numbers candle's and llama.cpp's
//! products compute, in another order. The int8 copy takes more memory than the 4–6-bit
//! original (1.5 bytes a weight), the price of one kernel for every type; q8_0 keeps its own,
//! tighter layout (`q8_matmul.rs`) on CPUs with VNNI.
//!
//! Tiles of 16 outputs are spread over candle's barrier pool as in `q8_matmul.rs`. Written here
//! because no crate at hand runs these types' products for many rows without a dequantized
//! copy of the weight.

use candle_core::quantized::QTensor;
use candle_core::{Result, Tensor};

use super::activations::{Activations, Output, PackedWeight, RowGroups, BLOCK, HALF, TILE_ROWS};
use super::ggml_groups;

/// 16 output rows × 32 inputs (two groups of 16 per row).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Tile {
    /// `qs[g][4 * row + j]` = v(row, 4g + j): plus 128 on the VNNI path (unsigned, as
    /// `vpdpbusd` wants), the signed value's bits on the AVX2 path.
    qs: [[u8; 4 * TILE_ROWS]; BLOCK / 4],
    /// `scales[half][row]`.
    scales: [[f32; TILE_ROWS]; 2],
    /// `mins[half][row]`.
    mins: [[f32; TILE_ROWS]; 2],
}

/// The instruction set a packed weight runs on, chosen once at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Path {
    Avx512Vnni,
    Avx2,
}

impl Path {
    /// The best path this CPU has, if any.
    pub fn detect() -> Option<Self> {
        [Self::Avx512Vnni, Self::Avx2].into_iter().find(|p| p.available())
    }

    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Self::Avx512Vnni => {
                    std::is_x86_feature_detected!("avx512f")
                        && std::is_x86_feature_detected!("avx512bw")
                        && std::is_x86_feature_detected!("avx512vnni")
                }
                Self::Avx2 => {
                    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

/// A ggml weight `[out, in]` repacked for [`PackedInt8::forward`].
#[derive(Clone)]
pub struct PackedInt8 {
    /// `tiles[stripe * blocks + block]`, stripes of 16 output rows.
    tiles: Vec<Tile>,
    out_dim: usize,
    in_dim: usize,
    path: Path,
}

impl std::fmt::Debug for PackedInt8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedInt8 [{}, {}] {:?}", self.out_dim, self.in_dim, self.path)
    }
}

impl PackedInt8 {
    /// Repacks a CPU weight of a type `ggml_groups` reads, for the best path this CPU has;
    /// `None` where the kernel cannot take it (another type or device, an output size that is
    /// not a multiple of 16, or a CPU with neither AVX2 nor AVX-512 VNNI).
    pub fn from_qtensor(weight: &QTensor) -> Result<Option<Self>> {
        match Path::detect() {
            Some(path) => Self::with_path(weight, path),
            None => Ok(None),
        }
    }

    /// As [`Self::from_qtensor`], on a given path (`None` if the CPU lacks it).
    pub fn with_path(weight: &QTensor, path: Path) -> Result<Option<Self>> {
        let (out_dim, in_dim) = weight.shape().dims2()?;
        if !ggml_groups::readable(weight.dtype())
            || !weight.device().is_cpu()
            || !out_dim.is_multiple_of(TILE_ROWS)
            || !in_dim.is_multiple_of(BLOCK)
            || !path.available()
        {
            return Ok(None);
        }
        let blocks = in_dim / BLOCK;
        let mut tiles = Vec::with_capacity(out_dim / TILE_ROWS * blocks);
        for stripe in 0..out_dim / TILE_ROWS {
            let rows = stripe * TILE_ROWS..(stripe + 1) * TILE_ROWS;
            let groups = match ggml_groups::read_rows(weight, rows) {
                Ok(groups) => groups,
                // Values that are not the type's integers (NaN, a crafted file): candle's own
                // product takes the layer.
                Err(e) => {
                    tracing::warn!(error = %e, "weight not repacked for the int8 kernel");
                    return Ok(None);
                }
            };
            let per_row = in_dim / HALF;
            let offset: i16 = if path == Path::Avx512Vnni { 128 } else { 0 };
            tiles.extend((0..blocks).map(|b| {
                let mut tile = Tile {
                    qs: [[0; 4 * TILE_ROWS]; BLOCK / 4],
                    scales: [[0.0; TILE_ROWS]; 2],
                    mins: [[0.0; TILE_ROWS]; 2],
                };
                for r in 0..TILE_ROWS {
                    for h in 0..2 {
                        let g = &groups[r * per_row + 2 * b + h];
                        tile.scales[h][r] = g.scale;
                        tile.mins[h][r] = g.min;
                        for (i, &v) in g.v.iter().enumerate() {
                            let at = h * HALF + i;
                            tile.qs[at / 4][4 * r + at % 4] = (v as i16 + offset) as u8;
                        }
                    }
                }
                tile
            }));
        }
        Ok(Some(Self { tiles, out_dim, in_dim, path }))
    }

    pub fn path(&self) -> Path {
        self.path
    }

    /// `x · Wᵀ` for an f32 `[.., in]` input on the CPU, for any number of rows.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        super::activations::forward(self, x)
    }
}

impl PackedWeight for PackedInt8 {
    const NAME: &'static str = "ggml-int8-matmul";

    fn dims(&self) -> (usize, usize) {
        (self.out_dim, self.in_dim)
    }

    unsafe fn stripe(&self, x: &Activations, stripe: usize, out: Output) {
        let tiles = &self.tiles[stripe * x.blocks..(stripe + 1) * x.blocks];
        let job = Stripe { tiles, x, stripe, out_dim: self.out_dim, out };
        // SAFETY: the caller's (`PackedWeight::stripe`); `with_path` builds a `PackedInt8`
        // only for a path its CPU has. The kernels write only the stripe's 16 columns of each
        // row, inside `out` (asserted in `Stripe::write`).
        unsafe {
            match self.path {
                Path::Avx512Vnni => job.all_rows(x.rows, x.tiled),
                Path::Avx2 => job.run_avx2(),
            }
        }
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

impl Stripe<'_> {
    fn write(&self, row: usize, first_column: usize, lanes: usize) -> *mut f32 {
        let at = row * self.out_dim + self.stripe * TILE_ROWS + first_column;
        assert!(at + lanes <= self.out.len);
        // SAFETY: in bounds (asserted); see `PackedInt8::product` for why writes are disjoint.
        unsafe { self.out.ptr.add(at) }
    }
}

/// Activation rows whose accumulators stay in registers at once on the AVX2 path (the VNNI
/// path takes `RowGroups`' groups).
const AVX2_ROWS: usize = 4;

#[cfg(target_arch = "x86_64")]
impl Stripe<'_> {
    /// Rows `first..first + N` (all present): per tile, its 8 groups of weights are loaded
    /// into registers once and serve every row, and each row's 4 activation bytes are
    /// broadcast straight from memory into the multiply-add.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn vnni_rows<const N: usize>(&self, first: usize) {
        use std::arch::x86_64::*;
        let blocks = self.x.blocks;
        assert!((first + N) * blocks <= self.x.scales.len());
        let mut acc = [_mm512_setzero_ps(); N];
        for (b, tile) in self.tiles.iter().enumerate() {
            // SAFETY (loads): a tile is 64-byte aligned and its arrays are whole vectors.
            let w: [__m512i; BLOCK / 4] =
                std::array::from_fn(|g| _mm512_load_si512(tile.qs[g].as_ptr() as *const __m512i));
            let scale = [0, 1].map(|h| _mm512_load_ps(tile.scales[h].as_ptr()));
            let min = [0, 1].map(|h| _mm512_load_ps(tile.mins[h].as_ptr()));
            for (slot, acc) in acc.iter_mut().enumerate() {
                let at = (first + slot) * blocks + b;
                // SAFETY: block `at` exists (asserted above); its 32 bytes are 8 groups of 4.
                let xq = unsafe { self.x.qs.as_ptr().add(at * BLOCK) } as *const i32;
                let sums = self.x.half_sums[at];
                let mut t = _mm512_setzero_ps();
                for (h, &sum) in sums.iter().enumerate() {
                    let mut dot = _mm512_set1_epi32(-128 * sum);
                    for (g, &wg) in w.iter().enumerate().skip(4 * h).take(4) {
                        // SAFETY: group `g`'s 4 bytes lie inside the block.
                        let x4 = _mm512_set1_epi32(unsafe { xq.add(g).read_unaligned() });
                        dot = _mm512_dpbusd_epi32(dot, wg, x4);
                    }
                    t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale[h], t);
                    t = _mm512_fnmadd_ps(min[h], _mm512_set1_ps(sum as f32), t);
                }
                *acc = _mm512_fmadd_ps(t, _mm512_set1_ps(self.x.scales[at]), *acc);
            }
        }
        for (slot, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(self.write(first + slot, 0, TILE_ROWS), *acc);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self) {
        use std::arch::x86_64::*;
        let ones = _mm256_set1_epi16(1);
        for group in (0..self.x.rows).step_by(AVX2_ROWS) {
            let rows = group..(group + AVX2_ROWS).min(self.x.rows);
            // Two registers of 8 output rows per activation row.
            let mut acc = [[_mm256_setzero_ps(); 2]; AVX2_ROWS];
            for (b, tile) in self.tiles.iter().enumerate() {
                for (slot, row) in rows.clone().enumerate() {
                    let at = row * self.x.blocks + b;
                    let sums = self.x.half_sums[at];
                    // The block's 32 activation bytes, read 4 at a time.
                    let xq = self.x.block(row, b).as_ptr() as *const i32;
                    let mut t = [_mm256_setzero_ps(); 2];
                    for (h, &sum) in sums.iter().enumerate() {
                        let mut dot = [_mm256_setzero_si256(); 2];
                        for g in 4 * h..4 * h + 4 {
                            // SAFETY: group `g`'s 4 bytes lie inside the block's 32.
                            let x4 = _mm256_set1_epi32(xq.add(g).read_unaligned());
                            let magnitude = _mm256_abs_epi8(x4);
                            for (part, dot) in dot.iter_mut().enumerate() {
                                // SAFETY: 32 aligned bytes inside the tile's group `g`.
                                let w = _mm256_load_si256(
                                    tile.qs[g].as_ptr().add(32 * part) as *const __m256i
                                );
                                // |x| times w with x's sign: no pair of products saturates.
                                let pairs =
                                    _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(w, x4));
                                *dot = _mm256_add_epi32(*dot, _mm256_madd_epi16(pairs, ones));
                            }
                        }
                        let sum = _mm256_set1_ps(sum as f32);
                        for (part, t) in t.iter_mut().enumerate() {
                            let lanes = 8 * part;
                            let scale = _mm256_loadu_ps(tile.scales[h].as_ptr().add(lanes));
                            let min = _mm256_loadu_ps(tile.mins[h].as_ptr().add(lanes));
                            *t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[part]), scale, *t);
                            *t = _mm256_fnmadd_ps(min, sum, *t);
                        }
                    }
                    let xs = _mm256_set1_ps(self.x.scales[at]);
                    for (acc, t) in acc[slot].iter_mut().zip(t) {
                        *acc = _mm256_fmadd_ps(t, xs, *acc);
                    }
                }
            }
            for (slot, row) in rows.enumerate() {
                for (part, acc) in acc[slot].iter().enumerate() {
                    _mm256_storeu_ps(self.write(row, 8 * part, 8), *acc);
                }
            }
        }
    }
}

impl RowGroups for Stripe<'_> {
    unsafe fn rows<const N: usize>(&self, first: usize) {
        // SAFETY: the caller's (`RowGroups::rows`).
        unsafe { self.vnni_rows::<N>(first) }
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl Stripe<'_> {
    unsafe fn vnni_rows<const N: usize>(&self, _: usize) {
        unreachable!("PackedInt8 is only built for a path the CPU has")
    }
    unsafe fn run_avx2(&self) {
        unreachable!("PackedInt8 is only built for a path the CPU has")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::activations::relative_gap;
    use candle_core::quantized::{GgmlDType, QMatMul};
    use candle_core::DType;
    use candle_core::{Device, Module};

    const TYPES: [GgmlDType; 10] = {
        use GgmlDType::*;
        [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2K, Q3K, Q4K, Q5K, Q6K]
    };

    #[test]
    fn matches_candles_product_on_every_path_type_and_row_count() {
        for path in [Path::Avx512Vnni, Path::Avx2] {
            if !path.available() {
                eprintln!("{path:?} is not available on this CPU: not tested here");
                continue;
            }
            for dtype in TYPES {
                let w = Tensor::randn(0f32, 1.0, (48, 512), &Device::Cpu).unwrap();
                let q = QTensor::quantize(&w, dtype).unwrap();
                let packed = PackedInt8::with_path(&q, path).unwrap().expect("48 x 512 fits");
                assert_eq!(packed.path(), path);
                let reference = QMatMul::from_qtensor(q).unwrap();
                for rows in [1, 2, 5, 8, 9, 16, 37] {
                    let x = Tensor::randn(0f32, 1.0, (rows, 512), &Device::Cpu).unwrap();
                    let want = reference.forward(&x).unwrap();
                    let got = packed.forward(&x).unwrap();
                    // candle quantizes the activations of k-quant products in blocks of 256
                    // (q8_K) and those of q5_1/q4_1 with q8_1; the int8 kernel uses q8_0's
                    // blocks of 32 throughout, so the products differ by activation rounding.
                    let gap = relative_gap(&got, &want);
                    assert!(gap <= 2e-2, "{path:?} {dtype:?} rows {rows}: {gap}");
                }
            }
        }
    }

    #[test]
    fn matches_candle_on_the_families_layer_shapes() {
        // (out, in) of the benchmark model's layers (SmolLM2-135M: q, k/v, up, down) and a
        // Qwen2-0.5B MLP's (896 ↔ 4864), each type where its block fits the input size.
        let shapes = [(576, 576), (192, 576), (1536, 576), (576, 1536), (4864, 896), (896, 4864)];
        let Some(path) = Path::detect() else { return };
        for (out_dim, in_dim) in shapes {
            let w = Tensor::randn(0f32, 1.0, (out_dim, in_dim), &Device::Cpu).unwrap();
            for dtype in TYPES.into_iter().filter(|t| in_dim % t.block_size() == 0) {
                let q = QTensor::quantize(&w, dtype).unwrap();
                let packed = PackedInt8::with_path(&q, path).unwrap().expect("fits");
                let reference = QMatMul::from_qtensor(q).unwrap();
                for rows in [1, 8, 19] {
                    let x = Tensor::randn(0f32, 1.0, (rows, in_dim), &Device::Cpu).unwrap();
                    let gap =
                        relative_gap(&packed.forward(&x).unwrap(), &reference.forward(&x).unwrap());
                    assert!(gap <= 2e-2, "{dtype:?} {out_dim}x{in_dim} rows {rows}: {gap}");
                }
            }
        }
    }

    #[test]
    fn equals_the_exact_product_of_its_quantized_operands() {
        // With activations that q8_0 represents exactly (small integers), the int8 product is
        // the f32 product of the dequantized weight: no rounding but f32 sums.
        for path in [Path::Avx512Vnni, Path::Avx2].into_iter().filter(|p| p.available()) {
            for dtype in TYPES {
                let w = Tensor::randn(0f32, 1.0, (32, 256), &Device::Cpu).unwrap();
                let q = QTensor::quantize(&w, dtype).unwrap();
                let dense = q.dequantize(&Device::Cpu).unwrap();
                let packed = PackedInt8::with_path(&q, path).unwrap().unwrap();
                // Every block of 32 holds a 127, so its q8_0 scale is exactly 1.
                let values: Vec<f32> = (0..3 * 256)
                    .map(|i| if i % 32 == 0 { 127.0 } else { (i * 37 % 255) as f32 - 127.0 })
                    .collect();
                let x = Tensor::from_vec(values, (3, 256), &Device::Cpu).unwrap();
                let want = x.matmul(&dense.t().unwrap()).unwrap();
                let gap = relative_gap(&packed.forward(&x).unwrap(), &want);
                assert!(gap <= 1e-5, "{path:?} {dtype:?}: {gap}");
            }
        }
    }

    #[test]
    fn declines_what_it_cannot_tile_and_checks_inputs() {
        let w = Tensor::randn(0f32, 1.0, (40, 64), &Device::Cpu).unwrap();
        let odd_rows = QTensor::quantize(&w, GgmlDType::Q4_0).unwrap();
        assert!(PackedInt8::from_qtensor(&odd_rows).unwrap().is_none());
        let f16 = QTensor::quantize(&w, GgmlDType::F16).unwrap();
        assert!(PackedInt8::from_qtensor(&f16).unwrap().is_none());
        let w = Tensor::randn(0f32, 1.0, (32, 64), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        if let Some(packed) = PackedInt8::from_qtensor(&q).unwrap() {
            let narrow = Tensor::zeros((1, 32), DType::F32, &Device::Cpu).unwrap();
            assert!(packed.forward(&narrow).is_err(), "the input width must match");
            let batched = Tensor::randn(0f32, 1.0, (2, 3, 64), &Device::Cpu).unwrap();
            assert_eq!(packed.forward(&batched).unwrap().dims(), &[2, 3, 32]);
        }
    }
}
