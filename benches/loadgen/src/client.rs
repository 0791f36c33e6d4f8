//! One streaming request against an OpenAI-compatible endpoint, timed chunk by chunk.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::sse::{self, StreamEvent, Usage};
use crate::Error;

/// Which OpenAI surface to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `/v1/completions` with a raw `prompt`.
    Completions,
    /// `/v1/chat/completions` with `messages` (the server applies its chat template).
    Chat,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Endpoint::Completions => "completions",
            Endpoint::Chat => "chat",
        })
    }
}

/// One chat message; also rendered as a plain transcript for the completions endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Message {
        Message { role: role.to_string(), content: content.into() }
    }
}

/// Connection settings shared by every request of a run.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub base_url: String,
    pub model: String,
    pub endpoint: Endpoint,
    pub api_key: Option<String>,
    /// Send `ignore_eos: true` so fixed output lengths are honoured; some servers reject the field.
    pub ignore_eos: bool,
    pub timeout: Duration,
}

/// What was measured for one request. Times are milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RequestRecord {
    /// When the request was sent, relative to the start of its sweep point or conversation set.
    pub start_ms: f64,
    /// Request sent → first chunk that carries generated text.
    pub ttft_ms: Option<f64>,
    /// Request sent → end of stream.
    pub e2e_ms: f64,
    /// Gaps between consecutive token-carrying chunks.
    pub itl_ms: Vec<f64>,
    /// (e2e − ttft) / (output_tokens − 1): per-token time even when chunks carry several tokens.
    pub tpot_ms: Option<f64>,
    pub output_tokens: u64,
    /// True when `output_tokens` came from the server's usage rather than a chunk count.
    pub usage_reported: bool,
    pub prompt_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    pub chunks: usize,
    pub requested_output_tokens: u32,
    pub error: Option<String>,
    /// The visible reply, which the agent workload appends to its history.
    #[serde(skip)]
    pub content: String,
}

impl RequestRecord {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// A thin, cloneable client: one pooled HTTP client and the request template.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    url: String,
    cfg: ClientConfig,
}

/// `http://h:p` → `http://h:p/v1/…`; a base that already ends in `/v1` is not doubled.
pub fn endpoint_url(base: &str, endpoint: Endpoint) -> String {
    let base = base.trim_end_matches('/');
    let root = if base.ends_with("/v1") { base.to_string() } else { format!("{base}/v1") };
    match endpoint {
        Endpoint::Completions => format!("{root}/completions"),
        Endpoint::Chat => format!("{root}/chat/completions"),
    }
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Result<Client, Error> {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(Duration::from_secs(10))
            // Nagle would hold back small request writes and add latency that is not the server's.
            .tcp_nodelay(true)
            // A benchmark must measure the server, not whatever proxy the environment names.
            .no_proxy()
            // A fresh connection per request. Against llama-server, a pooled connection taken
            // again right after a streamed response sometimes failed at once ("error sending
            // request": the server was closing it), which the agent workload's back-to-back
            // turns hit. On
            // loopback a connect costs tens of microseconds, nothing next to a first token.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| Error::Http(e.to_string()))?;
        let url = endpoint_url(&cfg.base_url, cfg.endpoint);
        Ok(Client { http, url, cfg })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The JSON body for one request. Streaming with usage is always on: timings need the stream
    /// and token counts need the usage chunk.
    pub fn body(&self, messages: &[Message], max_tokens: u32) -> Value {
        let mut body = json!({
            "model": self.cfg.model,
            "stream": true,
            "stream_options": { "include_usage": true },
            "max_tokens": max_tokens,
        });
        match self.cfg.endpoint {
            Endpoint::Chat => body["messages"] = json!(messages),
            Endpoint::Completions => body["prompt"] = json!(transcript(messages)),
        }
        if self.cfg.ignore_eos {
            body["ignore_eos"] = json!(true);
        }
        body
    }

    /// Sends one request and times its stream. Never fails: failures land in `record.error`, so a
    /// sweep keeps going and counts them.
    pub async fn send(&self, messages: &[Message], max_tokens: u32) -> RequestRecord {
        let body = self.body(messages, max_tokens);
        let started = Instant::now();
        let mut record =
            RequestRecord { requested_output_tokens: max_tokens, ..Default::default() };
        if let Err(e) = self.stream_into(&body, started, &mut record).await {
            record.error = Some(e.to_string());
        }
        record.e2e_ms = ms(started.elapsed());
        finish_record(&mut record);
        record
    }

    async fn stream_into(
        &self,
        body: &Value,
        started: Instant,
        record: &mut RequestRecord,
    ) -> Result<(), Error> {
        let mut req = self.http.post(&self.url).json(body);
        if let Some(key) = &self.cfg.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(|e| Error::Http(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(Error::Status {
                status: status.as_u16(),
                body: text.chars().take(300).collect(),
            });
        }
        let mut events = std::pin::pin!(sse::events(resp.bytes_stream()));
        let mut last_token_at: Option<Instant> = None;
        while let Some(event) = events.next().await {
            let chunk = match event? {
                StreamEvent::Done => return Ok(()),
                StreamEvent::Chunk(chunk) => chunk,
            };
            if let Some(usage) = chunk.usage {
                apply_usage(record, usage);
            }
            if chunk.has_tokens() {
                let now = Instant::now();
                match last_token_at {
                    None => record.ttft_ms = Some(ms(now - started)),
                    Some(prev) => record.itl_ms.push(ms(now - prev)),
                }
                last_token_at = Some(now);
                record.chunks += 1;
                record.content.push_str(&chunk.content);
            }
        }
        Err(Error::Truncated)
    }
}

fn apply_usage(record: &mut RequestRecord, usage: Usage) {
    record.prompt_tokens = usage.prompt_tokens.or(record.prompt_tokens);
    record.cached_tokens = usage.cached_tokens.or(record.cached_tokens);
    if let Some(n) = usage.completion_tokens {
        record.output_tokens = n;
        record.usage_reported = true;
    }
}

/// Fills the derived fields once the stream is over.
fn finish_record(record: &mut RequestRecord) {
    if !record.usage_reported {
        // Without usage the best estimate is one token per chunk.
        record.output_tokens = record.chunks as u64;
    }
    if record.ok() && record.ttft_ms.is_none() {
        record.error = Some("stream finished without generating any text".into());
    }
    if let (Some(ttft), true) = (record.ttft_ms, record.output_tokens > 1) {
        record.tpot_ms = Some((record.e2e_ms - ttft) / (record.output_tokens - 1) as f64);
    }
}

/// Renders messages for the completions endpoint: a lone user message is sent as-is (the plain
/// benchmark case); a conversation becomes a role-labelled transcript that ends on the assistant.
pub fn transcript(messages: &[Message]) -> String {
    if let [only] = messages {
        return only.content.clone();
    }
    let mut out = String::new();
    for m in messages {
        let role = match m.role.as_str() {
            "system" => "System",
            "assistant" => "Assistant",
            _ => "User",
        };
        out.push_str(&format!("{role}: {}\n\n", m.content));
    }
    out.push_str("Assistant:");
    out
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(endpoint: Endpoint, ignore_eos: bool) -> Client {
        Client::new(ClientConfig {
            base_url: "http://127.0.0.1:1/".into(),
            model: "m".into(),
            endpoint,
            api_key: None,
            ignore_eos,
            timeout: Duration::from_secs(1),
        })
        .unwrap()
    }

    #[test]
    fn builds_urls() {
        assert_eq!(endpoint_url("http://h:1", Endpoint::Chat), "http://h:1/v1/chat/completions");
        assert_eq!(
            endpoint_url("http://h:1/v1/", Endpoint::Completions),
            "http://h:1/v1/completions"
        );
    }

    #[test]
    fn bodies_match_endpoint() {
        let msgs = [Message::new("user", "hi there")];
        let chat = client(Endpoint::Chat, true).body(&msgs, 7);
        assert_eq!(chat["messages"][0]["content"], "hi there");
        assert_eq!(chat["ignore_eos"], true);
        assert_eq!(chat["stream_options"]["include_usage"], true);
        let comp = client(Endpoint::Completions, false).body(&msgs, 7);
        assert_eq!(comp["prompt"], "hi there");
        assert_eq!(comp["max_tokens"], 7);
        assert!(comp.get("ignore_eos").is_none());
    }

    #[test]
    fn transcript_labels_roles() {
        let msgs = [
            Message::new("system", "s"),
            Message::new("user", "u"),
            Message::new("assistant", "a"),
        ];
        assert_eq!(transcript(&msgs), "System: s\n\nUser: u\n\nAssistant: a\n\nAssistant:");
    }

    #[test]
    fn tpot_uses_token_count_not_chunks() {
        let mut r = RequestRecord {
            ttft_ms: Some(100.0),
            e2e_ms: 190.0,
            chunks: 3,
            output_tokens: 10,
            usage_reported: true,
            ..Default::default()
        };
        finish_record(&mut r);
        assert_eq!(r.tpot_ms, Some(10.0));
        let mut no_usage = RequestRecord { ttft_ms: Some(1.0), chunks: 4, ..Default::default() };
        finish_record(&mut no_usage);
        assert_eq!(no_usage.output_tokens, 4);
        let mut empty = RequestRecord::default();
        finish_record(&mut empty);
        assert!(!empty.ok());
    }

    #[tokio::test]
    async fn connection_failures_become_errors() {
        let rec = client(Endpoint::Chat, true).send(&[Message::new("user", "x")], 4).await;
        assert!(rec.error.is_some());
        assert_eq!(rec.output_tokens, 0);
    }
}
