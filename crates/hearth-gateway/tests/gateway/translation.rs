//! One test per pair of entry format and provider format: a request with a system prompt, tool
//! definitions, a tool call and its result enters in one format, reaches a fake provider in
//! another, and the provider's answer (text, a tool call, usage with cached tokens) goes back
//! to the caller as that caller's own stream frames and non-streamed body.

use hearth_protocol::wire::{anthropic, gemini, openai, SseFrame};
use hearth_protocol::{
    CanonicalEvent, CanonicalRequest, ResponseAssembler, StopReason, TokenUsage,
};
use serde_json::{json, Value};

use crate::fake::{Answer, FakeProvider, Recorded, Wire};
use crate::support::{events, harness, hello, key_of, test_settings, upstream};

const WIRES: [Wire; 3] = [Wire::OpenAi, Wire::Anthropic, Wire::Gemini];

fn entry_request(wire: Wire) -> CanonicalRequest {
    let schema =
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
    let mut request = match wire {
        Wire::OpenAi => openai::to_canonical(serde_json::from_value(json!({
            "model": "m", "stream": true, "max_tokens": 64, "stop": ["END"],
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
                {"role": "user", "content": "And tomorrow?"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather by city", "parameters": schema}}]
        })).unwrap()),
        Wire::Anthropic => anthropic::to_canonical(serde_json::from_value(json!({
            "model": "m", "stream": true, "max_tokens": 64, "stop_sequences": ["END"],
            "system": "Be brief.",
            "messages": [
                {"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "rain"},
                                             {"type": "text", "text": "And tomorrow?"}]}
            ],
            "tools": [{"name": "get_weather", "description": "Weather by city", "input_schema": schema}]
        })).unwrap()),
        Wire::Gemini => gemini::to_canonical(serde_json::from_value(json!({
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "Weather in Oslo?"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"result": "rain"}}},
                                           {"text": "And tomorrow?"}]}
            ],
            "tools": [{"functionDeclarations": [{"name": "get_weather", "description": "Weather by city", "parametersJsonSchema": schema}]}],
            "generationConfig": {"maxOutputTokens": 64, "stopSequences": ["END"]}
        })).unwrap(), "m", true),
    };
    request.as_mut().unwrap().model = "m".into();
    request.unwrap()
}

/// The provider got the whole conversation in its own format.
fn check_provider_request(wire: Wire, seen: &Recorded, name: &str) {
    let (b, header) = (&seen.body, |h: &str| {
        seen.headers.get(h).and_then(|v| v.to_str().ok()).map(str::to_string)
    });
    match wire {
        Wire::OpenAi => {
            assert_eq!(seen.path, "/v1/chat/completions");
            assert_eq!(header("authorization"), Some(format!("Bearer {}", key_of(name))));
            assert_eq!(b["messages"][0], json!({"role": "system", "content": "Be brief."}));
            let call_id = b["messages"][2]["tool_calls"][0]["id"].clone();
            assert_eq!(
                b["messages"][2]["tool_calls"][0]["function"]["arguments"],
                "{\"city\":\"Oslo\"}"
            );
            assert_eq!(
                b["messages"][3],
                json!({"role": "tool", "tool_call_id": call_id, "content": "rain"})
            );
            assert_eq!(b["messages"][4], json!({"role": "user", "content": "And tomorrow?"}));
            assert_eq!(b["tools"][0]["function"]["name"], "get_weather");
            assert_eq!(
                (&b["max_completion_tokens"], &b["stop"], &b["stream"]),
                (&json!(64), &json!(["END"]), &json!(true))
            );
            assert_eq!(b["stream_options"]["include_usage"], true);
        }
        Wire::Anthropic => {
            assert_eq!(seen.path, "/v1/messages");
            assert_eq!(header("x-api-key"), Some(key_of(name)));
            assert_eq!(header("anthropic-version").as_deref(), Some(anthropic::API_VERSION));
            assert_eq!(b["system"], "Be brief.");
            let tool_use = &b["messages"][1]["content"][0];
            assert_eq!(
                (&tool_use["type"], &tool_use["input"]),
                (&json!("tool_use"), &json!({"city": "Oslo"}))
            );
            let result = &b["messages"][2]["content"][0];
            assert_eq!(
                (&result["type"], &result["tool_use_id"]),
                (&json!("tool_result"), &tool_use["id"])
            );
            assert_eq!(b["messages"][2]["content"][1]["text"], "And tomorrow?");
            assert_eq!(b["tools"][0]["input_schema"]["required"], json!(["city"]));
            assert_eq!(
                (&b["max_tokens"], &b["stop_sequences"], &b["stream"]),
                (&json!(64), &json!(["END"]), &json!(true))
            );
        }
        Wire::Gemini => {
            assert_eq!(seen.path, "/v1beta/models/gpt:streamGenerateContent?alt=sse");
            assert_eq!(header("x-goog-api-key"), Some(key_of(name)));
            assert_eq!(b["systemInstruction"]["parts"][0]["text"], "Be brief.");
            assert_eq!(b["contents"][1]["role"], "model");
            assert_eq!(b["contents"][1]["parts"][0]["functionCall"]["name"], "get_weather");
            let response = &b["contents"][2]["parts"][0]["functionResponse"];
            assert_eq!(
                (&response["name"], &response["response"]),
                (&json!("get_weather"), &json!({"result": "rain"}))
            );
            assert_eq!(b["contents"][2]["parts"][1]["text"], "And tomorrow?");
            assert_eq!(b["tools"][0]["functionDeclarations"][0]["name"], "get_weather");
            let config = &b["generationConfig"];
            assert_eq!(
                (&config["maxOutputTokens"], &config["stopSequences"]),
                (&json!(64), &json!(["END"]))
            );
        }
    }
}

/// Encodes the run's events as the entry format's frames, checks the frames a client of that
/// format relies on, and decodes them back with that format's decoder.
fn encode_for_entry(wire: Wire, events: &[CanonicalEvent]) -> Vec<CanonicalEvent> {
    let frames: Vec<SseFrame> = match wire {
        Wire::OpenAi => {
            let mut enc = openai::StreamEncoder::new(openai::StreamHeader {
                id: "chatcmpl-x".into(),
                model: "m".into(),
                created: 0,
                include_usage: true,
            });
            events.iter().flat_map(|e| enc.encode(e)).collect()
        }
        Wire::Anthropic => {
            let mut enc = anthropic::StreamEncoder::new("msg_x", "m");
            events.iter().flat_map(|e| enc.encode(e)).collect()
        }
        Wire::Gemini => {
            let mut enc = gemini::StreamEncoder::new("resp_x", "m");
            events.iter().flat_map(|e| enc.encode(e)).collect()
        }
    };
    let json = |f: &SseFrame| serde_json::from_str::<Value>(&f.data).unwrap_or(Value::Null);
    match wire {
        Wire::OpenAi => {
            assert_eq!(frames.last().unwrap().data, "[DONE]");
            let finish = frames
                .iter()
                .map(json)
                .find(|v| !v["choices"][0]["finish_reason"].is_null())
                .unwrap();
            assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
            let usage = json(&frames[frames.len() - 2]);
            assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 3);
        }
        Wire::Anthropic => {
            let names: Vec<_> = frames.iter().filter_map(|f| f.event).collect();
            assert_eq!(names.first(), Some(&"message_start"));
            assert_eq!(&names[names.len() - 2..], ["message_delta", "message_stop"]);
            let delta = json(&frames[frames.len() - 2]);
            assert_eq!(delta["delta"]["stop_reason"], "tool_use");
            assert_eq!(delta["usage"]["cache_read_input_tokens"], 3);
        }
        Wire::Gemini => {
            let last = json(frames.last().unwrap());
            assert_eq!(last["candidates"][0]["finishReason"], "STOP");
            assert_eq!(
                last["candidates"][0]["content"]["parts"][0]["functionCall"]["args"],
                json!({"city": "Oslo"})
            );
            assert_eq!(last["usageMetadata"]["cachedContentTokenCount"], 3);
        }
    }
    decode_entry_frames(wire, &frames)
}

fn decode_entry_frames(wire: Wire, frames: &[SseFrame]) -> Vec<CanonicalEvent> {
    let mut out = Vec::new();
    match wire {
        Wire::OpenAi => {
            let mut d = openai::StreamDecoder::new();
            frames.iter().for_each(|f| out.extend(d.push(&f.data).unwrap()));
            out.extend(d.finish().unwrap());
        }
        Wire::Anthropic => {
            let mut d = anthropic::StreamDecoder::new();
            frames.iter().for_each(|f| out.extend(d.push(&f.data).unwrap()));
            out.extend(d.finish().unwrap());
        }
        Wire::Gemini => {
            let mut d = gemini::StreamDecoder::new();
            frames.iter().for_each(|f| out.extend(d.push(&f.data).unwrap()));
            out.extend(d.finish().unwrap());
        }
    }
    out
}

/// The answer every fake gives for `Answer::Tool`, as the caller must see it.
fn check_answer(events: &[CanonicalEvent]) {
    let mut assembler = ResponseAssembler::new();
    events.iter().for_each(|e| assembler.push(e));
    let response = assembler.finish().unwrap();
    assert_eq!(response.text().as_deref(), Some("Let me check."));
    let calls: Vec<_> =
        response.tool_calls().map(|(_, name, input)| (name.to_string(), input.clone())).collect();
    assert_eq!(calls, vec![("get_weather".to_string(), json!({"city": "Oslo"}))]);
    assert_eq!(response.stop_reason, StopReason::ToolCalls);
    assert_eq!(
        response.usage,
        TokenUsage { input_tokens: 11, output_tokens: 7, cached_input_tokens: 3 }
    );
}

/// The non-streamed body of the entry format carries the same answer.
fn check_whole_body(wire: Wire, events: &[CanonicalEvent]) {
    let mut assembler = ResponseAssembler::new();
    events.iter().for_each(|e| assembler.push(e));
    let response = assembler.finish().unwrap();
    let body = match wire {
        Wire::OpenAi => {
            serde_json::to_value(openai::response_from_canonical(&response, "id", 0)).unwrap()
        }
        Wire::Anthropic => {
            serde_json::to_value(anthropic::response_from_canonical(&response, "id")).unwrap()
        }
        Wire::Gemini => {
            serde_json::to_value(gemini::response_from_canonical(&response, "id")).unwrap()
        }
    };
    let (stop, args) = match wire {
        Wire::OpenAi => (
            &body["choices"][0]["finish_reason"],
            body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"].clone(),
        ),
        Wire::Anthropic => (&body["stop_reason"], body["content"][1]["input"].to_string().into()),
        Wire::Gemini => (
            &body["candidates"][0]["finishReason"],
            body["candidates"][0]["content"]["parts"][1]["functionCall"]["args"].to_string().into(),
        ),
    };
    let expected_stop = match wire {
        Wire::OpenAi => "tool_calls",
        Wire::Anthropic => "tool_use",
        Wire::Gemini => "STOP",
    };
    assert_eq!(stop, expected_stop, "{wire:?}: {body}");
    assert_eq!(args, json!("{\"city\":\"Oslo\"}"), "{wire:?}: {body}");
}

#[tokio::test]
async fn every_entry_format_reaches_every_provider_format_and_back() {
    for provider in WIRES {
        for entry in WIRES {
            let fake = FakeProvider::start(provider, Answer::Tool).await;
            let h =
                harness(&[upstream("up", provider, fake.base_url())], &["up/gpt"], test_settings())
                    .await;
            let run = h.start(entry_request(entry)).await.unwrap();
            let events = events(run.events).await;
            check_provider_request(provider, &fake.requests()[0], "up");
            check_answer(&events);
            check_answer(&encode_for_entry(entry, &events));
            check_whole_body(entry, &events);
        }
    }
}

#[tokio::test]
async fn a_provider_prefixed_id_routes_straight_to_that_provider() {
    let fake = FakeProvider::start(Wire::OpenAi, Answer::Text).await;
    let h = harness(&[upstream("up", Wire::OpenAi, fake.base_url())], &["up/gpt"], test_settings())
        .await;
    let run = h.start(hello("up/gpt-direct")).await.unwrap();
    assert_eq!(run.route, "up/gpt-direct");
    events(run.events).await;
    assert_eq!(fake.requests()[0].body["model"], "gpt-direct");
    let record = h.only_record(&run.run_id).await;
    assert_eq!((record.model.as_str(), record.cost), ("up/gpt-direct", None), "no prices, no cost");
}
