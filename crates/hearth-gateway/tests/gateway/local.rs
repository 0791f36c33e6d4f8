//! The local route: a package served by this process's engine, behind the same router, run
//! buffers and ledger as the upstreams.

use std::path::Path;

use candle_core::Device;
use hearth_engine::{Engine, EngineConfig};
use hearth_gateway::{Catalog, LedgerStatus, LocalModel, RouteKind};
use hearth_package::Package;
use hearth_protocol::{CanonicalEvent, OutputConstraint, StopReason, ToolChoice, ToolDefinition};
use serde_json::json;

use crate::fake::{Answer, FakeProvider, Fault, Wire};
use crate::support::{events, harness_with, hello, test_settings, text_of, upstream};

const PACKAGE: &str = "tiny-llama";

fn catalog_with_tiny_llama() -> Catalog {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/tiny-llama"));
    let package = Package::load(dir).expect("models/tiny-llama is a valid package");
    let engine = Engine::start(&package, EngineConfig::default(), &Device::Cpu, &|_, _| {})
        .expect("the engine starts");
    let mut catalog = Catalog::new();
    let model = LocalModel { engine, cog: package.cog.clone(), settings: package.settings.clone() };
    catalog.insert_ready(PACKAGE.into(), model);
    catalog
}

fn with_tool(model: &str) -> hearth_protocol::CanonicalRequest {
    let mut request = hello(model);
    request.tools = vec![ToolDefinition {
        name: "get_weather".into(),
        description: None,
        parameters: json!({"type": "object"}),
    }];
    request
}

#[tokio::test]
async fn local_packages_serve_text_and_tool_calls() {
    let fake = FakeProvider::start(Wire::OpenAi, Answer::Text).await;
    let h = harness_with(
        &[upstream("up", Wire::OpenAi, fake.base_url())],
        &["local/tiny-llama", "up/gpt"],
        test_settings(),
        catalog_with_tiny_llama(),
    )
    .await;
    let listed = h.gateway.catalog().list_models();
    let local = listed.iter().find(|m| m.id == PACKAGE).expect("the package is listed");
    assert_eq!(
        (local.kind, local.modality, local.providers.clone()),
        (RouteKind::Local, "chat", vec!["local".to_string()])
    );
    assert_eq!(listed.iter().find(|m| m.id == "m").map(|m| m.providers.len()), Some(2));

    let mut request = hello(PACKAGE);
    request.max_tokens = Some(4);
    let run = h.start(request).await.unwrap();
    assert_eq!(run.route, "local/tiny-llama");
    let answer = events(run.events).await;
    assert!(matches!(answer.last(), Some(CanonicalEvent::Finish { .. })), "{answer:?}");
    assert!(!text_of(&answer).is_empty());
    h.gateway.wait_idle().await;
    let record = h.gateway.ledger().get(&run.run_id).await.unwrap().unwrap();
    assert_eq!(record.status, LedgerStatus::Finished);
    assert!(record.input_tokens > 0 && (1..=4).contains(&record.output_tokens), "{record:?}");

    // A forced call on the local route comes back as a call, arguments held to the schema.
    let mut request = with_tool(PACKAGE);
    request.tool_choice = Some(ToolChoice::Required);
    request.parallel_tool_calls = Some(false);
    request.max_tokens = Some(100);
    let run = h.start(request).await.unwrap();
    assert_eq!(run.route, "local/tiny-llama");
    let events = events(run.events).await;
    let started = events.iter().filter(
        |e| matches!(e, CanonicalEvent::ToolCallStart { name, .. } if name == "get_weather"),
    );
    assert_eq!(started.count(), 1, "{events:?}");
    let arguments: String = events
        .iter()
        .filter_map(|e| match e {
            CanonicalEvent::ToolCallDelta { arguments, .. } => Some(arguments.as_str()),
            _ => None,
        })
        .collect();
    let arguments: serde_json::Value = serde_json::from_str(&arguments).unwrap();
    assert!(arguments.is_object(), "{arguments}");
    assert_eq!(events.last(), Some(&CanonicalEvent::Finish { reason: StopReason::ToolCalls }));
}

#[tokio::test]
async fn a_tool_request_fails_over_from_an_upstream_to_the_local_route() {
    let fake = FakeProvider::start(Wire::OpenAi, Answer::Text).await;
    fake.push(Fault::Status(500)).push(Fault::Status(500)).push(Fault::Status(500));
    let h = harness_with(
        &[upstream("up", Wire::OpenAi, fake.base_url())],
        &["up/gpt", "local/tiny-llama"],
        test_settings(),
        catalog_with_tiny_llama(),
    )
    .await;
    let mut request = with_tool("m");
    request.tool_choice = Some(ToolChoice::Tool { name: "get_weather".into() });
    request.max_tokens = Some(100);
    let run = h.start(request).await.unwrap();
    assert_eq!(run.route, "local/tiny-llama", "the upstream failed: the local route answers");
    let events = events(run.events).await;
    assert!(events.iter().any(|e| matches!(e, CanonicalEvent::ToolCallStart { .. })), "{events:?}");
}

#[tokio::test]
async fn a_response_format_goes_only_to_routes_that_enforce_it() {
    let anthropic = FakeProvider::start(Wire::Anthropic, Answer::Text).await;
    let openai = FakeProvider::start(Wire::OpenAi, Answer::Text).await;
    let h = harness_with(
        &[
            upstream("ant", Wire::Anthropic, anthropic.base_url()),
            upstream("up", Wire::OpenAi, openai.base_url()),
        ],
        &["ant/claude", "up/gpt"],
        test_settings(),
        catalog_with_tiny_llama(),
    )
    .await;
    let schema = json!({ "type": "object", "properties": { "ok": { "type": "boolean" } } });
    let mut request = hello("m");
    request.response_format = Some(OutputConstraint::JsonSchema {
        schema: schema.clone(),
        name: Some("verdict".into()),
        strict: Some(false),
    });
    let run = h.start(request).await.unwrap();
    assert_eq!(run.route, "up/gpt", "Anthropic's API cannot carry the schema: skipped");
    assert_eq!(anthropic.calls(), 0);
    let sent = &openai.requests()[0].body;
    assert_eq!(sent["response_format"]["type"], "json_schema", "{sent}");
    assert_eq!(sent["response_format"]["json_schema"]["schema"], schema, "{sent}");
    // The caller's own name and strictness go upstream as they came.
    assert_eq!(sent["response_format"]["json_schema"]["name"], "verdict", "{sent}");
    assert_eq!(sent["response_format"]["json_schema"]["strict"], false, "{sent}");

    // The local engine enforces it; the answer is the schema's.
    let mut request = hello(PACKAGE);
    request.max_tokens = Some(64);
    request.response_format = Some(OutputConstraint::schema(json!({
        "type": "object", "properties": { "ok": { "type": "boolean" } },
        "required": ["ok"], "additionalProperties": false })));
    let run = h.start(request).await.unwrap();
    let text = text_of(&events(run.events).await);
    assert!(text == r#"{"ok":true}"# || text == r#"{"ok":false}"#, "{text:?}");
}
