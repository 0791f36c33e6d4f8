//! The synthetic checkpoint: which tensors it holds, how each is initialised, and how they are
//! streamed into safetensors files without ever holding a whole tensor in memory.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use safetensors::tensor::{Metadata, TensorInfo};
use serde::Serialize;

use super::{write_file, SynthFamily, SynthSpec, MOE_EXPERTS};
use crate::error::PackageError;
use crate::settings::DType;
use crate::weights::{TensorDtype, INDEX_FILE, SINGLE_FILE};

/// Standard deviation of the random matrices: Hugging Face's default `initializer_range`.
const INIT_STD: f32 = 0.02;
/// Values generated and encoded per write; bounds memory whatever the tensor size.
const CHUNK_ELEMENTS: usize = 1 << 16;
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// How a tensor's values are chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum TensorInit {
    /// Seeded normal values with mean 0.
    Normal { std: f32 },
    /// All ones, as RMSNorm weights start.
    Ones,
    /// All zeros, as Gemma's RMSNorm weights start (they multiply by `1 + weight`).
    Zeros,
}

pub(crate) struct PlannedTensor {
    pub(crate) name: String,
    pub(crate) shape: Vec<usize>,
    pub(crate) init: TensorInit,
}

impl PlannedTensor {
    fn new(name: String, shape: Vec<usize>, init: TensorInit) -> Self {
        Self { name, shape, init }
    }

    fn num_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The Hugging Face Llama checkpoint layout for `spec`, in file order.
pub(crate) fn plan(spec: &SynthSpec) -> Vec<PlannedTensor> {
    let normal = TensorInit::Normal { std: INIT_STD };
    let gemma = matches!(spec.family, SynthFamily::Gemma2 | SynthFamily::Gemma3);
    let norm = if gemma { TensorInit::Zeros } else { TensorInit::Ones };
    let (hidden, inter) = (spec.hidden_size, spec.intermediate_size);
    let q_dim = spec.num_attention_heads * spec.head_dim();
    let kv_dim = spec.num_key_value_heads * spec.head_dim();
    let mut tensors = vec![PlannedTensor::new(
        "model.embed_tokens.weight".to_string(),
        vec![spec.vocab_size, hidden],
        normal,
    )];
    for layer in 0..spec.num_hidden_layers {
        let prefix = format!("model.layers.{layer}");
        let mut layer_tensors = if spec.family == SynthFamily::Phi3 {
            vec![
                ("input_layernorm", vec![hidden], norm),
                ("self_attn.qkv_proj", vec![q_dim + 2 * kv_dim, hidden], normal),
                ("self_attn.o_proj", vec![hidden, q_dim], normal),
                ("post_attention_layernorm", vec![hidden], norm),
                ("mlp.gate_up_proj", vec![2 * inter, hidden], normal),
                ("mlp.down_proj", vec![hidden, inter], normal),
            ]
        } else {
            vec![
                ("input_layernorm", vec![hidden], norm),
                ("self_attn.q_proj", vec![q_dim, hidden], normal),
                ("self_attn.k_proj", vec![kv_dim, hidden], normal),
                ("self_attn.v_proj", vec![kv_dim, hidden], normal),
                ("self_attn.o_proj", vec![hidden, q_dim], normal),
                ("post_attention_layernorm", vec![hidden], norm),
                ("mlp.gate_proj", vec![inter, hidden], normal),
                ("mlp.up_proj", vec![inter, hidden], normal),
                ("mlp.down_proj", vec![hidden, inter], normal),
            ]
        };
        if spec.family.is_moe() {
            layer_tensors.retain(|(name, ..)| !name.starts_with("mlp."));
        }
        for (name, shape, init) in layer_tensors {
            tensors.push(PlannedTensor::new(format!("{prefix}.{name}.weight"), shape, init));
        }
        if spec.family == SynthFamily::Qwen2Moe {
            // Qwen2's attention has biases on its query, key and value projections.
            for (name, size) in [("q_proj", q_dim), ("k_proj", kv_dim), ("v_proj", kv_dim)] {
                let name = format!("{prefix}.self_attn.{name}.bias");
                tensors.push(PlannedTensor::new(name, vec![size], normal));
            }
        }
        if gemma {
            for name in ["pre_feedforward_layernorm", "post_feedforward_layernorm"] {
                let name = format!("{prefix}.{name}.weight");
                tensors.push(PlannedTensor::new(name, vec![hidden], norm));
            }
        }
        match spec.family {
            SynthFamily::Qwen3Moe => tensors.extend(experts(&prefix, QWEN, hidden, inter / 4)),
            SynthFamily::Qwen2Moe => {
                tensors.extend(experts(&prefix, QWEN, hidden, inter / 4));
                tensors.extend(shared_expert(&prefix, hidden, inter / 2));
            }
            // Mixtral's experts are `intermediate_size` wide.
            SynthFamily::Mixtral => tensors.extend(experts(&prefix, MIXTRAL, hidden, inter)),
            _ => {}
        }
        if matches!(spec.family, SynthFamily::Qwen3 | SynthFamily::Gemma3 | SynthFamily::Qwen3Moe) {
            for name in ["self_attn.q_norm", "self_attn.k_norm"] {
                let name = format!("{prefix}.{name}.weight");
                tensors.push(PlannedTensor::new(name, vec![spec.head_dim()], norm));
            }
        }
    }
    tensors.push(PlannedTensor::new("model.norm.weight".to_string(), vec![hidden], norm));
    if !spec.tie_word_embeddings {
        tensors.push(PlannedTensor::new(
            "lm_head.weight".to_string(),
            vec![spec.vocab_size, hidden],
            normal,
        ));
    }
    tensors
}

/// Where a family keeps a sparse layer's router and experts: the block's name, then each
/// expert's gate, up and down projections.
type ExpertNames = (&'static str, [&'static str; 3]);
const QWEN: ExpertNames = ("mlp", ["gate_proj", "up_proj", "down_proj"]);
const MIXTRAL: ExpertNames = ("block_sparse_moe", ["w1", "w3", "w2"]);

/// A sparse layer's router and [`MOE_EXPERTS`] experts, each `inter` wide.
fn experts(prefix: &str, names: ExpertNames, hidden: usize, inter: usize) -> Vec<PlannedTensor> {
    let init = TensorInit::Normal { std: INIT_STD };
    let (block, [gate, up, down]) = names;
    let router = format!("{prefix}.{block}.gate.weight");
    let mut out = vec![PlannedTensor::new(router, vec![MOE_EXPERTS, hidden], init)];
    for e in 0..MOE_EXPERTS {
        let expert = format!("{prefix}.{block}.experts.{e}");
        for (name, shape) in
            [(gate, [inter, hidden]), (up, [inter, hidden]), (down, [hidden, inter])]
        {
            out.push(PlannedTensor::new(format!("{expert}.{name}.weight"), shape.to_vec(), init));
        }
    }
    out
}

/// Qwen2-MoE's shared expert, `inter` wide, and its sigmoid gate.
fn shared_expert(prefix: &str, hidden: usize, inter: usize) -> Vec<PlannedTensor> {
    let init = TensorInit::Normal { std: INIT_STD };
    let shared = format!("{prefix}.mlp.shared_expert");
    let mut out: Vec<PlannedTensor> = [
        ("gate_proj", [inter, hidden]),
        ("up_proj", [inter, hidden]),
        ("down_proj", [hidden, inter]),
    ]
    .into_iter()
    .map(|(name, shape)| {
        PlannedTensor::new(format!("{shared}.{name}.weight"), shape.to_vec(), init)
    })
    .collect();
    let gate = format!("{prefix}.mlp.shared_expert_gate.weight");
    out.push(PlannedTensor::new(gate, vec![1, hidden], init));
    out
}

/// A tensor in a shard, with its position in the whole checkpoint (which seeds its values, so
/// sharding never changes them).
type ShardEntry<'a> = (usize, &'a PlannedTensor);

/// Counts bytes written and reports them.
struct Progress<'a> {
    done: usize,
    total: usize,
    report: &'a mut dyn FnMut(usize, usize),
}

impl Progress<'_> {
    fn advance(&mut self, bytes: usize) {
        self.done += bytes;
        (self.report)(self.done, self.total);
    }
}

pub(crate) fn write_weights(
    spec: &SynthSpec,
    dir: &Path,
    report: &mut dyn FnMut(usize, usize),
) -> Result<(), PackageError> {
    let tensors = plan(spec);
    let shards = split_into_shards(&tensors, spec.dtype, spec.max_shard_bytes);
    let headers =
        shards.iter().map(|shard| header(shard, spec.dtype)).collect::<Result<Vec<_>, _>>()?;
    let data_bytes: usize =
        tensors.iter().map(|t| t.num_elements() * spec.dtype.size_in_bytes()).sum();
    let total = data_bytes + headers.iter().map(|h| 8 + h.len()).sum::<usize>();
    let mut progress = Progress { done: 0, total, report };
    let names = shard_file_names(shards.len());
    for ((shard, header), name) in shards.iter().zip(&headers).zip(&names) {
        write_shard(dir, name, header, shard, spec, &mut progress)?;
    }
    // A stale file of the other layout would make the loader read the wrong weights.
    let (stale, index) = if shards.len() > 1 {
        (SINGLE_FILE, Some(index_json(&shards, &names, data_bytes)?))
    } else {
        (INDEX_FILE, None)
    };
    remove_if_present(&dir.join(stale))?;
    match index {
        Some(index) => write_file(dir, INDEX_FILE, index.as_bytes()),
        None => Ok(()),
    }
}

fn split_into_shards(
    tensors: &[PlannedTensor],
    dtype: DType,
    max_shard_bytes: Option<u64>,
) -> Vec<Vec<ShardEntry<'_>>> {
    let limit = max_shard_bytes.map_or(usize::MAX, |b| usize::try_from(b).unwrap_or(usize::MAX));
    let mut shards: Vec<Vec<ShardEntry<'_>>> = vec![Vec::new()];
    let mut current_bytes = 0;
    for (index, tensor) in tensors.iter().enumerate() {
        let bytes = tensor.num_elements() * dtype.size_in_bytes();
        let current = shards.len() - 1;
        if !shards[current].is_empty() && current_bytes + bytes > limit {
            shards.push(Vec::new());
            current_bytes = 0;
        }
        current_bytes += bytes;
        if let Some(shard) = shards.last_mut() {
            shard.push((index, tensor));
        }
    }
    shards
}

fn shard_file_names(count: usize) -> Vec<String> {
    if count == 1 {
        return vec![SINGLE_FILE.to_string()];
    }
    (1..=count).map(|i| format!("model-{i:05}-of-{count:05}.safetensors")).collect()
}

fn storage_dtype(dtype: DType) -> TensorDtype {
    match dtype {
        DType::F32 => TensorDtype::F32,
        DType::F16 => TensorDtype::F16,
        DType::Bf16 => TensorDtype::BF16,
    }
}

/// The JSON header for one shard, built and validated by the safetensors crate and padded with
/// spaces to 8 bytes as its own serializer does.
fn header(shard: &[ShardEntry<'_>], dtype: DType) -> Result<Vec<u8>, PackageError> {
    let mut offset = 0;
    let mut infos = Vec::with_capacity(shard.len());
    for (_, tensor) in shard {
        let bytes = tensor.num_elements() * dtype.size_in_bytes();
        let info = TensorInfo {
            dtype: storage_dtype(dtype),
            shape: tensor.shape.clone(),
            data_offsets: (offset, offset + bytes),
        };
        infos.push((tensor.name.clone(), info));
        offset += bytes;
    }
    let format = HashMap::from([("format".to_string(), "pt".to_string())]);
    let spec_error = |e: String| PackageError::InvalidSpec(format!("safetensors header: {e}"));
    let metadata = Metadata::new(Some(format), infos).map_err(|e| spec_error(e.to_string()))?;
    let mut json = serde_json::to_vec(&metadata).map_err(|e| spec_error(e.to_string()))?;
    json.resize(json.len().div_ceil(8) * 8, b' ');
    Ok(json)
}

fn write_shard(
    dir: &Path,
    name: &str,
    header: &[u8],
    shard: &[ShardEntry<'_>],
    spec: &SynthSpec,
    progress: &mut Progress<'_>,
) -> Result<(), PackageError> {
    let path = dir.join(name);
    let io_error = |e| PackageError::io(&path, e);
    let file = File::create(&path).map_err(io_error)?;
    let mut out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
    out.write_all(&(header.len() as u64).to_le_bytes()).map_err(io_error)?;
    out.write_all(header).map_err(io_error)?;
    progress.advance(8 + header.len());
    for (index, tensor) in shard {
        write_tensor(&mut out, *index, tensor, spec, progress).map_err(io_error)?;
    }
    out.into_inner().map_err(|e| io_error(e.into_error()))?.sync_all().map_err(io_error)
}

fn write_tensor(
    out: &mut impl Write,
    index: usize,
    tensor: &PlannedTensor,
    spec: &SynthSpec,
    progress: &mut Progress<'_>,
) -> std::io::Result<()> {
    // One independent stream per tensor: values depend only on (seed, tensor position).
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    rng.set_stream(index as u64);
    let normal = match tensor.init {
        TensorInit::Normal { std } => Normal::new(0.0f32, std).ok(),
        TensorInit::Ones | TensorInit::Zeros => None,
    };
    let constant = if matches!(tensor.init, TensorInit::Zeros) { 0.0 } else { 1.0 };
    let mut values = Vec::with_capacity(CHUNK_ELEMENTS);
    let mut bytes = Vec::with_capacity(CHUNK_ELEMENTS * spec.dtype.size_in_bytes());
    let mut remaining = tensor.num_elements();
    while remaining > 0 {
        let count = remaining.min(CHUNK_ELEMENTS);
        values.clear();
        match &normal {
            Some(normal) => values.extend((0..count).map(|_| normal.sample(&mut rng))),
            None => values.resize(count, constant),
        }
        encode(&values, spec.dtype, &mut bytes);
        out.write_all(&bytes)?;
        progress.advance(bytes.len());
        remaining -= count;
    }
    Ok(())
}

fn encode(values: &[f32], dtype: DType, bytes: &mut Vec<u8>) {
    bytes.clear();
    match dtype {
        DType::F32 => bytes.extend(values.iter().flat_map(|v| v.to_le_bytes())),
        DType::F16 => {
            bytes.extend(values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()))
        }
        DType::Bf16 => {
            bytes.extend(values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()))
        }
    }
}

#[derive(Serialize)]
struct IndexJson<'a> {
    metadata: IndexMetadata,
    weight_map: BTreeMap<&'a str, &'a str>,
}

#[derive(Serialize)]
struct IndexMetadata {
    total_size: usize,
}

fn index_json(
    shards: &[Vec<ShardEntry<'_>>],
    names: &[String],
    total_size: usize,
) -> Result<String, PackageError> {
    let weight_map = shards
        .iter()
        .zip(names)
        .flat_map(|(shard, name)| shard.iter().map(move |(_, t)| (t.name.as_str(), name.as_str())))
        .collect();
    let index = IndexJson { metadata: IndexMetadata { total_size }, weight_map };
    serde_json::to_string_pretty(&index)
        .map(|text| text + "\n")
        .map_err(|e| PackageError::InvalidSpec(format!("shard index: {e}")))
}

fn remove_if_present(path: &Path) -> Result<(), PackageError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(PackageError::io(path, e)),
        _ => Ok(()),
    }
}
