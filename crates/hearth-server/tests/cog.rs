//! The Cog container API against the tiny model.

mod common;

use axum::http::{Method, StatusCode};
use common::*;
use serde_json::{json, Value};

fn small_input() -> Value {
    json!({ "prompt": "Hello", "max_tokens": 6, "temperature": 0, "seed": 1 })
}

#[tokio::test]
async fn index_lists_the_routes_at_root_and_per_model() {
    let app = app();
    let root = get(&app, "/").await;
    assert_eq!(root.status, StatusCode::OK);
    let root = root.json();
    assert_eq!(root["predictions_url"], "/predictions");
    assert_eq!(root["predictions_cancel_url"], "/predictions/{prediction_id}/cancel");
    assert!(root["cog_version"].is_string());

    let named = get(&app, "/cog/tiny-llama").await;
    assert_eq!(named.status, StatusCode::OK);
    assert_eq!(named.json()["openapi_url"], "/cog/tiny-llama/openapi.json");
}

#[tokio::test]
async fn health_check_reports_ready_and_setup_failed() {
    let app = app();
    let health = get(&app, "/health-check").await;
    assert_eq!(health.status, StatusCode::OK);
    let health = health.json();
    assert!(["READY", "BUSY"].contains(&health["status"].as_str().unwrap()), "{health}");
    assert_eq!(health["setup"]["status"], "succeeded");
    assert!(health["setup"]["started_at"].is_string());

    let broken = get(&app, "/cog/broken/health-check").await.json();
    assert_eq!(broken["status"], "SETUP_FAILED");
    assert!(broken["setup"]["logs"].as_str().unwrap().contains("hidden_size"));
}

#[tokio::test]
async fn openapi_describes_inputs_and_iterator_output() {
    let schema = get(&app(), "/openapi.json").await.json();
    let schemas = &schema["components"]["schemas"];
    for name in [
        "Input",
        "Output",
        "PredictionRequest",
        "PredictionResponse",
        "Status",
        "HTTPValidationError",
    ] {
        assert!(schemas[name].is_object(), "missing component {name}");
    }
    let input = &schemas["Input"];
    assert_eq!(input["required"], json!(["prompt"]));
    assert_eq!(input["properties"]["max_tokens"]["maximum"], json!(CONTEXT_LENGTH as f64));
    assert_eq!(input["properties"]["temperature"]["default"], json!(0.7));
    assert_eq!(input["properties"]["stop_sequences"]["type"], "string");
    assert_eq!(schemas["Output"]["x-cog-array-type"], "iterator");
    assert_eq!(schemas["Output"]["x-cog-array-display"], "concatenate");
}

#[tokio::test]
async fn sync_prediction_succeeds_with_metrics() {
    let reply = post(&app(), "/predictions", json!({ "input": small_input() })).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let prediction = reply.json();
    assert_eq!(prediction["status"], "succeeded");
    assert!(prediction["output"].is_array());
    assert_eq!(prediction["error"], Value::Null);
    assert_eq!(prediction["logs"], "");
    for field in ["created_at", "started_at", "completed_at", "id"] {
        assert!(prediction[field].is_string(), "{field} missing: {prediction}");
    }
    let metrics = &prediction["metrics"];
    assert!(metrics["predict_time"].is_f64());
    assert!(metrics["input_token_count"].as_u64().unwrap() > 0);
    let chunks = prediction["output"].as_array().unwrap().len() as u64;
    assert!(metrics["output_token_count"].as_u64().unwrap() >= chunks);
}

#[tokio::test]
async fn per_model_route_predicts_too() {
    let reply =
        post(&app(), "/cog/tiny-llama/predictions", json!({ "input": small_input() })).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["status"], "succeeded");
}

#[tokio::test]
async fn sse_prediction_streams_start_output_completed() {
    let reply = post_with(
        &app(),
        "/predictions",
        &[("accept", "text/event-stream")],
        json!({ "input": { "prompt": "Hi", "max_tokens": 8, "temperature": 0 } }),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let events = sse_events(&reply.text());
    assert_eq!(events.first().and_then(|e| e.0.as_deref()), Some("start"));
    let (last_name, last_data) = events.last().unwrap();
    assert_eq!(last_name.as_deref(), Some("completed"));
    let completed: Value = serde_json::from_str(last_data).unwrap();
    assert_eq!(completed["status"], "succeeded");

    let outputs: Vec<Value> = events
        .iter()
        .filter(|(name, _)| name.as_deref() == Some("output"))
        .map(|(_, data)| serde_json::from_str(data).unwrap())
        .collect();
    for (i, output) in outputs.iter().enumerate() {
        assert_eq!(output["index"], i);
    }
    let streamed: Vec<Value> = outputs.iter().map(|o| o["chunk"].clone()).collect();
    assert_eq!(completed["output"], Value::Array(streamed));
}

#[tokio::test]
async fn idempotent_put_runs_once() {
    let app = app();
    let body = json!({ "input": small_input() });
    let first = put(&app, "/predictions/put-once", body.clone()).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let first = first.json();
    assert_eq!(first["id"], "put-once");
    assert_eq!(first["status"], "succeeded");

    let second = put(&app, "/predictions/put-once", body).await;
    assert_eq!(second.status, StatusCode::OK);
    let second = second.json();
    assert_eq!(second["created_at"], first["created_at"], "the second PUT must not run again");
    assert_eq!(second["output"], first["output"]);
}

#[tokio::test]
async fn repeated_put_with_sse_replays_the_prediction() {
    let app = app();
    let first = put(&app, "/predictions/replay", json!({ "input": small_input() })).await.json();
    let replay = send(
        &app,
        request(
            Method::PUT,
            "/predictions/replay",
            &[("accept", "text/event-stream")],
            json!({ "input": small_input() }).to_string(),
        ),
    )
    .await;
    let events = sse_events(&replay.text());
    assert_eq!(events.first().and_then(|e| e.0.as_deref()), Some("start"));
    let chunks: Vec<Value> = events
        .iter()
        .filter(|(name, _)| name.as_deref() == Some("output"))
        .map(|(_, data)| serde_json::from_str::<Value>(data).unwrap()["chunk"].clone())
        .collect();
    assert_eq!(Value::Array(chunks), first["output"]);
    let (name, data) = events.last().unwrap();
    assert_eq!(name.as_deref(), Some("completed"));
    assert_eq!(serde_json::from_str::<Value>(data).unwrap()["created_at"], first["created_at"]);
}

#[tokio::test]
async fn put_with_a_different_body_id_is_422() {
    let reply =
        put(&app(), "/predictions/url-id", json!({ "id": "body-id", "input": small_input() }))
            .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.json()["detail"][0]["loc"], json!(["body", "id"]));
}

/// Cog answers these with an empty object; Hearth says what is wrong, in FastAPI's shape.
#[tokio::test]
async fn unknown_and_undecodable_prediction_ids_are_named_in_the_error() {
    let reply = post(&app(), "/predictions/nope/cancel", json!({})).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.json()["detail"].as_str().unwrap().contains("`nope`"), "{}", reply.text());
    let body = json!({ "input": small_input() }).to_string();
    let reply = send(&app(), request(Method::PUT, "/predictions/%ff%fe", &[], body)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    assert!(reply.json()["detail"].as_str().unwrap().contains("prediction id"));
}

/// Each bad input gets a 422 whose `loc` names the field.
#[tokio::test]
async fn bad_inputs_are_422_naming_the_field() {
    let app = app();
    let long_prompt = "word ".repeat(CONTEXT_LENGTH * 2);
    let cases = [
        (json!({ "prompt": "hi", "bogus": 1 }), "bogus"),
        (json!({ "prompt": 42 }), "prompt"),
        (json!({ "prompt": "hi", "temperature": "hot" }), "temperature"),
        (json!({ "prompt": "hi", "max_tokens": 0 }), "max_tokens"),
        (json!({ "prompt": "hi", "top_p": 1.5 }), "top_p"),
        (json!({ "prompt": "hi", "top_k": 2.5 }), "top_k"),
        (json!({ "prompt": "hi", "min_tokens": 3 }), "min_tokens"),
        (json!({ "prompt": "hi", "seed": -1 }), "seed"),
        (json!({ "system_prompt": "be nice" }), "prompt"),
        (json!({ "prompt": long_prompt }), "prompt"),
    ];
    for (input, field) in cases {
        let missing = input.get(field).is_none() && field == "prompt";
        let reply = post(&app, "/predictions", json!({ "input": input })).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {}", reply.text());
        let body = reply.json();
        let detail = &body["detail"][0];
        assert_eq!(detail["loc"], json!(["body", "input", field]), "{body}");
        // Cog's (pydantic's) type for an absent required field.
        let kind = if missing { "value_error.missing" } else { "value_error" };
        assert_eq!(detail["type"], kind, "{body}");
        assert!(detail["msg"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

/// As Cog's server: a body that is not JSON is a 400, JSON of the wrong shape a 422; both name
/// the place in `detail[0].loc`.
#[tokio::test]
async fn malformed_bodies_get_json_errors_with_cogs_statuses() {
    let app = app();
    let cases: [(&str, StatusCode, &[&str]); 4] = [
        ("{not json", StatusCode::BAD_REQUEST, &["body"]),
        ("[1, 2]", StatusCode::UNPROCESSABLE_ENTITY, &["body"]),
        (r#"{"input": "a string"}"#, StatusCode::UNPROCESSABLE_ENTITY, &["body", "input"]),
        (
            r#"{"input": {"prompt": "hi"}, "webhook": "ftp://x"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            &["body", "webhook"],
        ),
    ];
    for (body, status, loc) in cases {
        let reply = send(&app, request(Method::POST, "/predictions", &[], body)).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.text());
        assert_eq!(reply.json()["detail"][0]["loc"], json!(loc), "{body}");
    }
    // A body declared as something else than JSON is refused without being parsed.
    let body = json!({ "input": small_input() }).to_string();
    let mut plain_request = request(Method::POST, "/predictions", &[], body);
    plain_request.headers_mut().insert("content-type", "text/plain".parse().unwrap());
    let reply = send(&app, plain_request).await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", reply.text());
}

/// `/cog/{model}/` is the model's index, as `/` is the default model's.
#[tokio::test]
async fn a_model_index_answers_with_a_trailing_slash() {
    let app = app();
    let with_slash = get(&app, &format!("/cog/{MODEL}/")).await;
    assert_eq!(with_slash.status, StatusCode::OK, "{}", with_slash.text());
    assert_eq!(with_slash.json(), get(&app, &format!("/cog/{MODEL}")).await.json());
}

#[tokio::test]
async fn unknown_model_and_failed_model() {
    let app = app();
    let unknown = post(&app, "/cog/nope/predictions", json!({ "input": small_input() })).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let unknown = unknown.json();
    assert!(unknown["error"].as_str().unwrap().contains("nope"));
    assert_eq!(unknown["models"], json!([MODEL]));

    let failed = post(&app, "/cog/broken/predictions", json!({ "input": small_input() })).await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(failed.json()["error"].as_str().unwrap().contains("hidden_size"));
}

#[tokio::test]
async fn root_routes_without_a_default_model_name_the_models() {
    let model = shared_model();
    let mut catalog = hearth_gateway::Catalog::new();
    catalog.insert_ready("a".to_owned(), model.clone());
    catalog.insert_ready("b".to_owned(), model);
    catalog.set_default(None);
    let (_, app) = app_with(catalog, test_config());
    for reply in
        [get(&app, "/").await, post(&app, "/predictions", json!({ "input": small_input() })).await]
    {
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(reply.json()["models"], json!(["a", "b"]));
    }
    assert_eq!(
        post(&app, "/cog/b/predictions", json!({ "input": small_input() })).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn oversized_body_is_413_json() {
    let mut config = test_config();
    config.max_body_bytes = 1024;
    let (_, app) = app_with(catalog_with(shared_model()), config);
    let big = json!({ "input": { "prompt": "x".repeat(4096) } });
    let reply = post(&app, "/predictions", big).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.json()["detail"][0]["loc"], json!(["body"]));
}

#[tokio::test]
async fn shutdown_route_is_refused_unless_enabled() {
    let reply = post(&app(), "/shutdown", json!({})).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.json()["error"].is_string());
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = app();
    let missing = get(&app, "/nowhere").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.json()["error"].is_string());
    let wrong_method = get(&app, "/predictions").await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(wrong_method.json()["error"].is_string());
}

/// A Cog prediction and a completion are gateway runs like a chat request: each answer names
/// its run, the run has one ledger record with the tokens the answer reports, and usage
/// counts both.
#[tokio::test]
async fn predictions_and_completions_are_runs_with_one_ledger_record_each() {
    let (state, app) = app_with(catalog_with(shared_model()), test_config());
    let input = json!({ "input": { "prompt": "Hello", "max_tokens": 6, "temperature": 0 } });
    let prediction = post(&app, "/predictions", input).await;
    assert_eq!(prediction.status, StatusCode::OK, "{}", prediction.text());
    let completion = post(
        &app,
        "/v1/completions",
        json!({ "model": MODEL, "prompt": "Hello", "max_tokens": 5, "ignore_eos": true }),
    )
    .await;
    assert_eq!(completion.status, StatusCode::OK, "{}", completion.text());
    state.gateway().wait_idle().await;

    let ledger = state.gateway().ledger();
    let run_id = prediction.header("x-hearth-run-id");
    assert!(run_id.starts_with("run_"), "{:?}", prediction.headers);
    assert_eq!(prediction.header("x-hearth-route"), "local/tiny-llama");
    let record = ledger.get(run_id).await.unwrap().expect("the prediction's ledger record");
    let metrics = &prediction.json()["metrics"];
    assert_eq!(record.output_tokens, metrics["output_token_count"].as_u64().unwrap());
    assert_eq!(record.input_tokens, metrics["input_token_count"].as_u64().unwrap());
    // The prediction's clock starts before its run does, so it covers the run's first token.
    let ttft = record.ttft_ms.expect("the run had a first token") as f64 / 1000.0;
    assert!(metrics["predict_time"].as_f64().unwrap() >= ttft, "{metrics} vs ttft {ttft}");

    let run_id = completion.header("x-hearth-run-id");
    let record = ledger.get(run_id).await.unwrap().expect("the completion's ledger record");
    assert_eq!(record.output_tokens, 5);
    assert_eq!(completion.json()["id"], format!("cmpl-{}", &run_id["run_".len()..]));

    let usage = get(&app, "/v1/usage").await.json();
    assert_eq!(usage["data"][0]["requests"], 2, "{usage}");
}

/// A value the Cog schema allows is served: the gateway checks sampling values by the same
/// rules as the engine (a temperature of 3 is within Cog's maximum of 5, though above OpenAI's 2).
#[tokio::test]
async fn a_temperature_the_schema_allows_is_served() {
    let input =
        json!({ "input": { "prompt": "Hi", "max_tokens": 4, "temperature": 3.0, "seed": 5 } });
    let reply = post(&app(), "/predictions", input).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["status"], "succeeded", "{}", reply.text());
    let too_hot = json!({ "input": { "prompt": "Hi", "temperature": 6.0 } });
    assert_eq!(
        post(&app(), "/predictions", too_hot).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
}
