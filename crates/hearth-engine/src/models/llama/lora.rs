//! LoRA adapters in PEFT's format over a Llama-family model, many in one batch.
//!
//! An adapter adds `scale · B A x` to some of the model's projections (`A` is `r × in`, `B` is
//! `out × r`, `scale = alpha / r`, or `alpha / √r` with rsLoRA). The base product runs once for
//! every row of the step; then each adapter in the step multiplies only its own rows through
//! its two small matrices and adds the result into them, in the spirit of Punica and S-LoRA:
//! rows without an adapter pay nothing, and no merged copy of the base weights exists.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::config::LlamaConfig;
use crate::generation::kv_cache::PackedBatch;
use crate::kernels::lora_delta::{HostLora, LoraDelta};

/// The projections an adapter may target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    Q,
    K,
    V,
    Qkv,
    O,
    Gate,
    Up,
    GateUp,
    Down,
}

impl Target {
    const COUNT: usize = 9;

    /// The target behind a PEFT module name (`q_proj`, …) in `cfg`'s family, with its
    /// `(in, out)` features.
    fn of(module: &str, cfg: &LlamaConfig) -> Option<(Self, usize, usize)> {
        let (h, hd, inter) = (cfg.hidden_size, cfg.head_dim(), cfg.intermediate_size);
        let (q, kv) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads() * hd);
        let fused = cfg.layout().fused_projections;
        let found = match (module, fused) {
            ("q_proj", false) => (Self::Q, h, q),
            ("k_proj", false) => (Self::K, h, kv),
            ("v_proj", false) => (Self::V, h, kv),
            ("qkv_proj", true) => (Self::Qkv, h, q + 2 * kv),
            ("o_proj", _) => (Self::O, q, h),
            ("gate_proj", false) => (Self::Gate, h, inter),
            ("up_proj", false) => (Self::Up, h, inter),
            ("gate_up_proj", true) => (Self::GateUp, h, 2 * inter),
            ("down_proj", _) => (Self::Down, inter, h),
            _ => return None,
        };
        Some(found)
    }

    fn modules(cfg: &LlamaConfig) -> &'static [&'static str] {
        if cfg.layout().fused_projections {
            &["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
        } else {
            &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("adapter `{adapter}`: {path}: {message}")]
    File { adapter: String, path: String, message: String },
    #[error("adapter `{adapter}`: adapter_config.json: {message}")]
    Config { adapter: String, message: String },
    #[error("adapter `{adapter}`: module `{module}`: {message}")]
    Module { adapter: String, module: String, message: String },
}

/// `adapter_config.json`, the parts that decide what the adapter computes.
#[derive(Debug, Deserialize)]
struct AdapterConfig {
    #[serde(default)]
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    target_modules: serde_json::Value,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    rank_pattern: HashMap<String, usize>,
    #[serde(default)]
    alpha_pattern: HashMap<String, f64>,
}

impl AdapterConfig {
    /// What Hearth cannot run, said plainly.
    fn refusal(&self) -> Option<String> {
        if self.peft_type.as_deref().is_some_and(|t| t != "LORA") {
            return Some(format!("peft_type `{}` is not LoRA", self.peft_type.as_deref()?));
        }
        if self.use_dora {
            return Some("DoRA (use_dora) is not supported".into());
        }
        if self.bias.as_deref().is_some_and(|b| b != "none") {
            return Some("trained biases (bias other than \"none\") are not supported".into());
        }
        if self.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return Some("modules_to_save (fully trained modules) are not supported".into());
        }
        if self.fan_in_fan_out {
            return Some("fan_in_fan_out (GPT-2's Conv1D layout) is not supported".into());
        }
        None
    }

    /// `alpha_pattern`'s value for the module at `path`, else `lora_alpha`.
    fn alpha(&self, path: &str) -> f64 {
        pattern_value(&self.alpha_pattern, path).copied().unwrap_or(self.lora_alpha)
    }
}

/// The value of the first pattern that names the module at `path`: PEFT's patterns name a
/// module or a dotted suffix of its path (`down_proj`, `layers.3.mlp.down_proj`). Written
/// as literal names here; a pattern meant as a regular expression matches nothing.
fn pattern_value<'a, T>(patterns: &'a HashMap<String, T>, path: &str) -> Option<&'a T> {
    let names = |pattern: &str| path == pattern || path.ends_with(&format!(".{pattern}"));
    patterns.iter().find(|(p, _)| names(p)).map(|(_, v)| v)
}

/// One projection's update of a row `x`, `scale · B A x`.
enum LoraPair {
    /// On the CPU in f32: host matrices for the fused kernel (`kernels/lora_delta.rs`).
    Host(HostLora),
    /// Elsewhere: `x · a_t · b_t` with `a_t = Aᵀ` (`[in, r]`) and `b_t = scale · Bᵀ` (`[r, out]`).
    Device { a_t: Tensor, b_t: Tensor },
}

/// A loaded adapter: per layer, its update of each targeted projection.
pub struct LoraAdapter {
    name: String,
    id: u64,
    layers: Vec<[Option<LoraPair>; Target::COUNT]>,
    bytes: usize,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl LoraAdapter {
    /// Reads `dir` (`adapter_config.json` + `adapter_model.safetensors`) for a model of `cfg`,
    /// refusing anything that does not fit it with a message naming the module.
    pub fn load(
        dir: &Path,
        name: &str,
        cfg: &LlamaConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, AdapterError> {
        let config = read_config(dir, name)?;
        let tensors = read_tensors(dir, name)?;
        let config_err = |message: String| AdapterError::Config { adapter: name.into(), message };
        if let Some(refusal) = config.refusal() {
            return Err(config_err(refusal));
        }
        check_targets(&config, cfg).map_err(config_err)?;
        let mut layers: Vec<[Option<LoraPair>; Target::COUNT]> =
            (0..cfg.num_hidden_layers).map(|_| Default::default()).collect();
        let mut bytes = 0;
        for (path, (a, b)) in pair_up(tensors, name)? {
            let module_err = |message: String| AdapterError::Module {
                adapter: name.into(),
                module: path.clone(),
                message,
            };
            let (layer, target, in_dim, out_dim) = locate(&path, cfg).map_err(module_err)?;
            let r = a.dim(0).map_err(|e| module_err(e.to_string()))?;
            let (a_shape, b_shape) = (a.dims().to_vec(), b.dims().to_vec());
            if a_shape != [r, in_dim] || b_shape != [out_dim, r] {
                return Err(module_err(format!(
                    "lora_A is {a_shape:?} and lora_B {b_shape:?}; this model needs [r, \
                     {in_dim}] and [{out_dim}, r]"
                )));
            }
            let rank = pattern_value(&config.rank_pattern, &path).copied().unwrap_or(config.r);
            if rank != r {
                return Err(module_err(format!("the config says r={rank}; lora_A has {r} rows")));
            }
            let alpha = config.alpha(&path);
            let scale =
                if config.use_rslora { alpha / (r as f64).sqrt() } else { alpha / r as f64 };
            let pair =
                to_pair(&a, &b, scale, dtype, device).map_err(|e| module_err(e.to_string()))?;
            bytes += (in_dim + out_dim) * r * dtype.size_in_bytes();
            layers[layer][target as usize] = Some(pair);
        }
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Ok(Self { name: name.to_string(), id, layers, bytes })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Unique among the adapters this process loaded: it keys the prefix cache, so that a
    /// prefix computed under one adapter is never reused under another (or the base model).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Memory its matrices take on the device.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn pair(&self, layer: usize, target: Target) -> Option<&LoraPair> {
        self.layers.get(layer)?[target as usize].as_ref()
    }
}

fn read_config(dir: &Path, name: &str) -> Result<AdapterConfig, AdapterError> {
    let path = dir.join("adapter_config.json");
    let file_err = |message: String| AdapterError::File {
        adapter: name.into(),
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| file_err(e.to_string()))?;
    serde_json::from_str(&text)
        .map_err(|e| AdapterError::Config { adapter: name.into(), message: e.to_string() })
}

fn read_tensors(dir: &Path, name: &str) -> Result<HashMap<String, Tensor>, AdapterError> {
    let path = dir.join("adapter_model.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| AdapterError::File {
        adapter: name.into(),
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Every module named in `target_modules` must be one this family's layers have.
fn check_targets(config: &AdapterConfig, cfg: &LlamaConfig) -> Result<(), String> {
    let known = Target::modules(cfg);
    let names: Vec<String> = match &config.target_modules {
        serde_json::Value::String(s) if s == "all-linear" => return Ok(()),
        serde_json::Value::String(s) => {
            return Err(format!(
                "target_modules as a pattern (`{s}`) is not supported; list the modules"
            ))
        }
        serde_json::Value::Array(items) => {
            items.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect()
        }
        other => return Err(format!("target_modules `{other}` is neither a list nor a string")),
    };
    match names.iter().find(|m| !known.contains(&m.as_str())) {
        Some(module) => Err(format!(
            "target module `{module}` is not a projection of this model ({})",
            known.join(", ")
        )),
        None if config.r == 0 => Err("r must be at least 1".into()),
        None => Ok(()),
    }
}

/// A module's path (`model.layers.3.self_attn.q_proj`) and its `(lora_A, lora_B)`.
type ModulePair = (String, (Tensor, Tensor));

/// The `(lora_A, lora_B)` tensors of each module path.
fn pair_up(tensors: HashMap<String, Tensor>, name: &str) -> Result<Vec<ModulePair>, AdapterError> {
    let mut halves: HashMap<String, (Option<Tensor>, Option<Tensor>)> = HashMap::new();
    for (key, tensor) in tensors {
        let key_err = |message: &str| AdapterError::Module {
            adapter: name.into(),
            module: key.clone(),
            message: message.into(),
        };
        let inner = key.strip_prefix("base_model.model.").unwrap_or(&key);
        let (path, half) = match inner.rsplit_once(".lora_") {
            Some((path, "A.weight")) => (path, 0),
            Some((path, "B.weight")) => (path, 1),
            _ => return Err(key_err("is not a LoRA matrix (lora_A.weight or lora_B.weight)")),
        };
        let entry = halves.entry(path.to_string()).or_default();
        if half == 0 {
            entry.0 = Some(tensor);
        } else {
            entry.1 = Some(tensor);
        }
    }
    let mut pairs = Vec::with_capacity(halves.len());
    for (path, halves) in halves {
        match halves {
            (Some(a), Some(b)) => pairs.push((path, (a, b))),
            _ => {
                return Err(AdapterError::Module {
                    adapter: name.into(),
                    module: path,
                    message: "has only one of lora_A and lora_B".into(),
                })
            }
        }
    }
    pairs.sort_by(|x, y| x.0.cmp(&y.0));
    Ok(pairs)
}

/// `model.layers.{i}.{self_attn|mlp}.{module}` → layer, target and the projection's sizes.
fn locate(path: &str, cfg: &LlamaConfig) -> Result<(usize, Target, usize, usize), String> {
    let rest = path.strip_prefix("model.layers.").ok_or("is not inside a decoder layer")?;
    let (layer, rest) = rest.split_once('.').ok_or("is not inside a decoder layer")?;
    let layer: usize = layer.parse().map_err(|_| format!("layer `{layer}` is not a number"))?;
    if layer >= cfg.num_hidden_layers {
        return Err(format!("layer {layer} does not exist ({} layers)", cfg.num_hidden_layers));
    }
    let module = match rest.split_once('.') {
        Some(("self_attn" | "mlp", module)) => module,
        _ => return Err("is not an attention or MLP projection".into()),
    };
    if cfg.moe().ok().flatten().is_some_and(|m| m.sparse_layers[layer]) && rest.starts_with("mlp") {
        return Err("the experts of a mixture-of-experts layer are not adapted".into());
    }
    let (target, in_dim, out_dim) = Target::of(module, cfg)
        .ok_or_else(|| format!("`{module}` is not a projection of this model"))?;
    Ok((layer, target, in_dim, out_dim))
}

fn to_pair(
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<LoraPair> {
    let a = a.to_dtype(DType::F32)?;
    let b_t = (b.to_dtype(DType::F32)?.t()?.contiguous()? * scale)?;
    if device.is_cpu() && dtype == DType::F32 {
        let rank = a.dim(0)?;
        let (a, bt) = (a.flatten_all()?.to_vec1()?, b_t.flatten_all()?.to_vec1()?);
        return Ok(LoraPair::Host(HostLora { a, bt, rank }));
    }
    Ok(LoraPair::Device {
        a_t: a.t()?.contiguous()?.to_dtype(dtype)?.to_device(device)?,
        b_t: b_t.to_dtype(dtype)?.to_device(device)?,
    })
}

/// The step's rows of each adapter present in it, found once for every layer: on the host,
/// and as an index tensor for the device path.
#[derive(Default)]
pub(super) struct LoraRows {
    groups: Vec<(Arc<LoraAdapter>, Vec<u32>, Tensor)>,
}

impl LoraRows {
    pub fn new(batch: &PackedBatch, device: &Device) -> candle_core::Result<Self> {
        let mut groups: Vec<(Arc<LoraAdapter>, Vec<u32>)> = Vec::new();
        for (seq, adapter) in batch.seqs.iter().zip(&batch.adapters) {
            let Some(adapter) = adapter else { continue };
            let rows = seq.offset as u32..(seq.offset + seq.len) as u32;
            match groups.iter_mut().find(|(a, _)| a.id == adapter.id) {
                Some((_, group)) => group.extend(rows),
                None => groups.push((adapter.clone(), rows.collect())),
            }
        }
        let groups = groups
            .into_iter()
            .map(|(adapter, rows)| {
                let index = Tensor::new(rows.as_slice(), device)?;
                Ok((adapter, rows, index))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { groups })
    }

    /// `y` (a projection of `x`, both `[T, ·]`) plus every adapter's update on its own rows.
    /// On the CPU `y` is updated in place, so it must be a product's fresh output that no other
    /// tensor holds.
    pub fn apply(
        &self,
        y: Tensor,
        x: &Tensor,
        layer: usize,
        target: Target,
    ) -> candle_core::Result<Tensor> {
        let mut host_rows = Vec::new();
        let mut y = y;
        for (adapter, rows, index) in &self.groups {
            match adapter.pair(layer, target) {
                None => {}
                Some(LoraPair::Host(lora)) => {
                    host_rows.extend(rows.iter().map(|&r| (r as usize, lora)));
                }
                Some(LoraPair::Device { a_t, b_t }) => {
                    let delta = x.index_select(index, 0)?.matmul(a_t)?.matmul(b_t)?;
                    y = y.index_add(index, &delta.to_dtype(y.dtype())?, 0)?;
                }
            }
        }
        if host_rows.is_empty() {
            return Ok(y);
        }
        let y = y.contiguous()?;
        y.inplace_op2(&x.contiguous()?, &LoraDelta { rows: host_rows })?;
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused CPU kernel and the candle-op path (GPUs, other dtypes) compute the same update.
    #[test]
    fn host_and_device_updates_agree() {
        let dev = Device::Cpu;
        let (rows, inp, out, rank) = (5, 24, 40, 3);
        let a = Tensor::randn(0f32, 1.0, (rank, inp), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (out, rank), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (rows, inp), &dev).unwrap();
        let y = Tensor::randn(0f32, 1.0, (rows, out), &dev).unwrap();
        let adapter = |pair: LoraPair| {
            let mut layer: [Option<LoraPair>; Target::COUNT] = Default::default();
            layer[Target::O as usize] = Some(pair);
            Arc::new(LoraAdapter { name: "t".into(), id: 1, layers: vec![layer], bytes: 0 })
        };
        let host = to_pair(&a, &b, 0.5, DType::F32, &dev).unwrap();
        assert!(matches!(host, LoraPair::Host(_)));
        let a_t = a.t().unwrap().contiguous().unwrap();
        let b_t = (b.t().unwrap().contiguous().unwrap() * 0.5).unwrap();
        let device = LoraPair::Device { a_t, b_t };
        // Rows 1 and 3 under the adapter; the others keep the base output.
        let picked = vec![1u32, 3];
        let group = |adapter| {
            let index = Tensor::new(picked.as_slice(), &dev).unwrap();
            LoraRows { groups: vec![(adapter, picked.clone(), index)] }
        };
        let via_host = group(adapter(host)).apply(y.copy().unwrap(), &x, 0, Target::O).unwrap();
        let via_device = group(adapter(device)).apply(y.copy().unwrap(), &x, 0, Target::O).unwrap();
        let gap = (&via_host - &via_device).unwrap().abs().unwrap().max_all().unwrap();
        assert!(gap.to_scalar::<f32>().unwrap() < 1e-5);
        let untouched = (via_host.get(0).unwrap() - y.get(0).unwrap()).unwrap().abs().unwrap();
        assert_eq!(untouched.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        let moved = (via_host.get(1).unwrap() - y.get(1).unwrap()).unwrap().abs().unwrap();
        assert!(moved.max_all().unwrap().to_scalar::<f32>().unwrap() > 0.1);
        // Another layer or projection: nothing to add.
        let other = group(adapter(to_pair(&a, &b, 0.5, DType::F32, &dev).unwrap()));
        let same = other.apply(y.copy().unwrap(), &x, 0, Target::Q).unwrap();
        assert_eq!(
            (same - &y).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(),
            0.0
        );
    }
}
