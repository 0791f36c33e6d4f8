//! Package loading end to end: a synthesized good package, then one broken copy per failure.

use std::path::{Path, PathBuf};

use hearth_protocol::{ChatMessage, Conversation, Role};
use tempfile::TempDir;

use crate::synth::{write_llama_package, SynthSpec};
use crate::{discover, Package, PackageError};

/// A freshly written tiny package in a directory called `name`. Each test writes its own (a
/// fraction of a second) so that every temporary directory is removed when the test ends.
fn copy_named(name: &str) -> (TempDir, PathBuf) {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join(name);
    write_llama_package(&SynthSpec::tiny_llama(), &dir, &mut |_, _| {}).unwrap();
    (tmp, dir)
}

fn copy() -> (TempDir, PathBuf) {
    copy_named("tiny-llama")
}

fn load_error(dir: &Path) -> String {
    match Package::load(dir) {
        Ok(package) => panic!("expected {} to fail, loaded {}", dir.display(), package.name),
        Err(e) => e.to_string(),
    }
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(path, serde_json::to_string(&value).unwrap()).unwrap();
}

#[test]
fn tiny_llama_loads_and_renders() {
    let (_tmp, dir) = copy();
    let package = Package::load(&dir).unwrap();
    let spec = SynthSpec::tiny_llama();
    assert_eq!(package.name, "tiny-llama");
    assert_eq!(package.model.architecture, "LlamaForCausalLM");
    assert_eq!(package.model.vocab_size, 512);
    assert_eq!(package.tokenizer.get_vocab_size(true), 512);
    assert_eq!(package.context_length(), 2048);
    assert_eq!(package.cog.predictor(), Some("predict.py:Predictor"));
    assert_eq!(package.cog.max_concurrency(), Some(16));
    assert_eq!(package.special_tokens.bos_token_id, Some(1));
    assert_eq!(package.special_tokens.eos_token_ids, [2, 0]);
    assert!(!package.special_tokens.add_bos_token);
    package.weights.check(&spec.tensor_shapes()).unwrap();
    let norm = package.weights.data("model.norm.weight").unwrap();
    assert_eq!(norm.len(), 128 * 4);
    assert_eq!(&norm[..4], &1.0f32.to_le_bytes());

    let messages = Conversation::new(vec![
        ChatMessage::new(Role::System, "Be kind."),
        ChatMessage::new(Role::User, "Hi!"),
    ]);
    let text = package.chat_template.as_ref().unwrap().render(&messages, true).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = package.tokenizer.encode(text.as_str(), false).unwrap();
    assert_eq!(package.tokenizer.decode(ids.get_ids(), false).unwrap(), text);
}

#[test]
fn writing_is_deterministic() {
    let (tmp, first) = copy();
    let again = tmp.path().join("again");
    let mut last = (0, 0);
    write_llama_package(&SynthSpec::tiny_llama(), &again, &mut |done, total| last = (done, total))
        .unwrap();
    assert_eq!(last.0, last.1);
    assert_eq!(last.0 as u64, std::fs::metadata(again.join("model.safetensors")).unwrap().len());
    let mut names: Vec<_> =
        std::fs::read_dir(&first).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    for name in names {
        let a = std::fs::read(first.join(&name)).unwrap();
        let b = std::fs::read(again.join(&name)).unwrap();
        assert!(a == b, "{name:?} differs between two writes");
    }
}

#[test]
fn sharded_packages_load_with_the_same_values() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("sharded");
    let spec = SynthSpec { max_shard_bytes: Some(1_000_000), ..SynthSpec::tiny_llama() };
    write_llama_package(&spec, &dir, &mut |_, _| {}).unwrap();
    let sharded = Package::load(&dir).unwrap();
    assert!(sharded.weights.files().len() > 1);
    sharded.weights.check(&spec.tensor_shapes()).unwrap();
    let (_tmp, single) = copy();
    let single = Package::load(&single).unwrap();
    for name in single.weights.names() {
        assert_eq!(single.weights.data(name), sharded.weights.data(name), "{name}");
    }
}

#[test]
fn truncated_weights_are_reported_with_sizes() {
    let (_tmp, dir) = copy();
    let path = dir.join("model.safetensors");
    let len = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len - 1000).unwrap();
    let message = load_error(&dir);
    let shapes = SynthSpec::tiny_llama().tensor_shapes();
    let expected: usize = shapes.iter().map(|(_, shape)| shape.iter().product::<usize>() * 4).sum();
    assert_eq!(
        message,
        format!(
            "model.safetensors is truncated: header says {expected} bytes of data, file has {}",
            expected - 1000
        )
    );
}

#[test]
fn corrupt_headers_and_trailing_bytes_are_refused() {
    let (_tmp, dir) = copy();
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..16].copy_from_slice(b"garbage!");
    std::fs::write(&path, &bytes).unwrap();
    assert!(load_error(&dir).starts_with("model.safetensors: corrupt safetensors file"));

    let (_tmp, dir) = copy();
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&[0; 12]);
    std::fs::write(&path, &bytes).unwrap();
    assert!(load_error(&dir).ends_with("12 bytes follow the last tensor's data"));

    std::fs::write(&path, b"tiny").unwrap();
    assert!(load_error(&dir).starts_with("model.safetensors: corrupt safetensors file"));
}

#[test]
fn missing_files_are_named() {
    for (file, expected) in [
        ("tokenizer.json", "tokenizer.json is missing"),
        ("config.json", "config.json is missing"),
        ("model.safetensors", "model.safetensors is missing"),
        ("cog.yaml", "cog.yaml is missing"),
    ] {
        let (_tmp, dir) = copy();
        std::fs::remove_file(dir.join(file)).unwrap();
        let message = load_error(&dir);
        assert!(message.starts_with(expected), "{message}");
    }
    // Optional files really are optional.
    let (_tmp, dir) = copy();
    std::fs::remove_file(dir.join("generation_config.json")).unwrap();
    std::fs::remove_file(dir.join("tokenizer_config.json")).unwrap();
    let package = Package::load(&dir).unwrap();
    assert!(package.chat_template.is_none());
    assert_eq!(package.special_tokens.eos_token_ids, [2]);
}

#[test]
fn bad_config_json_is_refused() {
    let (_tmp, dir) = copy();
    edit_json(&dir.join("config.json"), |v| {
        v["architectures"] = serde_json::json!(["GPT2LMHeadModel"])
    });
    assert!(load_error(&dir).starts_with("config.json: unsupported architecture `GPT2LMHeadModel`"));

    edit_json(&dir.join("config.json"), |v| {
        v.as_object_mut().unwrap().remove("architectures");
    });
    assert_eq!(load_error(&dir), "config.json: missing field `architectures`");

    std::fs::write(dir.join("config.json"), "not json").unwrap();
    assert!(load_error(&dir).starts_with("config.json: expected"));
}

#[test]
fn tokenizer_problems_are_refused() {
    let (_tmp, dir) = copy();
    std::fs::write(dir.join("tokenizer.json"), "{\"model\": 3}").unwrap();
    assert!(load_error(&dir).starts_with("tokenizer.json does not parse"));

    let (_tmp, dir) = copy();
    edit_json(&dir.join("config.json"), |v| v["vocab_size"] = 100.into());
    assert!(load_error(&dir).contains("`vocab_size` is 100, but tokenizer.json has 512 tokens"));

    let (_tmp, dir) = copy();
    edit_json(&dir.join("tokenizer_config.json"), |v| v["eos_token"] = "<|nope|>".into());
    assert_eq!(
        load_error(&dir),
        "tokenizer_config.json: special token `<|nope|>` is not in tokenizer.json's vocabulary"
    );
}

#[test]
fn chat_template_that_does_not_compile_is_refused() {
    let (_tmp, dir) = copy();
    edit_json(&dir.join("tokenizer_config.json"), |v| {
        v["chat_template"] = "{% for m in messages %}{{ m.content }}".into();
    });
    assert!(load_error(&dir).starts_with("tokenizer_config.json: chat_template does not compile"));
}

#[test]
fn weights_check_reports_shapes_and_names() {
    let (_tmp, dir) = copy();
    let package = Package::load(&dir).unwrap();
    let mut expected = SynthSpec::tiny_llama().tensor_shapes();
    let q = "model.layers.0.self_attn.q_proj.weight";
    expected.iter_mut().find(|(name, _)| name == q).unwrap().1 = vec![128, 64];
    expected.push(("model.extra.weight".to_string(), vec![1]));
    expected.retain(|(name, _)| name != "lm_head.weight");
    let message = package.weights.check(&expected).unwrap_err().to_string();
    assert_eq!(
        message,
        format!(
            "weights do not match the model: tensor `{q}` has shape [128, 128], expected \
             [128, 64]; missing tensor `model.extra.weight`; unexpected tensor `lm_head.weight`"
        )
    );
    package.weights.check_allowing(&expected[..expected.len() - 1], &["lm_head."]).unwrap_err();
    let without_q: Vec<_> = SynthSpec::tiny_llama()
        .tensor_shapes()
        .into_iter()
        .filter(|(name, _)| name != "lm_head.weight")
        .collect();
    package.weights.check_allowing(&without_q, &["lm_head."]).unwrap();
}

/// A two-shard copy of the tiny package.
fn sharded_copy() -> (TempDir, PathBuf) {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("sharded");
    let spec = SynthSpec { max_shard_bytes: Some(2_000_000), ..SynthSpec::tiny_llama() };
    write_llama_package(&spec, &dir, &mut |_, _| {}).unwrap();
    (tmp, dir)
}

#[test]
fn shard_index_problems_are_refused() {
    let (_tmp, dir) = sharded_copy();
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    assert_eq!(
        load_error(&dir),
        "model.safetensors.index.json: names `model-00002-of-00002.safetensors`, which does not exist"
    );

    let (_tmp, dir) = sharded_copy();
    let index = dir.join("model.safetensors.index.json");
    edit_json(&index, |v| {
        v["weight_map"]["lm_head.weight"] = "model-00001-of-00002.safetensors".into()
    });
    assert_eq!(
        load_error(&dir),
        "model.safetensors.index.json: lists tensor `lm_head.weight` in \
         `model-00001-of-00002.safetensors`, but it is in `model-00002-of-00002.safetensors`"
    );

    edit_json(&index, |v| {
        v["weight_map"].as_object_mut().unwrap().remove("lm_head.weight");
    });
    assert!(load_error(&dir).contains("does not list tensor `lm_head.weight`"));

    edit_json(&index, |v| v["weight_map"]["x"] = "../model-00001-of-00002.safetensors".into());
    assert!(load_error(&dir).contains("must be a .safetensors file name, with no path"));
}

#[test]
fn package_files_are_validated_in_place() {
    let (_tmp, dir) = copy();
    std::fs::write(dir.join("cog.yaml"), "predict: a.py:A\nrun: a.py:A\n").unwrap();
    assert!(load_error(&dir).starts_with("cog.yaml: `predict` cannot be set together with `run`"));

    let (_tmp, dir) = copy();
    std::fs::write(dir.join("hearth.yaml"), "context_length: 4096\n").unwrap();
    assert!(load_error(&dir).contains("more than config.json's max_position_embeddings (2048)"));

    std::fs::write(dir.join("hearth.yaml"), "context_length: 1024\nname: renamed\n").unwrap();
    let package = Package::load(&dir).unwrap();
    assert_eq!((package.name.as_str(), package.context_length()), ("renamed", 1024));
}

#[test]
fn package_names_are_validated() {
    let (_tmp, dir) = copy_named("Tiny Llama");
    let message = load_error(&dir);
    assert!(
        message.starts_with("package name `Tiny Llama` (from the directory name)"),
        "{message}"
    );

    let cog = std::fs::read_to_string(dir.join("cog.yaml")).unwrap();
    std::fs::write(dir.join("cog.yaml"), format!("{cog}model: r8.im/hearth/tiny-chat\n")).unwrap();
    assert_eq!(Package::load(&dir).unwrap().name, "tiny-chat");
}

#[test]
fn discover_finds_package_directories_in_order() {
    let tmp = TempDir::new().unwrap();
    for (name, with_cog) in [("b", true), ("a", true), ("no-cog", false), (".hidden", true)] {
        std::fs::create_dir(tmp.path().join(name)).unwrap();
        if with_cog {
            std::fs::write(tmp.path().join(name).join("cog.yaml"), "build: {}\n").unwrap();
        }
    }
    std::fs::write(tmp.path().join("cog.yaml"), "").unwrap();
    let found = discover(tmp.path()).unwrap();
    assert_eq!(found, [tmp.path().join("a"), tmp.path().join("b")]);
    assert!(matches!(discover(&tmp.path().join("absent")), Err(PackageError::Io { .. })));
}

#[test]
fn half_precision_packages_store_half_precision() {
    use crate::{DType, TensorDtype};
    for (dtype, stored, one) in [
        (DType::Bf16, TensorDtype::BF16, half::bf16::ONE.to_le_bytes()),
        (DType::F16, TensorDtype::F16, half::f16::ONE.to_le_bytes()),
    ] {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path().join("half");
        let spec = SynthSpec { dtype, ..SynthSpec::tiny_llama() };
        write_llama_package(&spec, &dir, &mut |_, _| {}).unwrap();
        let package = Package::load(&dir).unwrap();
        let norm = package.weights.tensor("model.norm.weight").unwrap();
        assert_eq!(norm.dtype, stored);
        assert_eq!(&package.weights.data("model.norm.weight").unwrap()[..2], &one);
        assert_eq!(package.model.raw["torch_dtype"], dtype.torch_name());
    }
}

#[test]
fn packages_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Package>();
}
