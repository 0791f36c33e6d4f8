//! The parity fixtures (`tests/fixtures/<family>/`, made by `scripts/make_parity_fixtures.py`)
//! as the quantized-path tests read them: the config, the reference logits of `transformers`,
//! and one model's logits compared against them.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Result, Tensor};
use hearth_engine::generation::kv_cache::{
    KvCache, KvCacheConfig, PackedBatch, SeqInput, WantLogits,
};
use hearth_engine::models::llama::{Llama, LlamaConfig};

pub fn fixture_dir(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(family)
}

pub fn config(dir: &Path) -> LlamaConfig {
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    LlamaConfig::from_value(&serde_json::from_str(&text).unwrap()).unwrap()
}

/// Each reference sequence's token ids and `transformers` logits `[len, vocab]`.
pub fn reference(dir: &Path) -> Vec<(Vec<u32>, Tensor)> {
    let reference =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let mut seqs = Vec::new();
    while let Some(ids) = reference.get(&format!("input_ids.{}", seqs.len())) {
        let ids = ids.to_vec1::<i64>().unwrap().into_iter().map(|t| t as u32).collect();
        seqs.push((ids, reference[&format!("logits.{}", seqs.len())].clone()));
    }
    seqs
}

/// All-row logits of `ids` run alone in one step.
pub fn logits(model: &Llama, cfg: &LlamaConfig, ids: &[u32]) -> Result<Tensor> {
    let kv = KvCacheConfig {
        num_blocks: 64,
        block_size: 4,
        num_layers: cfg.num_hidden_layers,
        num_kv_heads: cfg.num_key_value_heads(),
        head_dim: cfg.head_dim(),
        dtype: DType::F32,
    };
    let table: Vec<u32> = (0..ids.len().div_ceil(4) as u32).collect();
    let seq = SeqInput {
        tokens: ids,
        start_pos: 0,
        block_table: &table,
        want_logits: WantLogits::All,
        known_len: ids.len(),
    };
    let batch = PackedBatch::new(&Device::Cpu, 4, &[seq])?;
    model.forward(&batch, &mut KvCache::new(&kv, &Device::Cpu)?)
}

/// (max |a - b| / max |b|, share of rows whose argmax agrees).
pub fn compare(ours: &Tensor, reference: &Tensor) -> (f32, f32) {
    let diff = (ours - reference).unwrap().abs().unwrap().max_all().unwrap();
    let scale = reference.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let a = ours.argmax(1).unwrap().to_vec1::<u32>().unwrap();
    let b = reference.argmax(1).unwrap().to_vec1::<u32>().unwrap();
    let agree = a.iter().zip(&b).filter(|(x, y)| x == y).count() as f32 / a.len() as f32;
    (diff.to_scalar::<f32>().unwrap() / scale, agree)
}

/// Max rel err and worst argmax agreement of `model` against every reference sequence.
pub fn against_reference(family: &str, what: &str, model: &Llama, cfg: &LlamaConfig) -> (f32, f32) {
    let (mut worst_err, mut worst_agree) = (0f32, 1f32);
    for (ids, reference) in reference(&fixture_dir(family)) {
        let (err, agree) = compare(&logits(model, cfg, &ids).unwrap(), &reference);
        worst_err = worst_err.max(err);
        worst_agree = worst_agree.min(agree);
    }
    println!("{family:8} {what:24} rel err {worst_err:.3e}, argmax agreement {worst_agree:.2}");
    (worst_err, worst_agree)
}
