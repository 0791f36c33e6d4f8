//! Turns an OpenAI-style server-sent-event byte stream into typed stream events.
//!
//! Framing (lines split across reads, UTF-8 characters split across reads, `\r\n`, comments) is
//! left to `eventsource-stream`; this module only interprets each event's `data:` payload. The
//! payload types are deliberately lenient — every field optional — because the servers compared
//! here (Hearth, llama.cpp, mistral.rs, vLLM) differ in which fields they fill.

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::Value;

use crate::Error;

/// Token accounting reported by the server, normally in the last chunk before `[DONE]`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
}

/// One parsed `data:` chunk.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chunk {
    /// Visible text: `choices[0].text` (completions) or `choices[0].delta.content` (chat).
    pub content: String,
    /// Reasoning text some servers stream separately; it is still generated tokens, so it counts
    /// for timing, but it is not part of the conversation history an agent would re-send.
    pub reasoning: String,
    pub usage: Option<Usage>,
}

impl Chunk {
    /// Whether this chunk carries generated tokens (as opposed to a role-only or usage-only chunk).
    pub fn has_tokens(&self) -> bool {
        !self.content.is_empty() || !self.reasoning.is_empty()
    }
}

/// What one SSE event means to the load generator.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Chunk(Chunk),
    Done,
}

#[derive(Deserialize)]
struct WireChunk {
    choices: Option<Vec<WireChoice>>,
    usage: Option<WireUsage>,
    error: Option<Value>,
    /// llama.cpp's own timing block; its `cache_n` is the prefix-cache hit count when the server
    /// does not fill `prompt_tokens_details`.
    timings: Option<WireTimings>,
}

#[derive(Deserialize)]
struct WireChoice {
    text: Option<String>,
    delta: Option<WireDelta>,
}

#[derive(Deserialize)]
struct WireDelta {
    content: Option<String>,
    reasoning_content: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<WireDetails>,
}

#[derive(Deserialize)]
struct WireDetails {
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct WireTimings {
    cache_n: Option<u64>,
}

/// Interprets one event's `data:` payload (`event_type` is the SSE `event:` field, often empty).
pub fn parse_data(event_type: &str, data: &str) -> Result<StreamEvent, Error> {
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(StreamEvent::Done);
    }
    if event_type == "error" {
        return Err(Error::ServerStream(data.to_string()));
    }
    let wire: WireChunk = serde_json::from_str(data)
        .map_err(|e| Error::BadChunk(format!("{e}: {}", truncate(data, 200))))?;
    if let Some(err) = wire.error {
        return Err(Error::ServerStream(error_message(&err)));
    }
    Ok(StreamEvent::Chunk(chunk_from_wire(wire)))
}

fn chunk_from_wire(wire: WireChunk) -> Chunk {
    let mut chunk = Chunk::default();
    for choice in wire.choices.unwrap_or_default() {
        if let Some(text) = choice.text {
            chunk.content.push_str(&text);
        }
        if let Some(delta) = choice.delta {
            chunk.content.push_str(delta.content.as_deref().unwrap_or_default());
            chunk.reasoning.push_str(delta.reasoning_content.as_deref().unwrap_or_default());
        }
    }
    let cache_n = wire.timings.and_then(|t| t.cache_n);
    chunk.usage = wire.usage.map(|u| Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        cached_tokens: u.prompt_tokens_details.and_then(|d| d.cached_tokens).or(cache_n),
    });
    chunk
}

fn error_message(err: &Value) -> String {
    match err {
        Value::String(s) => s.clone(),
        Value::Object(o) => match o.get("message").and_then(Value::as_str) {
            Some(m) => m.to_string(),
            None => err.to_string(),
        },
        other => other.to_string(),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Parses a raw SSE body, delivered in arbitrary pieces, into stream events.
pub fn events<S, B, E>(body: S) -> impl Stream<Item = Result<StreamEvent, Error>>
where
    S: Stream<Item = Result<B, E>>,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    body.eventsource().map(|item| match item {
        Ok(event) => parse_data(&event.event, &event.data),
        Err(e) => Err(Error::Transport(e.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::stream;

    const BODY: &str = concat!(
        ": keep-alive comment\n\n",
        "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"héllo\"}}]}\r\n\r\n",
        "data: {\"choices\":[{\"text\":\" wörld ✓\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":2,",
        "\"prompt_tokens_details\":{\"cached_tokens\":8}}}\n\n",
        "data: [DONE]\n\n",
    );

    fn collect(pieces: Vec<Vec<u8>>) -> Vec<StreamEvent> {
        let body = stream::iter(pieces.into_iter().map(Ok::<_, std::io::Error>));
        block_on(events(body).map(|r| r.unwrap()).collect::<Vec<_>>())
    }

    fn expected() -> Vec<StreamEvent> {
        let usage =
            Usage { prompt_tokens: Some(12), completion_tokens: Some(2), cached_tokens: Some(8) };
        vec![
            StreamEvent::Chunk(Chunk::default()),
            StreamEvent::Chunk(Chunk { content: "héllo".into(), ..Chunk::default() }),
            StreamEvent::Chunk(Chunk { content: " wörld ✓".into(), ..Chunk::default() }),
            StreamEvent::Chunk(Chunk { usage: Some(usage), ..Chunk::default() }),
            StreamEvent::Done,
        ]
    }

    #[test]
    fn parses_whole_body() {
        assert_eq!(collect(vec![BODY.as_bytes().to_vec()]), expected());
    }

    #[test]
    fn parses_body_split_at_every_byte_boundary() {
        let bytes = BODY.as_bytes();
        // Every two-way split, including ones inside a multi-byte character and inside `\r\n`.
        for cut in 1..bytes.len() {
            let pieces = vec![bytes[..cut].to_vec(), bytes[cut..].to_vec()];
            assert_eq!(collect(pieces), expected(), "split at byte {cut}");
        }
    }

    #[test]
    fn parses_body_delivered_one_byte_at_a_time() {
        let pieces = BODY.as_bytes().iter().map(|b| vec![*b]).collect();
        assert_eq!(collect(pieces), expected());
    }

    #[test]
    fn reads_llama_cpp_cache_count_and_reasoning() {
        let data = r#"{"choices":[{"delta":{"reasoning_content":"hm"}}],
            "usage":{"prompt_tokens":5,"completion_tokens":1},"timings":{"cache_n":4}}"#;
        let StreamEvent::Chunk(chunk) = parse_data("", data).unwrap() else { panic!() };
        assert!(chunk.has_tokens());
        assert!(chunk.content.is_empty());
        assert_eq!(chunk.usage.unwrap().cached_tokens, Some(4));
    }

    #[test]
    fn surfaces_server_errors() {
        let err = parse_data("", r#"{"error":{"message":"overloaded","type":"x"}}"#).unwrap_err();
        assert!(err.to_string().contains("overloaded"), "{err}");
        assert!(parse_data("error", "boom").is_err());
        assert!(matches!(parse_data("", "{not json"), Err(Error::BadChunk(_))));
    }

    #[test]
    fn tolerates_null_fields() {
        let data = r#"{"choices":null,"usage":null}"#;
        assert_eq!(parse_data("", data).unwrap(), StreamEvent::Chunk(Chunk::default()));
    }
}
