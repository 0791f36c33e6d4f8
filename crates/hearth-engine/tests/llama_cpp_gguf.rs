//! GGUF files written by llama.cpp itself: the families' parity checkpoints converted by
//! its `convert_hf_to_gguf.py` (f16, q8_0) and quantized by its quantizer (q4_1, q4_k_m), kept in
//! `tests/fixtures/<family>/llama-cpp/` (made by `scripts/make_llama_cpp_fixtures.py parity`).
//! Each file is checked against the logits llama.cpp computes from it (`logits.safetensors`,
//! beside the files), and against the `transformers` reference logits that the safetensors path
//! matches to 1e-4 (tests/parity.rs).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use hearth_engine::loading::weights::{GgufWeights, WeightSource};
use hearth_engine::models::llama::{Llama, LlamaConfig};
use hearth_package::Package;

mod parity_support;
use parity_support::{against_reference, compare, config, fixture_dir, logits, reference};

/// The families whose fixtures hold llama.cpp's own conversions (`llama-cpp/`, made by
/// `scripts/make_llama_cpp_fixtures.py parity`). Not Qwen2-MoE: its fixture has a dense layer
/// (`mlp_only_layers`), which llama.cpp's converter cannot write.
const LLAMA_CPP_FAMILIES: [&str; 9] =
    ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "mixtral", "qwen3_moe"];

/// Families llama.cpp runs differently from `transformers` on purpose, so that its logits are
/// no target: Phi-3, whose sliding window llama.cpp turns off ("Phi SWA is currently
/// disabled") and whose LongRoPE factors it picks by the context size rather than by the
/// sequence's length (its logits are 1.0 away from transformers' on this fixture, Hearth's from
/// the same f16 file 1.1e-3 with config.json).
const NOT_LIKE_LLAMA_CPP: [&str; 1] = ["phi3"];

/// The largest relative error against llama.cpp for `family`'s `file`. Mixtral's top-2 routing
/// turns a near-tie between two experts into a different expert under another rounding: on the
/// f16 file its worst row differs by 3.5e-2 (1.1e-2 of the largest logit) while every other
/// row stays at the dense families' 1e-3 to 3e-3 (measured per row), so Mixtral gets the room
/// of such a row.
fn max_err(family: &str, file: &str, dense: f32) -> f32 {
    match (family, file) {
        ("mixtral", "f16") => 4e-2,
        ("mixtral", _) => 6e-2,
        _ => dense,
    }
}

/// The file types, each with the largest relative error Hearth's logits may show against
/// llama.cpp's on the same file (max |Hearth − llama.cpp| / max |llama.cpp| over every row).
/// Measured on these fixtures, worst family but Mixtral: f16 1.4e-3, q8_0 2.5e-2, q4_1 3.5e-2,
/// q4_k_m 2.4e-2. llama.cpp keeps its KV cache in f16 and quantizes activations its own way per type
/// (q8_0, q8_1 or q8_K blocks; Hearth: q8_0 blocks of 32 with half sums), and these tiny random
/// models amplify every rounding; a wrong RoPE row order measures 5.9e-1.
const FILES: [(&str, f32); 4] = [("f16", 2e-3), ("q8_0", 4e-2), ("q4_1", 4e-2), ("q4_k_m", 4e-2)];

fn gguf(family: &str, file: &str) -> PathBuf {
    fixture_dir(family).join("llama-cpp").join(format!("model-{file}.gguf"))
}

fn load(path: &Path, cfg: &LlamaConfig) -> Llama {
    let weights = GgufWeights::open(path, cfg, DType::F32, &Device::Cpu).unwrap();
    Llama::load(cfg, WeightSource::gguf(weights)).unwrap()
}

/// The configuration a GGUF-only package derives from the file.
fn derived_config(path: &Path) -> LlamaConfig {
    let package = Package::load_gguf_file(path).unwrap();
    LlamaConfig::from_value(&package.model.raw).unwrap()
}

/// What llama.cpp computed from `file` for reference sequence `i`.
fn llama_cpp_logits(family: &str, file: &str, i: usize) -> Tensor {
    let path = fixture_dir(family).join("llama-cpp/logits.safetensors");
    let mut all = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    all.remove(&format!("{file}.{i}")).unwrap_or_else(|| panic!("{family}: no {file}.{i}"))
}

/// Served alone, as `hearth serve FILE` serves it, each file computes what llama.cpp computes
/// from it. That includes Llama 3.1 RoPE scaling (the llama fixture), which the converter
/// stores as the tensor `rope_freqs.weight` and the derived config does not name, and Mistral
/// without its sliding window, which the converter does not write and llama.cpp does not apply.
#[test]
fn each_file_served_alone_computes_what_llama_cpp_computes() {
    for family in LLAMA_CPP_FAMILIES.into_iter().filter(|f| !NOT_LIKE_LLAMA_CPP.contains(f)) {
        for (file, dense_max_err) in FILES {
            let max_err = max_err(family, file, dense_max_err);
            let path = gguf(family, file);
            let cfg = derived_config(&path);
            let model = load(&path, &cfg);
            let (mut worst, mut agree) = (0f32, 1f32);
            for (i, (ids, _)) in reference(&fixture_dir(family)).into_iter().enumerate() {
                let theirs = llama_cpp_logits(family, file, i);
                let (err, same) = compare(&logits(&model, &cfg, &ids).unwrap(), &theirs);
                (worst, agree) = (worst.max(err), agree.min(same));
            }
            println!("{family:8} {file:7} vs llama.cpp: rel err {worst:.3e}, argmax {agree:.2}");
            assert!(worst <= max_err, "{family} {file}: rel err {worst:.3e} > {max_err:e}");
        }
    }
}

/// Beside the checkpoint's config.json (Mistral's sliding window included), each file is at
/// least as close to the `transformers` reference as llama.cpp gets from it (within 25 %:
/// measured at most 1.17× llama.cpp's error, q8_0 on qwen3, and below it for most files). For
/// Mistral, Mixtral and Phi-3 far below, as llama.cpp runs them without their sliding window
/// (llama.cpp 1.0–1.3 from the reference, Hearth's f16 files 1e-3 to 7e-3); for Gemma 2 and 3
/// too (llama.cpp 0.18 and 0.52, Hearth 8e-4 and 1.2e-3). On these tiny random models 4-bit
/// files are far from the reference either way (llama.cpp: 0.15–0.35, Mixtral's 1.4).
#[test]
fn with_config_json_each_file_is_as_close_to_the_reference_as_llama_cpp_is() {
    for family in LLAMA_CPP_FAMILIES {
        let cfg = config(&fixture_dir(family));
        for (file, _) in FILES {
            let model = load(&gguf(family, file), &cfg);
            let (ours, _) = against_reference(family, file, &model, &cfg);
            let theirs = reference(&fixture_dir(family))
                .iter()
                .enumerate()
                .map(|(i, (_, want))| compare(&llama_cpp_logits(family, file, i), want).0)
                .fold(0f32, f32::max);
            println!("{family:8} {file:7} llama.cpp's rel err {theirs:.3e}");
            assert!(ours <= 1.25 * theirs + 1e-3, "{family} {file}: {ours:.3e} vs {theirs:.3e}");
            // Where llama.cpp itself is far from the reference (it drops a sliding window),
            // the bound above says little; these hold Hearth to its own measured closeness
            // (worst: f16 6.9e-3, q8_0 1.6e-1, both Mixtral's).
            let cap = match file {
                "f16" => 1e-2,
                "q8_0" => 2e-1,
                _ => f32::INFINITY,
            };
            assert!(ours <= cap, "{family} {file}: {ours:.3e} from the reference");
        }
    }
}

/// The configuration derived from the file alone has the checkpoint's shape.
#[test]
fn configuration_derived_from_the_file_alone_matches_the_checkpoint() {
    for family in LLAMA_CPP_FAMILIES {
        let derived = derived_config(&gguf(family, "f16"));
        let original = config(&fixture_dir(family));
        assert_eq!(derived.hidden_size, original.hidden_size, "{family}");
        assert_eq!(derived.intermediate_size, original.intermediate_size, "{family}");
        assert_eq!(derived.num_hidden_layers, original.num_hidden_layers, "{family}");
        assert_eq!(derived.num_attention_heads, original.num_attention_heads, "{family}");
        assert_eq!(derived.num_key_value_heads(), original.num_key_value_heads(), "{family}");
        assert_eq!(derived.head_dim(), original.head_dim(), "{family}");
        assert_eq!(derived.vocab_size, original.vocab_size, "{family}");
        assert_eq!(derived.tie_word_embeddings(), original.tie_word_embeddings(), "{family}");
    }
}
