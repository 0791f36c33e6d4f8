//! The linear layer of the generative models: dense (`x · Wᵀ + b` in the model's dtype) or
//! quantized (a ggml block-quantized weight run through candle's `QMatMul`). Which one a layer
//! is gets decided once, when the model is built; the forward pass never branches on settings.
//!
//! A quantized layer computes in f32 (candle's quantized kernels take f32 activations) and hands
//! back the model's dtype, so quantized and dense layers mix freely in one model.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Result, Tensor};

use super::activations::PackedWeight;
use super::int8_matmul::PackedInt8;
use super::nibble_matmul::PackedNibble;
use super::q8_matmul::PackedQ8_0;

/// On-load quantization of dense weights to one of ggml's block types. Blocks run along a
/// weight's input dimension; a layer whose input size is not a multiple of a k-quant's 256
/// takes the 32-value type llama.cpp's `llama-quantize` falls back to for it (q4_k → q5_0,
/// q5_k → q5_1, q6_k → q8_0, q2_k and q3_k → q4_0, where llama.cpp uses iq4_nl, a type candle
/// lacks), and one whose input is not a multiple of 32 stays dense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantization(GgmlDType);

impl Quantization {
    pub const Q8_0: Self = Self(GgmlDType::Q8_0);
    pub const Q4K: Self = Self(GgmlDType::Q4K);

    /// `dtype` as an on-load quantization; `None` for float and unsupported types.
    pub fn new(dtype: GgmlDType) -> Option<Self> {
        super::ggml_groups::readable(dtype).then_some(Self(dtype))
    }

    pub fn ggml_dtype(self) -> GgmlDType {
        self.0
    }

    /// The type a layer with `in_dim` inputs gets, `None` for dense.
    pub fn for_input(self, in_dim: usize) -> Option<GgmlDType> {
        use GgmlDType::*;
        let dtype = match self.0 {
            k if in_dim.is_multiple_of(k.block_size()) => k,
            Q4K => Q5_0,
            Q5K => Q5_1,
            Q6K => Q8_0,
            Q2K | Q3K => Q4_0,
            other => other,
        };
        in_dim.is_multiple_of(dtype.block_size()).then_some(dtype)
    }
}

#[derive(Debug, Clone)]
pub enum Linear {
    Dense(candle_nn::Linear),
    Quantized {
        weight: QMatMul,
        bias: Option<Tensor>,
        in_dim: usize,
        out_dim: usize,
    },
    /// A q8_0 CPU weight repacked for the AVX-512 VNNI kernel (see `q8_matmul.rs`), which takes
    /// every row count, decode's and prefill's.
    PackedQ8 {
        weight: PackedQ8_0,
        bias: Option<Tensor>,
    },
    /// A q4_0, q4_1, q5_0 or q5_1 CPU weight kept at 4 or 5 bits for the AVX-512 VNNI kernel
    /// (see `nibble_matmul.rs`).
    PackedNibble {
        weight: PackedNibble,
        bias: Option<Tensor>,
    },
    /// Any other ggml block type (q4_0 … q6_k, and q8_0 without VNNI) read into int8 groups
    /// for the AVX-512 VNNI or AVX2 kernel (see `int8_matmul.rs`).
    PackedInt8 {
        weight: PackedInt8,
        bias: Option<Tensor>,
    },
}

impl Linear {
    /// A layer over a dense `[out, in]` weight, quantized to `quantize` when its input size
    /// allows (otherwise it stays dense and says so at debug level).
    pub fn from_dense(
        weight: Tensor,
        bias: Option<Tensor>,
        quantize: Option<Quantization>,
        name: &str,
    ) -> Result<Self> {
        let Some(q) = quantize else {
            return Ok(Self::Dense(candle_nn::Linear::new(weight, bias)));
        };
        let (_, in_dim) = weight.dims2()?;
        let Some(dtype) = q.for_input(in_dim) else {
            tracing::debug!(
                layer = name,
                in_dim,
                "input size is not a multiple of 32: layer stays dense"
            );
            return Ok(Self::Dense(candle_nn::Linear::new(weight, bias)));
        };
        if dtype != q.ggml_dtype() {
            tracing::debug!(layer = name, in_dim, ?dtype, "rows are not whole super-blocks");
        }
        let qtensor = QTensor::quantize(&weight.to_dtype(DType::F32)?, dtype)?;
        Self::from_qtensor(qtensor, bias, weight.dtype())
    }

    /// A layer over an already quantized `[out, in]` weight (a GGUF tensor). Float ggml types
    /// (f32, f16, bf16) become dense layers in `dtype`.
    pub fn from_qtensor(weight: QTensor, bias: Option<Tensor>, dtype: DType) -> Result<Self> {
        let (out_dim, in_dim) = weight.shape().dims2()?;
        let bias = bias.map(|b| b.to_dtype(DType::F32)).transpose()?;
        match weight.dtype() {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                let device = weight.device();
                let w = weight.dequantize(&device)?.to_dtype(dtype)?;
                let b = bias.map(|b| b.to_dtype(dtype)).transpose()?;
                Ok(Self::Dense(candle_nn::Linear::new(w, b)))
            }
            _ => {
                if let Some(weight) = PackedQ8_0::from_qtensor(&weight)? {
                    return Ok(Self::PackedQ8 { weight, bias });
                }
                if let Some(weight) = PackedNibble::from_qtensor(&weight)? {
                    return Ok(Self::PackedNibble { weight, bias });
                }
                if !candle_is_faster(&weight)? {
                    if let Some(weight) = PackedInt8::from_qtensor(&weight)? {
                        return Ok(Self::PackedInt8 { weight, bias });
                    }
                }
                Ok(Self::Quantized {
                    weight: QMatMul::QTensor(std::sync::Arc::new(weight)),
                    bias,
                    in_dim,
                    out_dim,
                })
            }
        }
    }

    pub fn is_quantized(&self) -> bool {
        !matches!(self, Self::Dense(_))
    }

    /// `(out, in)`.
    pub fn dims(&self) -> Result<(usize, usize)> {
        match self {
            Self::Dense(l) => l.weight().dims2(),
            Self::Quantized { in_dim, out_dim, .. } => Ok((*out_dim, *in_dim)),
            Self::PackedQ8 { weight, .. } => Ok(weight.dims()),
            Self::PackedNibble { weight, .. } => Ok(weight.dims()),
            Self::PackedInt8 { weight, .. } => Ok(weight.dims()),
        }
    }
}

/// candle 0.11 repacks q4_k weights whose rows are whole super-blocks for x86 kernels of its
/// own that keep the 4-bit values; measured against the int8 kernel on the benchmark model's MLP
/// (`benches/kernels.rs`), they are as fast for one row and faster for 8 and 256 rows (half the
/// bytes to read), so such layers stay candle's.
fn candle_is_faster(weight: &QTensor) -> Result<bool> {
    let (_, in_dim) = weight.shape().dims2()?;
    Ok(weight.dtype() == GgmlDType::Q4K && in_dim.is_multiple_of(GgmlDType::Q4K.block_size()))
}

/// Prefill through a quantized layer: many rows. candle's quantized CPU product is a dot
/// product per (row, output) pair, fine for decode's few rows but far slower than a tiled f32
/// matrix multiply for hundreds; dequantizing the weight for the call (one pass over it, a few
/// megabytes for a layer of a small model) and using gemm took a 340-token prefill of the q8_0
/// benchmark model from 1.4 s to 0.55 s on two cores.
/// Layers on candle's repacked q4_k kernel, and every layer on the int8 kernels, never take this
/// path; it remains for CPUs those kernels do not run on.
fn prefers_dense_product(x: &Tensor, weight: &QTensor) -> bool {
    let rows = x.elem_count() / x.dims().last().copied().unwrap_or(1).max(1);
    rows > super::split_matmul::MAX_ROWS
        && weight.device().is_cpu()
        && !candle_is_faster(weight).unwrap_or(false)
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(l) => match super::split_matmul::forward(x, l.weight())? {
                Some(y) => match l.bias() {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                },
                None => l.forward(x),
            },
            Self::Quantized { weight, bias, .. } => in_f32(x, bias.as_ref(), |x| match weight {
                QMatMul::QTensor(q) if prefers_dense_product(x, q) => {
                    x.broadcast_matmul(&q.dequantize(&q.device())?.t()?)
                }
                _ => weight.forward(x),
            }),
            Self::PackedQ8 { weight, bias } => in_f32(x, bias.as_ref(), |x| weight.forward(x)),
            Self::PackedNibble { weight, bias } => in_f32(x, bias.as_ref(), |x| weight.forward(x)),
            Self::PackedInt8 { weight, bias } => in_f32(x, bias.as_ref(), |x| weight.forward(x)),
        }
    }
}

/// What the quantized products share: they take and give f32 (candle's quantized kernels and
/// the VNNI kernel alike), with the bias, kept in f32, added before the cast back to `x`'s dtype.
fn in_f32(
    x: &Tensor,
    bias: Option<&Tensor>,
    product: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let y = product(&x.to_dtype(DType::F32)?)?;
    let y = match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    y.to_dtype(x.dtype())
}
