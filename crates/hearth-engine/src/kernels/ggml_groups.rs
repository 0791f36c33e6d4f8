//! ggml's block-quantized weights read as groups of 16 small integers: every type this reads
//! (q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k) stores a weight as
//! `w = scale·v − min`, with one scale and one minimum per group of 16 or 32 values and `v` an
//! integer of 2 to 8 bits. Only the block headers (where each type keeps its scales) are
//! decoded here; the integers are recovered from candle's own dequantized values, so the bit
//! layouts of the quantized values stay candle's business, and every recovered group is
//! checked to reproduce candle's values before it is used.
//!
//! Written here because candle keeps its block structs' fields private and has no int8 view of
//! a weight; the layouts follow ggml's `dequantize_row_*` functions.

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Result};

use super::activations::HALF;

/// One group of 16 weights: `w[i] = scale · v[i] − min`, with `|v[i]| ≤ 127`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Group {
    pub v: [i8; HALF],
    pub scale: f32,
    pub min: f32,
}

/// The ggml types read here: every block-quantized type llama.cpp's common files use.
pub fn readable(dtype: GgmlDType) -> bool {
    use GgmlDType::*;
    matches!(dtype, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2K | Q3K | Q4K | Q5K | Q6K)
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// The (scale, min) of each 16-value group of one ggml block, in the order of its values.
fn block_scales(dtype: GgmlDType, block: &[u8], out: &mut Vec<(f32, f32)>) {
    use GgmlDType::*;
    match dtype {
        // 32 values, an f16 scale first; q4_1 and q5_1 add an f16 offset `m` (w = d·q + m).
        Q4_0 | Q5_0 | Q8_0 => out.extend([(f16_at(block, 0), 0.0); 2]),
        Q4_1 | Q5_1 => out.extend([(f16_at(block, 0), -f16_at(block, 2)); 2]),
        // scales[16] (low nibble scale, high nibble min), qs[64], d, dmin.
        Q2K => {
            let (d, dmin) = (f16_at(block, 80), f16_at(block, 82));
            out.extend(
                block[..16].iter().map(|sc| (d * (sc & 0xF) as f32, dmin * (sc >> 4) as f32)),
            );
        }
        // hmask[32], qs[64], 12 bytes of 6-bit scales (stored + 32), d.
        Q3K => {
            let d = f16_at(block, 108);
            out.extend(q3k_scales(&block[96..108]).map(|sc| (d * (sc as f32 - 32.0), 0.0)));
        }
        // d, dmin, 12 bytes of 6-bit (scale, min) pairs per 32 values, then the values.
        Q4K | Q5K => {
            let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
            for j in 0..8 {
                let (sc, m) = k4_scale_min(j, &block[4..16]);
                out.extend([(d * sc as f32, dmin * m as f32); 2]);
            }
        }
        // ql[128], qh[64], scales[16] (i8), d. Values run in 128-value halves; within one,
        // value `l + 32k` (l < 32) takes scale `l / 16 + 2k`.
        Q6K => {
            let d = f16_at(block, 208);
            let scales = &block[192..208];
            for g in 0..16 {
                let (half, at) = (g / 8, (g % 8) * HALF);
                let index = 8 * half + (at % 32) / HALF + 2 * (at / 32);
                out.push((d * scales[index] as i8 as f32, 0.0));
            }
        }
        _ => unreachable!("block_scales is only called for readable types"),
    }
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of 32-value group `j` of a q4_k/q5_k block.
fn k4_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// q3_k's 16 scales, 6 bits each, packed into 12 bytes (low nibbles, then 2-bit high parts).
fn q3k_scales(packed: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, sc) in out.iter_mut().enumerate() {
        let low = if i < 8 { packed[i] & 0xF } else { packed[i - 8] >> 4 };
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        *sc = low | (high << 4);
    }
    out
}

/// Rows `rows` of a `[out, in]` ggml weight as groups of 16 (`in / 16` per row, row by row).
/// Fails where a group does not reproduce candle's dequantized values exactly (which would
/// mean a type read wrongly), so a weight is never run with different numbers than candle's.
pub fn read_rows(weight: &QTensor, rows: std::ops::Range<usize>) -> Result<Vec<Group>> {
    let dtype = weight.dtype();
    if !readable(dtype) {
        candle_core::bail!("no int8 view of {dtype:?} weights");
    }
    let (_, in_dim) = weight.shape().dims2()?;
    let row_bytes = in_dim / dtype.block_size() * dtype.type_size();
    let data = weight.data()?;
    let bytes = &data[rows.start * row_bytes..rows.end * row_bytes];
    let part = QTensor::new(
        QStorage::from_data(bytes.to_vec().into(), &Device::Cpu, dtype)?,
        (rows.len(), in_dim),
    )?;
    let values = part.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
    let mut scales = Vec::with_capacity(values.len() / HALF);
    for block in bytes.chunks_exact(dtype.type_size()) {
        block_scales(dtype, block, &mut scales);
    }
    values.chunks_exact(HALF).zip(scales).map(|(w, (scale, min))| group(w, scale, min)).collect()
}

fn group(w: &[f32], scale: f32, min: f32) -> Result<Group> {
    let mut v = [0i8; HALF];
    for (v, &w) in v.iter_mut().zip(w) {
        let q = if scale == 0.0 { 0.0 } else { ((w + min) / scale).round() };
        // ±127 at most: the AVX2 kernel negates values, and −128 has no positive twin.
        if !(-127.0..=127.0).contains(&q) || (scale * q - min - w).abs() > 1e-6 * w.abs().max(1e-30)
        {
            candle_core::bail!("weight {w} is not {scale}·v − {min} for an int8 v");
        }
        *v = q as i8;
    }
    Ok(Group { v, scale, min })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    #[test]
    fn every_type_reads_back_to_candles_values() {
        use GgmlDType::*;
        let w = Tensor::randn(0f32, 1.0, (16, 512), &Device::Cpu).unwrap();
        for dtype in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2K, Q3K, Q4K, Q5K, Q6K] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let want = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap();
            let groups = read_rows(&q, 4..16).unwrap();
            let got: Vec<f32> =
                groups.iter().flat_map(|g| g.v.map(|v| g.scale * v as f32 - g.min)).collect();
            let want = want.to_vec1::<f32>().unwrap()[4 * 512..].to_vec();
            assert_eq!(got.len(), want.len(), "{dtype:?}");
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 1e-6 * b.abs(), "{dtype:?} value {i}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn other_types_are_refused() {
        let w = Tensor::randn(0f32, 1.0, (16, 64), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::F16).unwrap();
        assert!(!readable(GgmlDType::F16));
        assert!(read_rows(&q, 0..16).is_err());
    }
}
