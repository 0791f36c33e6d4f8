//! Trace export against the real binary: with `[telemetry] otlp_endpoint` set, each run reaches
//! an OTLP/HTTP receiver (a stand-in collector on loopback) as a span with the GenAI attributes,
//! its first token as an event, its upstream attempt as a child span (and a local model's queue,
//! prefill and decode phases as the attempt's children), all in the caller's trace
//! when the request carried a W3C `traceparent`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{tiny_llama, Daemon};
use serde_json::{json, Value};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// Every span the collector stand-in has received, flattened.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Collector {
    /// Answers `POST /v1/traces` (OTLP/HTTP with JSON bodies) on a free port; returns its URL.
    fn start(&self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let spans = self.spans.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let spans = spans.clone();
                std::thread::spawn(move || serve(stream, &spans));
            }
        });
        url
    }

    fn wait_for(&self, what: &str, found: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans.lock().unwrap().clone();
            if found(&spans) {
                return spans;
            }
            assert!(Instant::now() < deadline, "no {what} among {spans:#?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One kept-alive connection of the exporter: each request's spans are kept.
fn serve(stream: std::net::TcpStream, spans: &Mutex<Vec<Value>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end().to_ascii_lowercase();
            if line.is_empty() {
                break;
            }
            if let Some(value) = line.strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let export: Value = serde_json::from_slice(&body).expect("an OTLP JSON body");
        for resource in export["resourceSpans"].as_array().unwrap() {
            for scope in resource["scopeSpans"].as_array().unwrap() {
                let mut found = scope["spans"].as_array().unwrap().clone();
                for span in &mut found {
                    span["service"] = resource["resource"]["attributes"].clone();
                }
                spans.lock().unwrap().extend(found);
            }
        }
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// An attribute's value as text (OTLP JSON writes integers as strings).
fn attribute(span: &Value, key: &str) -> Option<String> {
    let found = span["attributes"].as_array()?.iter().find(|a| a["key"] == key)?;
    let value = &found["value"];
    let text = value["stringValue"].as_str().map(str::to_owned);
    text.or_else(|| value["intValue"].as_str().map(str::to_owned))
        .or_else(|| value["intValue"].as_i64().map(|v| v.to_string()))
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

#[test]
fn each_run_is_one_span_in_the_callers_trace_with_its_attempt_and_first_token() {
    let collector = Collector::default();
    let endpoint = collector.start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hearth.toml");
    std::fs::write(
        &config,
        format!("[telemetry]\notlp_endpoint = \"{endpoint}\"\nservice_name = \"hearth-test\"\n"),
    )
    .unwrap();
    let model = tiny_llama();
    let daemon = Daemon::start_with_env(
        &["--model", model.to_str().unwrap(), "--config", config.to_str().unwrap()],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let client = reqwest::blocking::Client::new();
    let chat = |traceparent: Option<String>| {
        let mut request = client.post(daemon.url("/v1/chat/completions")).json(&json!({
            "model": "tiny-llama", "max_tokens": 4,
            "messages": [{"role": "user", "content": "Hi"}]}));
        if let Some(header) = traceparent {
            request = request.header("traceparent", header);
        }
        let answer = request.send().unwrap();
        assert_eq!(answer.status(), 200);
        answer.headers()["x-hearth-run-id"].to_str().unwrap().to_owned()
    };
    let run_id = chat(Some(format!("00-{TRACE_ID}-{CALLER_SPAN}-01")));
    let other_run = chat(None);

    let spans = collector.wait_for("two runs' spans", |spans| {
        named(spans, "chat tiny-llama").len() == 2 && named(spans, "decode").len() == 2
    });
    let runs = named(&spans, "chat tiny-llama");
    let run = runs
        .iter()
        .find(|s| attribute(s, "hearth.run_id").as_deref() == Some(run_id.as_str()))
        .expect("the first run's span");
    assert_eq!(run["traceId"], TRACE_ID, "the run joins the caller's trace");
    for (key, expected) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.request.model", "tiny-llama"),
        ("gen_ai.system", "hearth"),
        ("hearth.route", "local/tiny-llama"),
        ("hearth.attempts", "1"),
        ("hearth.status", "finished"),
    ] {
        assert_eq!(attribute(run, key).as_deref(), Some(expected), "{key} in {run:#}");
    }
    for key in ["gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"] {
        let tokens: u64 = attribute(run, key).unwrap().parse().unwrap();
        assert!(tokens > 0, "{key} = {tokens}");
    }
    let first_token =
        run["events"].as_array().unwrap().iter().find(|e| e["name"] == "gen_ai.first_token");
    let first_token = first_token.expect("the first token is an event of the run");
    assert!(attribute(first_token, "hearth.ttft_ms").is_some(), "{first_token:#}");
    let service = run["service"].as_array().unwrap();
    assert!(service
        .iter()
        .any(|a| a["key"] == "service.name" && a["value"]["stringValue"] == "hearth-test"));

    // The request's span is the caller's child, the run the request's, the attempt the run's.
    let request = named(&spans, "POST /v1/chat/completions")
        .into_iter()
        .find(|s| s["traceId"] == TRACE_ID)
        .expect("the request's span");
    assert_eq!(request["parentSpanId"], CALLER_SPAN);
    assert_eq!(run["parentSpanId"], request["spanId"]);
    let attempt = named(&spans, "attempt local/tiny-llama")
        .into_iter()
        .find(|s| s["parentSpanId"] == run["spanId"])
        .expect("the run's attempt span");
    assert_eq!(attempt["traceId"], TRACE_ID);
    assert_eq!(attribute(attempt, "gen_ai.system").as_deref(), Some("hearth"));

    // The local model's phases: queued, then prefill, then decode, each the attempt's child and
    // each ending where the next begins.
    let phases: Vec<&Value> = ["queue", "prefill", "decode"]
        .iter()
        .map(|name| {
            named(&spans, name)
                .into_iter()
                .find(|s| s["parentSpanId"] == attempt["spanId"])
                .unwrap_or_else(|| panic!("no {name} span under the attempt in {spans:#?}"))
        })
        .collect();
    // OTLP JSON writes 64-bit integers as strings; take a number too.
    let time = |span: &Value, key: &str| {
        let value = &span[key];
        value.as_str().map_or_else(|| value.as_u64().unwrap(), |s| s.parse().unwrap())
    };
    for pair in phases.windows(2) {
        assert!(
            time(pair[0], "endTimeUnixNano") <= time(pair[1], "startTimeUnixNano"),
            "{pair:#?}"
        );
    }
    assert!(attribute(phases[0], "hearth.prompt_tokens").is_some(), "{:#}", phases[0]);
    assert_eq!(attribute(phases[2], "gen_ai.usage.output_tokens").as_deref(), Some("4"));

    // A request without a traceparent starts a trace of its own.
    let other = runs
        .iter()
        .find(|s| attribute(s, "hearth.run_id").as_deref() == Some(other_run.as_str()))
        .expect("the second run's span");
    assert_ne!(other["traceId"], TRACE_ID);
}
