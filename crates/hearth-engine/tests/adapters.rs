//! Serving LoRA adapters through the engine: declared in `hearth.yaml`, chosen per request,
//! mixed in one batch with the base model, prefix-cached apart, read on first use and dropped
//! least recently used first, registered while the engine runs. (Numerics against
//! transformers + PEFT are `tests/lora.rs`.)

// Only `collect` and `Output` are used here.
#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use hearth_engine::{
    AdapterLookupError, Engine, EngineConfig, GenerateRequest, KvCacheSize, Prompt, SubmitError,
};
use hearth_package::synth::{write_llama_package, write_lora_adapter, LoraSpec, SynthSpec};
use hearth_package::Package;
use hearth_protocol::SamplingParams;

const PROMPT: &str = "the quick brown fox jumps over the lazy dog and keeps on running far away";

/// tiny-llama with adapters `a`, `b`, `c` (rank `rank`, every projection; `c` only q and v).
fn package(root: &Path, rank: usize, cache_mb: usize) -> PathBuf {
    let dir = root.join("tiny-llama");
    let spec = SynthSpec::tiny_llama();
    write_llama_package(&spec, &dir, &mut |_, _| {}).unwrap();
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        let mut lora = LoraSpec { rank, ..LoraSpec::all_projections(i as u64 + 1) };
        if name == "c" {
            lora.target_modules = vec!["q_proj".into(), "v_proj".into()];
        }
        write_lora_adapter(&spec, &lora, &dir.join("adapters").join(name)).unwrap();
    }
    let yaml = format!(
        "name: tiny-llama\nadapter_cache_mb: {cache_mb}\nadapters:\n  - {{name: a, path: adapters/a}}\n  \
         - {{name: b, path: adapters/b}}\n  - {{name: c, path: adapters/c}}\n"
    );
    std::fs::write(dir.join("hearth.yaml"), yaml).unwrap();
    dir
}

fn start(dir: &Path) -> Engine {
    let package = Package::load(dir).expect("the package loads");
    let config = EngineConfig { kv_cache: KvCacheSize::Bytes(8 << 20), ..EngineConfig::default() };
    Engine::start(&package, config, &Device::Cpu, &|_, _| {}).expect("the engine starts")
}

fn request(adapter: Option<&str>) -> GenerateRequest {
    let sampling = SamplingParams { max_tokens: 10, ignore_eos: true, ..SamplingParams::default() };
    GenerateRequest {
        prompt: Prompt::Text(PROMPT.into()),
        sampling: sampling.validated().unwrap(),
        constraint: None,
        adapter: adapter.map(String::from),
    }
}

async fn run(engine: &Engine, adapter: Option<&str>) -> common::Output {
    common::collect(engine.submit(request(adapter)).unwrap()).await
}

#[tokio::test]
async fn each_request_runs_its_own_adapter_alone_or_batched() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = start(&package(tmp.path(), 8, 64));
    assert_eq!(engine.adapter_names(), ["a", "b", "c"]);
    let plan = [None, Some("a"), Some("b"), Some("c"), Some("a")];
    let mut alone = Vec::new();
    for adapter in plan {
        alone.push(run(&engine, adapter).await.text);
    }
    assert_ne!(alone[0], alone[1], "adapter a changes the output");
    assert_ne!(alone[1], alone[2], "adapters a and b differ");
    let streams: Vec<_> = plan.iter().map(|a| engine.submit(request(*a)).unwrap()).collect();
    for (i, stream) in streams.into_iter().enumerate() {
        let batched = common::collect(stream).await.text;
        assert_eq!(batched, alone[i], "{:?}: output changed beside other adapters", plan[i]);
    }
    engine.shutdown();
}

#[tokio::test]
async fn a_cached_prefix_is_reused_only_under_the_same_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = start(&package(tmp.path(), 8, 64));
    let first = run(&engine, Some("a")).await.usage;
    assert_eq!(first.cached_tokens, 0);
    for other in [Some("b"), None] {
        let usage = run(&engine, other).await.usage;
        assert_eq!(usage.cached_tokens, 0, "{other:?} reused a prefix computed under a");
    }
    let again = run(&engine, Some("a")).await.usage;
    assert!(again.cached_tokens > 0, "a's own prefix is reused: {again:?}");
    engine.shutdown();
}

#[tokio::test]
async fn adapters_load_on_first_use_and_the_least_recent_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    // Rank 64: about 2.3 MB an adapter, so a 3 MiB bound holds one.
    let engine = start(&package(tmp.path(), 64, 3));
    assert_eq!((engine.adapter_stats().declared, engine.adapter_stats().loaded), (3, 0));
    let a1 = run(&engine, Some("a")).await.text;
    run(&engine, Some("b")).await;
    let stats = engine.adapter_stats();
    assert_eq!((stats.loads, stats.evictions, stats.loaded), (2, 1, 1), "{stats:?}");
    assert!(stats.loaded_bytes <= 3 << 20, "{stats:?}");
    // a was dropped; it is read again, and computes what it computed before.
    assert_eq!(run(&engine, Some("a")).await.text, a1);
    assert_eq!(engine.adapter_stats().loads, 3);
    engine.shutdown();
}

#[tokio::test]
async fn unknown_and_unfit_adapters_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = package(tmp.path(), 8, 64);
    let engine = start(&dir);
    match engine.submit(request(Some("zzz"))) {
        Err(SubmitError::Adapter(why)) => {
            assert!(why.contains("`zzz`") && why.contains("a, b, c"), "{why}")
        }
        other => panic!("expected an adapter error, got {:?}", other.map(|_| ())),
    }
    // Registered while running: served at once, base requests unaffected.
    let base = run(&engine, None).await.text;
    let spec = SynthSpec::tiny_llama();
    let late = tmp.path().join("late");
    write_lora_adapter(&spec, &LoraSpec::all_projections(9), &late).unwrap();
    engine.register_adapter("late", late.clone()).unwrap();
    assert_ne!(run(&engine, Some("late")).await.text, base);
    assert_eq!(run(&engine, None).await.text, base);
    // One whose config names a module this model does not have.
    let text = std::fs::read_to_string(late.join("adapter_config.json")).unwrap();
    std::fs::write(late.join("adapter_config.json"), text.replace("\"q_proj\"", "\"c_attn\""))
        .unwrap();
    let err = engine.register_adapter("bad", late.clone()).unwrap_err().to_string();
    assert!(err.contains("`c_attn` is not a projection of this model"), "{err}");
    assert!(!engine.adapter_names().contains(&"bad".to_string()));
    // The package's own adapters are neither replaced nor removed at run time.
    for err in
        [engine.register_adapter("a", late).unwrap_err(), engine.remove_adapter("a").unwrap_err()]
    {
        assert!(matches!(err, AdapterLookupError::Packaged { .. }), "{err}");
    }
    // A removed adapter is no longer served; the rest are.
    engine.remove_adapter("late").unwrap();
    assert!(matches!(engine.submit(request(Some("late"))), Err(SubmitError::Adapter(_))));
    assert!(matches!(engine.remove_adapter("late"), Err(AdapterLookupError::Unknown { .. })));
    assert_eq!(engine.adapter_names(), ["a", "b", "c"]);
    engine.shutdown();
}
