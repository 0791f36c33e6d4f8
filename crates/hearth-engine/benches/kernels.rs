//! Matrix products of the benchmark model's shape (SmolLM2-135M: hidden 576, MLP 1,536,
//! vocabulary 49,152) at decode's one and eight rows and a 256-row prefill chunk: the f32
//! product Hearth uses (split across cores: a few-rows kernel, or gemm per block), the q8_0 VNNI
//! kernel, candle's own q8_0 product, and, for prefill, gemm on a q8_0 weight already
//! dequantized (the dequantization itself not counted). Bytes of weight per call over the time
//! is the bandwidth a decode kernel reaches. The MLP weight stays in cache between iterations;
//! the LM head's f32 weight (113 MB) does not, its q8_0 weight (30 MB) nearly does.
//!
//! The ggml types people download (q4_0, q4_1, q4_k, q5_k, q6_k) are measured through the int8
//! kernel (on the best path the CPU has, and on AVX2), and q4_0/q4_1 also through the 4-bit
//! kernel, beside candle's own product for them.
//!
//!   cargo bench -p hearth-engine --bench kernels

use std::hint::black_box;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hearth_engine::kernels::int8_matmul::{PackedInt8, Path};
use hearth_engine::kernels::nibble_matmul::PackedNibble;
use hearth_engine::kernels::q8_matmul::{self, PackedQ8_0};
use hearth_engine::kernels::split_matmul;

/// (name, out, in): the MLP's up projection and the LM head.
const SHAPES: [(&str, usize, usize); 2] = [("mlp_up", 1_536, 576), ("lm_head", 49_152, 576)];

fn products(c: &mut Criterion) {
    let device = Device::Cpu;
    for (name, out_dim, in_dim) in SHAPES {
        let w = Tensor::randn(0f32, 1.0, (out_dim, in_dim), &device).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let packed = PackedQ8_0::from_qtensor(&q).unwrap();
        // What a q8_0 prefill cost before: the weight dequantized for the call, then gemm.
        let q8_dense = packed.as_ref().map(|_| q.dequantize(&device).unwrap());
        let candle_q8 = QMatMul::from_qtensor(q).unwrap();
        let wt = w.t().unwrap();
        for rows in [1usize, 8, 256] {
            let x = Tensor::randn(0f32, 1.0, (rows, in_dim), &device).unwrap();
            let mut group = c.benchmark_group(format!("{name}_{rows}_rows"));
            group.throughput(Throughput::Bytes((out_dim * in_dim * 4) as u64));
            group.bench_function("f32", |b| {
                b.iter(|| match split_matmul::forward(&x, &w).unwrap() {
                    Some(y) => black_box(y),
                    None => black_box(x.matmul(&wt).unwrap()),
                })
            });
            group.throughput(Throughput::Bytes((out_dim * in_dim / 32 * 34) as u64));
            group.bench_function("q8_0_candle", |b| {
                b.iter(|| black_box(candle_q8.forward(&x).unwrap()))
            });
            if let Some(packed) = &packed {
                group.bench_function("q8_0_vnni", |b| {
                    b.iter(|| black_box(packed.forward(&x).unwrap()))
                });
                if rows > split_matmul::MAX_ROWS {
                    let dense = q8_dense.as_ref().expect("made with the packed weight");
                    group.bench_function("q8_0_dequantized_f32", |b| {
                        b.iter(|| black_box(x.matmul(&dense.t().unwrap()).unwrap()))
                    });
                }
            } else {
                assert!(!q8_matmul::supported());
            }
            group.finish();
        }
    }
}

/// The other ggml types: the int8 kernel (and for q4_0/q4_1 the 4-bit one) against candle's
/// product, bytes counted as the int8 copy's (1.5 a weight) or the 4-bit tiles' (0.625) for
/// the kernels and the file's for candle.
fn ggml_types(c: &mut Criterion) {
    let device = Device::Cpu;
    let types = [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ];
    for (name, out_dim, in_dim) in SHAPES {
        let w = Tensor::randn(0f32, 1.0, (out_dim, in_dim), &device).unwrap();
        for dtype in types {
            // k-quants need inputs in multiples of 256: 576 is not, so they use 512 here.
            let in_dim = if dtype.block_size() == 256 { 512 } else { in_dim };
            let w = w.narrow(1, 0, in_dim).unwrap().contiguous().unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let file_bytes = (out_dim * in_dim / dtype.block_size() * dtype.type_size()) as u64;
            let paths: Vec<_> = [Path::detect(), Some(Path::Avx2)]
                .into_iter()
                .flatten()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .filter_map(|p| PackedInt8::with_path(&q, p).unwrap().map(|k| (p, k)))
                .collect();
            let nibble = PackedNibble::from_qtensor(&q).unwrap();
            let candle = QMatMul::from_qtensor(q).unwrap();
            for rows in [1usize, 8, 256] {
                let x = Tensor::randn(0f32, 1.0, (rows, in_dim), &device).unwrap();
                let mut group = c.benchmark_group(format!("{name}_{dtype:?}_{rows}_rows"));
                group.throughput(Throughput::Bytes(file_bytes));
                group.bench_function("candle", |b| {
                    b.iter(|| black_box(candle.forward(&x).unwrap()))
                });
                group.throughput(Throughput::Bytes((out_dim * in_dim * 3 / 2) as u64));
                for (path, kernel) in &paths {
                    group.bench_function(format!("int8_{path:?}"), |b| {
                        b.iter(|| black_box(kernel.forward(&x).unwrap()))
                    });
                }
                if let Some(kernel) = &nibble {
                    // 4 bits and a scale and minimum per 32 (5/8 of a byte), or 5 bits (3/4).
                    let eighths =
                        if matches!(dtype, GgmlDType::Q5_0 | GgmlDType::Q5_1) { 6 } else { 5 };
                    group.throughput(Throughput::Bytes((out_dim * in_dim * eighths / 8) as u64));
                    group.bench_function("nibble", |b| {
                        b.iter(|| black_box(kernel.forward(&x).unwrap()))
                    });
                }
                group.finish();
            }
        }
    }
}

criterion_group!(benches, products, ggml_types);
criterion_main!(benches);
