//! Where a generative model's weights come from, and in what form its linear layers get them:
//! dense safetensors through a `VarBuilder` (optionally quantized on load), or a GGUF file whose
//! quantized tensors stay quantized.
//!
//! GGUF files from llama.cpp's `convert_hf_to_gguf.py` name tensors their own way
//! (`blk.N.attn_q.weight`, …), which [`gguf_name`] maps from the Hugging Face names the model asks
//! for. For `general.architecture = "llama"` (Llama and Mistral checkpoints) the converter also
//! permutes the rows of `attn_q`/`attn_k` so that llama.cpp's interleaved RoPE (rotating adjacent
//! pairs) computes what transformers' `rotate_half` RoPE computes on the original weights. The
//! model here uses `rotate_half`, so those rows are put back in Hugging Face order on load. Rows
//! are whole runs of quantization blocks (blocks run along the input dimension), so this moves
//! bytes and never requantizes. Qwen2/Qwen3 GGUFs use llama.cpp's NeoX RoPE, which is
//! `rotate_half`, and are not permuted.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::quantized::{gguf_file, QStorage, QTensor};
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::{Embedding, Init, RmsNorm, VarBuilder};

use crate::kernels::linear::{Linear, Quantization};
use crate::models::llama::config::{Family, LlamaConfig};

/// The GGUF tensor of per-frequency RoPE divisors (Llama 3.1 scaling), which no Hugging Face
/// tensor maps to.
pub const ROPE_FREQS: &str = "rope_freqs.weight";

/// GGUF tensors that hold RoPE factors rather than weights: Llama 3.1's, read by the model
/// ([`ROPE_FREQS`]), and Phi-3's LongRoPE factors, which reach the model through the config
/// (as config.json has them, or as `hearth-package` derives it from these tensors).
pub const ROPE_FACTOR_TENSORS: [&str; 3] =
    [ROPE_FREQS, "rope_factors_long.weight", "rope_factors_short.weight"];

/// A GGUF file, its parsed header and what the model needs to read it.
pub struct GgufWeights {
    content: gguf_file::Content,
    file: Mutex<File>,
    device: Device,
    dtype: DType,
    /// Row permutation of q/k undone on load: `(num_heads, num_kv_heads)`.
    unpermute_qk: Option<(usize, usize)>,
    /// The family, whose norms llama.cpp names its own way (see [`gguf_name`]).
    family: Family,
}

impl GgufWeights {
    /// Opens `path` and cross-checks its metadata with `cfg` (config.json).
    pub fn open(path: &Path, cfg: &LlamaConfig, dtype: DType, device: &Device) -> Result<Self> {
        let mut file = File::open(path)?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
        let arch = match content.metadata.get("general.architecture") {
            Some(v) => v.to_string()?.clone(),
            None => candle_core::bail!("GGUF has no `general.architecture`"),
        };
        check_metadata(&content, &arch, cfg)?;
        let unpermute_qk =
            (arch == "llama").then(|| (cfg.num_attention_heads, cfg.num_key_value_heads()));
        let family = cfg.family().map_err(candle_core::Error::wrap)?;
        let file = Mutex::new(file);
        Ok(Self { content, file, device: device.clone(), dtype, unpermute_qk, family })
    }

    /// The GGUF tensor `name` as stored, on the CPU.
    fn stored(&self, name: &str) -> Result<QTensor> {
        let mut file = self.file.lock().map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
        self.content.tensor(&mut *file, name, &Device::Cpu)
    }

    /// The GGUF tensor behind the Hugging Face name `hf`, in Hugging Face row order.
    fn qtensor(&self, hf: &str) -> Result<QTensor> {
        let (name, expert) = gguf_location(hf, self.family)
            .ok_or_else(|| candle_core::Error::Msg(format!("no GGUF name for tensor `{hf}`")))?;
        if !self.content.tensor_infos.contains_key(&name) {
            candle_core::bail!("GGUF lacks tensor `{name}` (for `{hf}`)");
        }
        let t = self.stored(&name)?;
        let t = match expert {
            Some(index) => expert_slice(&t, index)?,
            // llama.cpp stores a one-row weight (Qwen2-MoE's shared-expert gate) as a vector.
            None if t.shape().rank() == 1 && hf.ends_with("shared_expert_gate.weight") => {
                let n = t.shape().elem_count();
                QTensor::new(QStorage::from_data(t.data()?, &Device::Cpu, t.dtype())?, (1, n))?
            }
            None => t,
        };
        let heads = match (self.unpermute_qk, name.rsplit('.').nth(1)) {
            (Some((q, _)), Some("attn_q")) => Some(q),
            (Some((_, kv)), Some("attn_k")) => Some(kv),
            _ => None,
        };
        let t = match heads {
            Some(n) => unpermute_rows(&t, n)?,
            None => t,
        };
        if self.device.is_cpu() {
            return Ok(t);
        }
        let storage = QStorage::from_data(t.data()?, &self.device, t.dtype())?;
        QTensor::new(storage, t.shape().clone())
    }
}

/// Undoes `convert_hf_to_gguf.py`'s `permute`: it stored row `h·hd + 2j + s` from Hugging Face
/// row `h·hd + s·hd/2 + j` (head `h`, pair `j`, half `s`).
fn unpermute_rows(t: &QTensor, num_heads: usize) -> Result<QTensor> {
    let (rows, _) = t.shape().dims2()?;
    if num_heads == 0 || rows % (2 * num_heads) != 0 {
        candle_core::bail!("cannot split {rows} rows into {num_heads} RoPE heads");
    }
    let data = t.data()?;
    let row_bytes = data.len() / rows;
    let hd = rows / num_heads;
    let mut out = Vec::with_capacity(data.len());
    for h in 0..num_heads {
        for s in 0..2 {
            for j in 0..hd / 2 {
                let src = h * hd + 2 * j + s;
                out.extend_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    let storage = QStorage::from_data(out.into(), &Device::Cpu, t.dtype())?;
    QTensor::new(storage, t.shape().clone())
}

/// Where a Hugging Face tensor lives in a llama.cpp GGUF: the GGUF tensor's name and, for one
/// expert of a mixture of experts, its index in the layer's stacked tensor (llama.cpp keeps a
/// layer's experts as one `[experts, rows, columns]` tensor, `ffn_gate_exps` and the like).
pub fn gguf_location(hf: &str, family: Family) -> Option<(String, Option<usize>)> {
    match expert_location(hf) {
        Some(found) => Some(found),
        None => gguf_name(hf, family).map(|name| (name, None)),
    }
}

/// The router, experts and shared expert of a sparse layer (Qwen's `mlp.…`, Mixtral's
/// `block_sparse_moe.…`).
fn expert_location(hf: &str) -> Option<(String, Option<usize>)> {
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let rest = rest.strip_prefix("mlp.").or_else(|| rest.strip_prefix("block_sparse_moe."))?;
    let (module, kind) = rest.rsplit_once('.')?;
    let name = |m: &str| format!("blk.{layer}.{m}.{kind}");
    let whole = match module {
        "gate" => Some("ffn_gate_inp"),
        "shared_expert.gate_proj" => Some("ffn_gate_shexp"),
        "shared_expert.up_proj" => Some("ffn_up_shexp"),
        "shared_expert.down_proj" => Some("ffn_down_shexp"),
        "shared_expert_gate" => Some("ffn_gate_inp_shexp"),
        _ => None,
    };
    if let Some(whole) = whole {
        return Some((name(whole), None));
    }
    let (expert, projection) = module.strip_prefix("experts.")?.split_once('.')?;
    let stacked = match projection {
        "gate_proj" | "w1" => "ffn_gate_exps",
        "up_proj" | "w3" => "ffn_up_exps",
        "down_proj" | "w2" => "ffn_down_exps",
        _ => return None,
    };
    Some((name(stacked), Some(expert.parse().ok()?)))
}

/// Expert `index` of a stacked `[experts, rows, columns]` tensor, as its own `[rows, columns]`
/// tensor: experts are whole runs of rows, so this moves bytes and never requantizes.
fn expert_slice(t: &QTensor, index: usize) -> Result<QTensor> {
    let (experts, rows, columns) = t.shape().dims3()?;
    if index >= experts {
        candle_core::bail!("expert {index} of a tensor holding {experts}");
    }
    let data = t.data()?;
    let size = data.len() / experts;
    let slice = data[index * size..(index + 1) * size].to_vec();
    let storage = QStorage::from_data(slice.into(), &Device::Cpu, t.dtype())?;
    QTensor::new(storage, (rows, columns))
}

/// llama.cpp's name for a Hugging Face Llama-family tensor. Gemma's norms around each block
/// have names of their own there, and its MLP's input norm (`pre_feedforward_layernorm`) is
/// what llama.cpp calls `ffn_norm` in every family.
pub fn gguf_name(hf: &str, family: Family) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let gemma = matches!(family, Family::Gemma2 | Family::Gemma3);
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let module = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.qkv_proj" => "attn_qkv",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        // llama.cpp keeps Phi-3's fused gate and up rows together as `ffn_up`.
        "mlp.up_proj" | "mlp.gate_up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" if gemma => "post_attention_norm",
        "post_attention_layernorm" | "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{module}.{kind}"))
}

/// The hyper-parameters GGUF metadata states must agree with config.json's.
fn check_metadata(content: &gguf_file::Content, arch: &str, cfg: &LlamaConfig) -> Result<()> {
    let checks = [
        ("block_count", cfg.num_hidden_layers, "num_hidden_layers"),
        ("embedding_length", cfg.hidden_size, "hidden_size"),
        ("feed_forward_length", cfg.intermediate_size, "intermediate_size"),
        ("attention.head_count", cfg.num_attention_heads, "num_attention_heads"),
        ("attention.head_count_kv", cfg.num_key_value_heads(), "num_key_value_heads"),
        ("attention.key_length", cfg.head_dim(), "head_dim"),
    ];
    for (key, expected, field) in checks {
        let key = format!("{arch}.{key}");
        let Some(value) = content.metadata.get(&key) else { continue };
        let value = value.to_u64().or_else(|_| value.to_u32().map(u64::from))?;
        if value != expected as u64 {
            candle_core::bail!(
                "GGUF metadata `{key}` is {value}, but config.json's `{field}` is {expected}"
            );
        }
    }
    Ok(())
}

#[derive(Clone)]
enum Inner<'a> {
    Var { vb: VarBuilder<'a>, quantize: Option<Quantization> },
    Gguf(Arc<GgufWeights>),
}

/// Hands the model its tensors and linear layers by Hugging Face name, wherever they come from.
#[derive(Clone)]
pub struct WeightSource<'a> {
    inner: Inner<'a>,
    prefix: String,
}

impl<'a> WeightSource<'a> {
    /// Dense weights; linear layers are quantized on load when `quantize` says so.
    pub fn var_builder(vb: VarBuilder<'a>, quantize: Option<Quantization>) -> Self {
        Self { inner: Inner::Var { vb, quantize }, prefix: String::new() }
    }

    pub fn gguf(weights: GgufWeights) -> Self {
        Self { inner: Inner::Gguf(Arc::new(weights)), prefix: String::new() }
    }

    pub fn pp(&self, name: impl ToString) -> Self {
        let name = name.to_string();
        let inner = match &self.inner {
            Inner::Var { vb, quantize } => Inner::Var { vb: vb.pp(&name), quantize: *quantize },
            Inner::Gguf(g) => Inner::Gguf(g.clone()),
        };
        let prefix = if self.prefix.is_empty() { name } else { format!("{}.{name}", self.prefix) };
        Self { inner, prefix }
    }

    pub fn dtype(&self) -> DType {
        match &self.inner {
            Inner::Var { vb, .. } => vb.dtype(),
            Inner::Gguf(g) => g.dtype,
        }
    }

    pub fn device(&self) -> Device {
        match &self.inner {
            Inner::Var { vb, .. } => vb.device().clone(),
            Inner::Gguf(g) => g.device.clone(),
        }
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// A dense tensor in the model's dtype (GGUF tensors are dequantized).
    pub fn get(&self, shape: impl Into<Shape>, name: &str) -> Result<Tensor> {
        let shape = shape.into();
        match &self.inner {
            Inner::Var { vb, .. } => vb.get(shape, name),
            Inner::Gguf(g) => {
                let full = self.full_name(name);
                let t = g.qtensor(&full)?;
                if t.shape() != &shape {
                    candle_core::bail!(
                        "GGUF tensor for `{full}` has shape {:?}, expected {shape:?}",
                        t.shape()
                    );
                }
                t.dequantize(&g.device)?.to_dtype(g.dtype)
            }
        }
    }

    pub fn rms_norm(&self, size: usize, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm::new(self.get(size, "weight")?, eps))
    }

    /// A norm that multiplies by `1 + weight` (Gemma's), as an ordinary norm over `1 + weight`:
    /// the sum transformers computes in f32 before each product, computed once. llama.cpp's
    /// converter stores the sum in the GGUF already.
    pub fn unit_offset_rms_norm(&self, size: usize, eps: f64) -> Result<RmsNorm> {
        let weight = match &self.inner {
            Inner::Var { vb, .. } => {
                let w = vb.get_with_hints_dtype(size, "weight", Init::Const(0.), DType::F32)?;
                (w + 1.0)?.to_dtype(vb.dtype())?
            }
            Inner::Gguf(_) => self.get(size, "weight")?,
        };
        Ok(RmsNorm::new(weight, eps))
    }

    pub fn embedding(&self, vocab: usize, hidden: usize) -> Result<Embedding> {
        Ok(Embedding::new(self.get((vocab, hidden), "weight")?, hidden))
    }

    /// The linear layer `in_dim → out_dim` at this prefix (`weight`, and `bias` when `bias`).
    pub fn linear(&self, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
        let b = if bias { Some(self.get(out_dim, "bias")?) } else { None };
        match &self.inner {
            Inner::Var { vb, quantize: None } => {
                Ok(Linear::Dense(candle_nn::Linear::new(vb.get((out_dim, in_dim), "weight")?, b)))
            }
            Inner::Var { vb, quantize } => {
                // Quantize from the checkpoint's full precision, not the compute dtype.
                let w = vb.get_with_hints_dtype(
                    (out_dim, in_dim),
                    "weight",
                    Init::Const(0.),
                    DType::F32,
                )?;
                to_dtype(Linear::from_dense(w, b, *quantize, &self.prefix)?, vb.dtype())
            }
            Inner::Gguf(g) => {
                let full = self.full_name("weight");
                let w = g.qtensor(&full)?;
                if w.shape().dims() != [out_dim, in_dim] {
                    candle_core::bail!(
                        "GGUF tensor for `{full}` has shape {:?}, expected [{out_dim}, {in_dim}]",
                        w.shape()
                    );
                }
                Linear::from_qtensor(w, b, g.dtype)
            }
        }
    }

    /// A linear layer over an existing dense weight (a tied LM head), quantized like the others.
    pub fn linear_from(&self, weight: Tensor) -> Result<Linear> {
        let quantize = match &self.inner {
            Inner::Var { quantize, .. } => *quantize,
            // A GGUF without `output.weight`: the head is `token_embd` as stored, as llama.cpp
            // runs it.
            Inner::Gguf(g) => {
                let w = g.qtensor("model.embed_tokens.weight")?;
                return Linear::from_qtensor(w, None, g.dtype);
            }
        };
        let dtype = weight.dtype();
        to_dtype(
            Linear::from_dense(weight.to_dtype(DType::F32)?, None, quantize, &self.prefix)?,
            dtype,
        )
    }

    /// Per-frequency RoPE divisors stored with the weights: a GGUF's `rope_freqs.weight` (Llama
    /// 3.1 scaling as llama.cpp's converter writes it). Dense checkpoints have none.
    pub fn rope_freq_factors(&self) -> Result<Option<Vec<f32>>> {
        let Inner::Gguf(g) = &self.inner else { return Ok(None) };
        if !g.content.tensor_infos.contains_key(ROPE_FREQS) {
            return Ok(None);
        }
        let t = g.stored(ROPE_FREQS)?;
        Ok(Some(t.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1()?))
    }

    /// Whether the tensor `name` at this prefix exists.
    pub fn contains(&self, name: &str) -> bool {
        match &self.inner {
            Inner::Var { vb, .. } => vb.contains_tensor(name),
            Inner::Gguf(g) => gguf_location(&self.full_name(name), g.family)
                .is_some_and(|(n, _)| g.content.tensor_infos.contains_key(&n)),
        }
    }
}

/// A dense layer (one that stayed dense) in `dtype`; quantized layers are left as they are.
fn to_dtype(linear: Linear, dtype: DType) -> Result<Linear> {
    match linear {
        Linear::Dense(d) if d.weight().dtype() != dtype => {
            let bias = d.bias().map(|b| b.to_dtype(dtype)).transpose()?;
            Ok(Linear::Dense(candle_nn::Linear::new(d.weight().to_dtype(dtype)?, bias)))
        }
        l => Ok(l),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_hugging_face_names() {
        let llama = |hf| gguf_name(hf, Family::Llama);
        assert_eq!(llama("model.layers.3.self_attn.q_proj.weight").unwrap(), "blk.3.attn_q.weight");
        assert_eq!(llama("model.layers.0.self_attn.k_proj.bias").unwrap(), "blk.0.attn_k.bias");
        assert_eq!(llama("model.layers.1.mlp.down_proj.weight").unwrap(), "blk.1.ffn_down.weight");
        assert_eq!(
            llama("model.layers.1.post_attention_layernorm.weight").unwrap(),
            "blk.1.ffn_norm.weight"
        );
        assert_eq!(llama("lm_head.weight").unwrap(), "output.weight");
        assert_eq!(llama("model.layers.1.mlp.act.weight"), None);
        // Gemma's sandwich norms, as llama.cpp's converter names them.
        let gemma = |hf: &str| gguf_name(&format!("model.layers.2.{hf}.weight"), Family::Gemma2);
        assert_eq!(gemma("post_attention_layernorm").unwrap(), "blk.2.post_attention_norm.weight");
        assert_eq!(gemma("pre_feedforward_layernorm").unwrap(), "blk.2.ffn_norm.weight");
        assert_eq!(gemma("post_feedforward_layernorm").unwrap(), "blk.2.post_ffw_norm.weight");
        assert_eq!(gemma("input_layernorm").unwrap(), "blk.2.attn_norm.weight");
        // Experts sit in one stacked tensor per projection; routers and shared experts apart.
        let at = |hf: &str| gguf_location(hf, Family::Qwen2Moe).unwrap();
        let stacked = |name: &str, e| (name.to_string(), Some(e));
        assert_eq!(
            at("model.layers.1.mlp.experts.5.up_proj.weight"),
            stacked("blk.1.ffn_up_exps.weight", 5)
        );
        let mixtral =
            gguf_location("model.layers.0.block_sparse_moe.experts.2.w2.weight", Family::Mixtral);
        assert_eq!(mixtral.unwrap(), stacked("blk.0.ffn_down_exps.weight", 2));
        assert_eq!(at("model.layers.1.mlp.gate.weight").0, "blk.1.ffn_gate_inp.weight");
        assert_eq!(
            at("model.layers.1.mlp.shared_expert_gate.weight").0,
            "blk.1.ffn_gate_inp_shexp.weight"
        );
        assert_eq!(
            at("model.layers.1.mlp.shared_expert.down_proj.weight").0,
            "blk.1.ffn_down_shexp.weight"
        );
        assert_eq!(
            at("model.layers.1.mlp.gate_proj.weight"),
            ("blk.1.ffn_gate.weight".into(), None)
        );
    }

    #[test]
    fn unpermute_inverts_the_converters_permute() -> Result<()> {
        // 2 heads of head_dim 4, rows of 32 f32 so each row is one q8_0 block... kept as f32 here.
        let (heads, hd, cols) = (2usize, 4usize, 32usize);
        let rows = heads * hd;
        let hf: Vec<f32> = (0..rows * cols).map(|i| (i / cols) as f32).collect();
        // convert_hf_to_gguf.py: reshape(heads, 2, hd/2, cols).swapaxes(1, 2).
        let hf_t = Tensor::from_vec(hf.clone(), (heads, 2, hd / 2, cols), &Device::Cpu)?;
        let permuted = hf_t.transpose(1, 2)?.contiguous()?.reshape((rows, cols))?;
        let q = QTensor::quantize(&permuted, candle_core::quantized::GgmlDType::F32)?;
        let back = unpermute_rows(&q, heads)?.dequantize(&Device::Cpu)?;
        assert_eq!(back.flatten_all()?.to_vec1::<f32>()?, hf);
        Ok(())
    }
}
