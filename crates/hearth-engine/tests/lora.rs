//! LoRA adapters against transformers + PEFT with the adapter merged: three adapters over the
//! `llama` parity checkpoint (`tests/fixtures/llama/adapters/`, made by
//! `scripts/make_lora_fixtures.py`), alone, mixed in one batch with the bare base model, and
//! through chunked prefill in the paged cache; and adapters that do not fit refused by name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};
use hearth_engine::generation::kv_cache::{
    KvCache, KvCacheConfig, PackedBatch, SeqInput, WantLogits,
};
use hearth_engine::models::llama::lora::LoraAdapter;
use hearth_engine::models::llama::{Llama, LlamaConfig};

// Each test file uses part of it.
#[allow(dead_code)]
mod parity_support;
use parity_support::{compare, config, fixture_dir, reference};

/// Same bound as the base model's parity (`tests/parity.rs`).
const MAX_REL_ERR: f32 = 1e-4;
const ADAPTERS: [&str; 3] = ["attn-r4", "all-r8-rslora", "mlp-r2-pattern"];
const BLOCK: usize = 4;

struct Fixture {
    cfg: LlamaConfig,
    model: Llama,
    /// Token ids, base reference logits.
    seqs: Vec<(Vec<u32>, Tensor)>,
}

fn fixture() -> Fixture {
    let dir = fixture_dir("llama");
    let cfg = config(&dir);
    // SAFETY: the fixture files are read-only test data, not modified while mapped.
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    let model = Llama::new(&cfg, vb).unwrap();
    Fixture { cfg, model, seqs: reference(&dir) }
}

fn adapter_dir(name: &str) -> PathBuf {
    fixture_dir("llama").join("adapters").join(name)
}

fn adapter(fx: &Fixture, name: &str) -> Arc<LoraAdapter> {
    let dir = adapter_dir(name);
    Arc::new(LoraAdapter::load(&dir, name, &fx.cfg, DType::F32, &Device::Cpu).unwrap())
}

/// transformers' logits for sequence `i` with the adapter merged.
fn adapter_reference(name: &str, i: usize) -> Tensor {
    let path = adapter_dir(name).join("reference.safetensors");
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()[&format!("logits.{i}")].clone()
}

fn cache(cfg: &LlamaConfig) -> KvCache {
    let kv = KvCacheConfig {
        num_blocks: 64,
        block_size: BLOCK,
        num_layers: cfg.num_hidden_layers,
        num_kv_heads: cfg.num_key_value_heads(),
        head_dim: cfg.head_dim(),
        dtype: DType::F32,
    };
    KvCache::new(&kv, &Device::Cpu).unwrap()
}

/// One sequence's part of a step: token ids, first position, block table, adapter.
type Part<'a> = (&'a [u32], usize, &'a [u32], Option<Arc<LoraAdapter>>);

/// One step over `parts`, all rows' logits.
fn step(fx: &Fixture, kv: &mut KvCache, parts: &[Part], known: &[usize]) -> Result<Tensor> {
    let inputs: Vec<SeqInput> = parts
        .iter()
        .zip(known)
        .map(|(&(tokens, start_pos, block_table, _), &known_len)| SeqInput {
            tokens,
            start_pos,
            block_table,
            want_logits: WantLogits::All,
            known_len,
        })
        .collect();
    let adapters = parts.iter().map(|p| p.3.clone()).collect();
    let batch = PackedBatch::new(&Device::Cpu, BLOCK, &inputs)?.with_adapters(adapters)?;
    fx.model.forward(&batch, kv)
}

/// Disjoint block tables for sequences of `lens` tokens.
fn tables(lens: &[usize]) -> Vec<Vec<u32>> {
    let mut next = 0u32;
    lens.iter()
        .map(|len| {
            let blocks = len.div_ceil(BLOCK) as u32;
            next += blocks;
            (next - blocks..next).rev().collect()
        })
        .collect()
}

fn check(what: &str, ours: &Tensor, reference: &Tensor) {
    let (err, _) = compare(ours, reference);
    println!("{what:44} rel err {err:.3e}");
    assert!(err <= MAX_REL_ERR, "{what}: {err:.3e}");
}

#[test]
fn each_adapter_alone_matches_the_merged_model() {
    let fx = fixture();
    for name in ADAPTERS {
        let adapter = adapter(&fx, name);
        for (i, (ids, base)) in fx.seqs.iter().enumerate() {
            let table = &tables(&[ids.len()])[0];
            let parts = [(ids.as_slice(), 0, table.as_slice(), Some(adapter.clone()))];
            let ours = step(&fx, &mut cache(&fx.cfg), &parts, &[ids.len()]).unwrap();
            check(&format!("{name}, seq {i}"), &ours, &adapter_reference(name, i));
            // The adapter really changes the output (it is not silently skipped).
            assert!(compare(&ours, base).0 > 0.1, "{name} seq {i} equals the base model");
        }
    }
}

/// Three adapters and the bare base model in one step, one adapter on two sequences: every
/// row matches its own reference, and moves from running alone by rounding only.
#[test]
fn a_batch_mixing_three_adapters_and_the_base_model() {
    let fx = fixture();
    let adapters: Vec<_> = ADAPTERS.iter().map(|n| adapter(&fx, n)).collect();
    // (sequence, adapter index or None)
    let plan = [(0, Some(0)), (1, Some(1)), (2, Some(2)), (0, None), (1, Some(0))];
    let lens: Vec<usize> = plan.iter().map(|&(s, _)| fx.seqs[s].0.len()).collect();
    let tables = tables(&lens);
    let parts: Vec<_> = plan
        .iter()
        .zip(&tables)
        .map(|(&(s, a), t)| {
            (fx.seqs[s].0.as_slice(), 0, t.as_slice(), a.map(|a| adapters[a].clone()))
        })
        .collect();
    let logits = step(&fx, &mut cache(&fx.cfg), &parts, &lens).unwrap();
    let mut row = 0;
    for (&(s, a), &len) in plan.iter().zip(&lens) {
        let ours = logits.narrow(0, row, len).unwrap();
        row += len;
        let (what, want) = match a {
            Some(a) => {
                (format!("mixed: {} on seq {s}", ADAPTERS[a]), adapter_reference(ADAPTERS[a], s))
            }
            None => (format!("mixed: base on seq {s}"), fx.seqs[s].1.clone()),
        };
        check(&what, &ours, &want);
        let table = &self::tables(&[len])[0];
        let part = (fx.seqs[s].0.as_slice(), 0, table.as_slice(), a.map(|a| adapters[a].clone()));
        let alone = step(&fx, &mut cache(&fx.cfg), &[part], &[len]).unwrap();
        let (moved, _) = compare(&ours, &alone);
        assert!(moved <= 1e-5, "{what}: {moved:.3e} from running alone");
    }
}

/// Prefill in two chunks through the paged cache, two adapters and the base side by side.
#[test]
fn chunked_prefill_with_adapters() {
    let fx = fixture();
    let adapters: Vec<_> = ADAPTERS.iter().map(|n| adapter(&fx, n)).collect();
    let plan = [(2, Some(1)), (1, None), (2, Some(2))];
    let lens: Vec<usize> = plan.iter().map(|&(s, _)| fx.seqs[s].0.len()).collect();
    let tables = tables(&lens);
    let mut kv = cache(&fx.cfg);
    let split: Vec<usize> = lens.iter().map(|l| l / 2).collect();
    let mut outputs = vec![Vec::new(); plan.len()];
    for chunk in 0..2 {
        let parts: Vec<_> = plan
            .iter()
            .enumerate()
            .map(|(i, &(s, a))| {
                let (from, to) = if chunk == 0 { (0, split[i]) } else { (split[i], lens[i]) };
                let ids = &fx.seqs[s].0[from..to];
                (ids, from, tables[i].as_slice(), a.map(|a| adapters[a].clone()))
            })
            .collect();
        let logits = step(&fx, &mut kv, &parts, &lens).unwrap();
        let mut row = 0;
        for (i, part) in parts.iter().enumerate() {
            outputs[i].push(logits.narrow(0, row, part.0.len()).unwrap());
            row += part.0.len();
        }
    }
    for (i, &(s, a)) in plan.iter().enumerate() {
        let ours = Tensor::cat(&outputs[i], 0).unwrap();
        let want = match a {
            Some(a) => adapter_reference(ADAPTERS[a], s),
            None => fx.seqs[s].1.clone(),
        };
        check(&format!("chunked: seq {s} {:?}", a.map(|a| ADAPTERS[a])), &ours, &want);
    }
}

/// Copies adapter `name` into `to`, rewriting its config with `edit`.
fn edited_copy(name: &str, to: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let from = adapter_dir(name);
    std::fs::copy(from.join("adapter_model.safetensors"), to.join("adapter_model.safetensors"))
        .unwrap();
    let text = std::fs::read_to_string(from.join("adapter_config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut config);
    std::fs::write(to.join("adapter_config.json"), config.to_string()).unwrap();
}

#[test]
fn adapters_that_do_not_fit_are_refused_by_module() {
    let fx = fixture();
    let load = |dir: &Path| {
        LoraAdapter::load(dir, "bad", &fx.cfg, DType::F32, &Device::Cpu).err().unwrap().to_string()
    };
    let tmp = tempfile::tempdir().unwrap();
    edited_copy("attn-r4", tmp.path(), |c| {
        c["target_modules"] = serde_json::json!(["q_proj", "c_attn"])
    });
    let err = load(tmp.path());
    assert!(err.contains("`c_attn` is not a projection of this model"), "{err}");
    edited_copy("attn-r4", tmp.path(), |c| c["use_dora"] = serde_json::json!(true));
    assert!(load(tmp.path()).contains("DoRA"));
    // An adapter trained for a wider model: the module and both shapes are named.
    let mut tensors = std::collections::HashMap::new();
    let key = "base_model.model.model.layers.0.self_attn.q_proj";
    tensors.insert(
        format!("{key}.lora_A.weight"),
        Tensor::zeros((4, 96), DType::F32, &Device::Cpu).unwrap(),
    );
    tensors.insert(
        format!("{key}.lora_B.weight"),
        Tensor::zeros((96, 4), DType::F32, &Device::Cpu).unwrap(),
    );
    edited_copy("attn-r4", tmp.path(), |_| {});
    candle_core::safetensors::save(&tensors, tmp.path().join("adapter_model.safetensors")).unwrap();
    let err = load(tmp.path());
    assert!(err.contains("model.layers.0.self_attn.q_proj") && err.contains("[4, 96]"), "{err}");
}
