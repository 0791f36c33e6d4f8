//! Cog's container API, driven over HTTP against the real binary.

mod common;

use common::{parse_sse, tiny_llama, Daemon};
use serde_json::{json, Value};

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(300))
        .build()
        .unwrap()
}

fn serve_tiny() -> Daemon {
    Daemon::start(&["--model", tiny_llama().to_str().unwrap()])
}

#[test]
fn index_health_check_and_schema() {
    let daemon = serve_tiny();
    let index: Value = client().get(daemon.url("/")).send().unwrap().json().unwrap();
    assert_eq!(index["predictions_url"], "/predictions");
    let health: Value = client().get(daemon.url("/health-check")).send().unwrap().json().unwrap();
    assert_eq!(health["status"], "READY", "{health}");
    assert_eq!(health["setup"]["status"], "succeeded", "{health}");

    let schema: Value = client().get(daemon.url("/openapi.json")).send().unwrap().json().unwrap();
    let input = &schema["components"]["schemas"]["Input"]["properties"];
    for field in [
        "prompt",
        "system_prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "seed",
    ] {
        assert!(input.get(field).is_some(), "schema lacks input `{field}`: {input}");
    }
    let output = &schema["components"]["schemas"]["Output"];
    assert_eq!(output["x-cog-array-type"], "iterator");
    assert_eq!(output["x-cog-array-display"], "concatenate");

    // The same routes answer per model.
    let per_model: Value =
        client().get(daemon.url("/cog/tiny-llama/health-check")).send().unwrap().json().unwrap();
    assert_eq!(per_model["status"], "READY");
}

#[test]
fn sync_prediction_and_sse_prediction_agree() {
    let daemon = serve_tiny();
    let input = json!({"input": {"prompt": "Write a haiku", "max_tokens": 20, "temperature": 0}});
    let sync: Value =
        client().post(daemon.url("/predictions")).json(&input).send().unwrap().json().unwrap();
    assert_eq!(sync["status"], "succeeded", "{sync}");
    let output: String =
        sync["output"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert!(!output.is_empty(), "a comparison of empty outputs shows nothing: {sync}");
    assert!(sync["metrics"]["predict_time"].as_f64().is_some(), "{sync}");

    let resp = client()
        .post(daemon.url("/cog/tiny-llama/predictions"))
        .header("accept", "text/event-stream")
        .json(&input)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let events = parse_sse(&resp.text().unwrap());
    assert_eq!(events.first().map(|(e, _)| e.as_str()), Some("start"));
    assert_eq!(events.last().map(|(e, _)| e.as_str()), Some("completed"));
    let streamed: String = events
        .iter()
        .filter(|(e, _)| e == "output")
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).unwrap()["chunk"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(streamed, output);
    let completed: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    assert_eq!(completed["status"], "succeeded");
}

#[test]
fn idempotent_put_and_cancel() {
    let daemon = serve_tiny();
    let body = json!({"input": {"prompt": "Count", "max_tokens": 6, "temperature": 0}});
    let put = || {
        let resp = client().put(daemon.url("/predictions/abc123")).json(&body).send().unwrap();
        (resp.status().as_u16(), resp.json::<Value>().unwrap())
    };
    let (status, first) = put();
    assert_eq!(
        (status, &first["id"], &first["status"]),
        (200, &json!("abc123"), &json!("succeeded"))
    );
    assert!(first["output"].as_array().is_some_and(|o| !o.is_empty()), "{first}");
    // The same id again is the same prediction, answered again, not run a second time.
    let (status, again) = put();
    assert_eq!(
        (status, &again["id"], &again["status"]),
        (200, &json!("abc123"), &json!("succeeded"))
    );
    assert_eq!(again["output"], first["output"]);
    assert_eq!(again["created_at"], first["created_at"], "run once: {again}");

    let mismatch = client()
        .put(daemon.url("/predictions/abc124"))
        .json(&json!({"id": "other", "input": {"prompt": "x"}}))
        .send()
        .unwrap();
    assert_eq!(mismatch.status(), 422);

    let unknown = client().post(daemon.url("/predictions/nope/cancel")).send().unwrap();
    assert_eq!(unknown.status(), 404);

    // An async prediction long enough to still be running, then cancelled.
    let started = client()
        .post(daemon.url("/predictions"))
        .header("prefer", "respond-async")
        .json(&json!({"id": "long1", "input": {"prompt": "Go on", "max_tokens": 1900, "temperature": 0}}))
        .send()
        .unwrap();
    assert_eq!(started.status(), 202);
    let cancel = client().post(daemon.url("/predictions/long1/cancel")).send().unwrap();
    assert_eq!(cancel.status(), 200);
}

#[test]
fn bad_cog_inputs_get_422_naming_the_field() {
    let daemon = serve_tiny();
    let cases = [
        (json!({"input": {"prompt": "x", "temperature": "hot"}}), "temperature"),
        (json!({"input": {"prompt": "x", "max_tokens": 0}}), "max_tokens"),
        (json!({"input": {"prompt": "x", "bogus": 1}}), "bogus"),
        (json!({"input": {}}), "prompt"),
    ];
    for (body, field) in cases {
        let resp = client().post(daemon.url("/predictions")).json(&body).send().unwrap();
        assert_eq!(resp.status(), 422, "{body}");
        let v: Value = resp.json().unwrap();
        let locs: Vec<String> =
            v["detail"].as_array().unwrap().iter().map(|d| d["loc"].to_string()).collect();
        assert!(locs.iter().any(|l| l.contains(field)), "{field} not named in {v}");
    }
}
