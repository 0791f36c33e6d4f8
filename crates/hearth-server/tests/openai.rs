//! The OpenAI-compatible API against the tiny model.

mod common;

use axum::http::{Method, StatusCode};
use common::*;
use serde_json::{json, Value};

fn chat_body() -> Value {
    json!({
        "model": MODEL,
        "messages": [
            { "role": "system", "content": "You are terse." },
            { "role": "user", "content": [{ "type": "text", "text": "Hello" }] },
        ],
        "max_tokens": 6,
        "temperature": 0,
    })
}

/// `data:` payloads of an OpenAI stream, parsed; `[DONE]` stays a string.
fn stream_payloads(text: &str) -> Vec<Value> {
    sse_events(text)
        .into_iter()
        .map(|(_, data)| serde_json::from_str(&data).unwrap_or(Value::String(data)))
        .collect()
}

#[tokio::test]
async fn chat_completion_with_usage() {
    let reply = post(&app(), "/v1/chat/completions", chat_body()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["message"]["content"].is_string());
    assert!(["stop", "length"].contains(&choice["finish_reason"].as_str().unwrap()));
    let usage = &body["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(usage["completion_tokens"].as_u64().unwrap() <= 6);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    assert!(usage["prompt_tokens_details"]["cached_tokens"].is_u64());
}

#[tokio::test]
async fn chat_stream_framing() {
    let mut body = chat_body();
    body["stream"] = json!(true);
    body["stream_options"] = json!({ "include_usage": true });
    let reply = post(&app(), "/v1/chat/completions", body).await;
    assert_eq!(reply.status, StatusCode::OK);
    let payloads = stream_payloads(&reply.text());
    let n = payloads.len();
    assert!(n >= 4, "{payloads:?}");
    assert_eq!(payloads[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(payloads[0]["object"], "chat.completion.chunk");
    assert_eq!(payloads[n - 1], json!("[DONE]"));
    let usage_chunk = &payloads[n - 2];
    assert_eq!(usage_chunk["choices"], json!([]));
    assert!(usage_chunk["usage"]["completion_tokens"].is_u64());
    let finish = &payloads[n - 3];
    assert!(finish["choices"][0]["finish_reason"].is_string());
    for chunk in &payloads[1..n - 3] {
        assert!(chunk["choices"][0]["delta"]["content"].is_string(), "{chunk}");
        assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
    }
}

#[tokio::test]
async fn completions_whole_and_streamed() {
    let app = app();
    let body =
        json!({ "model": MODEL, "prompt": ["Once upon"], "max_tokens": 5, "temperature": 0 });
    let reply = post(&app, "/v1/completions", body.clone()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let whole = reply.json();
    assert_eq!(whole["object"], "text_completion");
    assert!(whole["choices"][0]["text"].is_string());

    let mut streamed = body;
    streamed["stream"] = json!(true);
    let payloads = stream_payloads(&post(&app, "/v1/completions", streamed).await.text());
    assert_eq!(payloads.last(), Some(&json!("[DONE]")));
    let text: String = payloads.iter().filter_map(|p| p["choices"][0]["text"].as_str()).collect();
    // Greedy decoding of the same prompt gives the same text, streamed or not.
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
}

#[tokio::test]
async fn completions_take_token_ids() {
    let body = json!({ "model": MODEL, "prompt": [1, 72, 101], "max_tokens": 3 });
    let reply = post(&app(), "/v1/completions", body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["usage"]["prompt_tokens"], 3);
}

#[tokio::test]
async fn models_are_listed() {
    let app = app();
    let list = get(&app, "/v1/models").await.json();
    assert_eq!(list["object"], "list");
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "failed packages are not listed");
    assert_eq!(data[0]["id"], MODEL);
    assert_eq!(data[0]["object"], "model");
    assert_eq!(data[0]["owned_by"], "hearth");
    assert_eq!(data[0]["context_length"], CONTEXT_LENGTH);
    assert_eq!(data[0]["kind"], "local");
    assert_eq!(data[0]["providers"], json!(["local"]));
    assert_eq!(data[0]["modality"], "chat");
    assert!(data[0]["prices"].is_object());
    assert_eq!(get(&app, "/v1/models/tiny-llama").await.json()["id"], MODEL);
    assert_eq!(get(&app, "/v1/models/nope").await.status, StatusCode::NOT_FOUND);
}

fn assert_openai_error(reply: &Reply, status: StatusCode, param: Option<&str>, code: Option<&str>) {
    assert_eq!(reply.status, status, "{}", reply.text());
    let body = reply.json();
    let error = &body["error"];
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(error["type"].is_string(), "{body}");
    if let Some(param) = param {
        assert_eq!(error["param"], param, "{body}");
    }
    if let Some(code) = code {
        assert_eq!(error["code"], code, "{body}");
    }
}

#[tokio::test]
async fn bad_chat_requests_are_400_naming_the_field() {
    let app = app();
    let with = |field: &str, value: Value| {
        let mut body = chat_body();
        body[field] = value;
        body
    };
    let cases = [
        (with("temperature", json!("hot")), "temperature"),
        (with("temperature", json!(500)), "temperature"),
        (with("max_tokens", json!(-1)), "max_tokens"),
        (with("max_tokens", json!(0)), "max_tokens"),
        (with("n", json!(2)), "n"),
        (with("logprobs", json!(true)), "logprobs"),
        (with("logit_bias", json!({ "50": -100 })), "logit_bias"),
        (with("stop", json!(5)), "stop"),
        (with("messages", json!([])), "messages"),
        (with("messages", json!([{ "role": "wizard", "content": "hi" }])), "messages[0].role"),
        (
            with("messages", json!([{ "role": "user", "content": [{ "type": "image_url" }] }])),
            "messages[0].content[0].type",
        ),
        (with("messages", json!("hello")), "messages"),
    ];
    for (body, param) in cases {
        let reply = post(&app, "/v1/chat/completions", body).await;
        assert_openai_error(&reply, StatusCode::BAD_REQUEST, Some(param), None);
    }
    // Checked at the gateway's door by the same rule the engine's parameters follow.
    let reply = post(&app, "/v1/chat/completions", with("top_p", json!(0))).await;
    assert_openai_error(&reply, StatusCode::BAD_REQUEST, Some("top_p"), None);
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("`top_p`"));
    // More tokens than the context holds: refused, as Cog refuses it, never silently cut.
    for path in ["/v1/chat/completions", "/v1/completions"] {
        let mut body = with("max_tokens", json!(100_000));
        body["prompt"] = json!("hi");
        let reply = post(&app, path, body).await;
        assert_openai_error(&reply, StatusCode::BAD_REQUEST, None, None);
        let message = reply.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(
            message.contains("`max_tokens`") && message.contains("context"),
            "{path}: {message}"
        );
    }
    // An empty bias changes nothing and is accepted, as OpenAI does.
    let reply = post(&app, "/v1/chat/completions", with("logit_bias", json!({}))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let mut missing = chat_body();
    missing.as_object_mut().unwrap().remove("model");
    assert_openai_error(
        &post(&app, "/v1/chat/completions", missing).await,
        StatusCode::BAD_REQUEST,
        Some("model"),
        None,
    );
}

#[tokio::test]
async fn malformed_json_is_400_openai_shape() {
    let app = app();
    for body in ["{oops", "", "42"] {
        let reply = send(&app, request(Method::POST, "/v1/chat/completions", &[], body)).await;
        assert_openai_error(&reply, StatusCode::BAD_REQUEST, None, None);
        assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    }
}

#[tokio::test]
async fn unknown_model_is_404() {
    let mut body = chat_body();
    body["model"] = json!("gpt-17");
    let reply = post(&app(), "/v1/chat/completions", body).await;
    assert_openai_error(&reply, StatusCode::NOT_FOUND, Some("model"), Some("model_not_found"));
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("gpt-17"));
}

#[tokio::test]
async fn prompt_longer_than_context_is_context_length_exceeded() {
    let app = app();
    let long = "word ".repeat(CONTEXT_LENGTH * 2);
    let reply =
        post(&app, "/v1/completions", json!({ "model": MODEL, "prompt": long, "max_tokens": 1 }))
            .await;
    assert_openai_error(
        &reply,
        StatusCode::BAD_REQUEST,
        Some("prompt"),
        Some("context_length_exceeded"),
    );
    // Chat goes through the gateway, whose local route refuses the prompt by its size.
    let chat = json!({ "model": MODEL, "messages": [{ "role": "user", "content": long }] });
    let reply = post(&app, "/v1/chat/completions", chat).await;
    assert_openai_error(&reply, StatusCode::BAD_REQUEST, None, None);
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("context holds"));
    assert!(reply.headers.contains_key("x-hearth-run-id"), "a refused run still has an id");
}

#[tokio::test]
async fn bad_completion_prompts_are_400() {
    let app = app();
    let cases = [json!(["a", "b"]), json!([]), json!({ "text": "hi" }), json!([-1]), json!(null)];
    for prompt in cases {
        let reply =
            post(&app, "/v1/completions", json!({ "model": MODEL, "prompt": prompt })).await;
        assert_openai_error(&reply, StatusCode::BAD_REQUEST, Some("prompt"), None);
    }
}

#[tokio::test]
async fn unknown_v1_route_is_openai_shaped_404() {
    let reply = get(&app(), "/v1/embeddings-nope").await;
    assert_openai_error(&reply, StatusCode::NOT_FOUND, None, Some("unknown_url"));
}

/// OpenAI's documented defaults: with no temperature a chat completion samples at 1, so two
/// answers to one prompt differ; at temperature 0 they are equal.
#[tokio::test]
async fn chat_samples_at_openais_default_temperature() {
    let app = app();
    let ask = |temperature: Option<f64>| {
        let mut body = chat_body();
        body["max_tokens"] = json!(24);
        body["ignore_eos"] = json!(true);
        match temperature {
            Some(t) => body["temperature"] = json!(t),
            None => {
                body.as_object_mut().unwrap().remove("temperature");
            }
        }
        let app = app.clone();
        async move {
            let reply = post(&app, "/v1/chat/completions", body).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            reply.json()["choices"][0]["message"]["content"].as_str().unwrap().to_owned()
        }
    };
    assert_eq!(ask(Some(0.0)).await, ask(Some(0.0)).await);
    let sampled: Vec<String> = vec![ask(None).await, ask(None).await, ask(None).await];
    assert!(
        sampled.iter().any(|s| *s != sampled[0]),
        "three default answers were equal: {sampled:?}"
    );
}

fn forecast_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "city": { "type": "string", "maxLength": 12 },
            "days": { "type": "integer", "minimum": 1, "maximum": 7 },
        },
        "required": ["city", "days"],
        "additionalProperties": false,
    })
}

fn structured_body(format: Value) -> Value {
    let mut body = chat_body();
    body["max_tokens"] = json!(200);
    body["temperature"] = json!(1);
    body["seed"] = json!(7);
    body["response_format"] = format;
    body
}

fn assert_forecast(content: &str) {
    let value: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("{e}: {content:?}"));
    assert!(value["city"].as_str().is_some_and(|c| c.chars().count() <= 12), "{value}");
    assert!(value["days"].as_u64().is_some_and(|d| (1..=7).contains(&d)), "{value}");
    assert_eq!(value.as_object().map(|o| o.len()), Some(2), "{value}");
}

#[tokio::test]
async fn response_format_json_schema_makes_a_local_answer_valid_whole_and_streamed() {
    let app = app();
    let format = json!({ "type": "json_schema",
        "json_schema": { "name": "forecast", "schema": forecast_schema(), "strict": true } });
    let reply = post(&app, "/v1/chat/completions", structured_body(format.clone())).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
    let whole = body["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    assert_forecast(&whole);

    let mut streamed = structured_body(format);
    streamed["stream"] = json!(true);
    let reply = post(&app, "/v1/chat/completions", streamed).await;
    let text: String = stream_payloads(&reply.text())
        .iter()
        .filter_map(|p| p["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    // The same seed: the stream reassembles to exactly the whole answer.
    assert_eq!(text, whole);

    // Any object: the random model rarely closes its free-text keys, so only an answer that
    // ended must parse; every answer starts as one.
    let reply =
        post(&app, "/v1/chat/completions", structured_body(json!({ "type": "json_object" }))).await;
    let choice = &reply.json()["choices"][0];
    let content = choice["message"]["content"].as_str().unwrap().to_owned();
    assert!(content.starts_with('{'), "{content:?}");
    if choice["finish_reason"] == "stop" {
        let value: Value =
            serde_json::from_str(&content).unwrap_or_else(|e| panic!("{e}: {content:?}"));
        assert!(value.is_object(), "{value}");
    }
    let reply =
        post(&app, "/v1/chat/completions", structured_body(json!({ "type": "text" }))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn a_response_format_that_cannot_be_used_is_400_naming_it() {
    let app = app();
    let schema_format = |name: &str, schema: Value| json!({ "type": "json_schema", "json_schema": { "name": name, "schema": schema } });
    let cases = [
        (schema_format("has spaces", forecast_schema()), "response_format.json_schema.name"),
        (schema_format("ok", json!("an object")), "response_format.json_schema.schema"),
        (schema_format("ok", json!({ "type": "no-such-type" })), "response_format"),
        (json!({ "type": "xml" }), "response_format"),
    ];
    for (format, param) in cases {
        let reply = post(&app, "/v1/chat/completions", structured_body(format.clone())).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{format}: {}", reply.text());
        let error = &reply.json()["error"];
        assert!(error["param"].as_str().is_some_and(|p| p.starts_with(param)), "{format}: {error}");
    }
    let reply = post(
        &app,
        "/v1/chat/completions",
        structured_body(schema_format("ok", json!({ "type": "no-such-type" }))),
    )
    .await;
    let message = reply.json()["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("no-such-type"), "the schema's problem is named: {message}");
}
