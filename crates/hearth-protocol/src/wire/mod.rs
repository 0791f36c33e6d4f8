//! Wire formats: OpenAI chat completions and responses, Anthropic messages and Gemini
//! generateContent.
//!
//! Each format module offers the same five things, so a surface or an adapter written for one
//! reads like the others:
//! - `to_canonical(wire request) -> CanonicalRequest` for entry surfaces;
//! - `from_canonical(&CanonicalRequest, model) -> wire request` for provider adapters;
//! - `response_from_canonical(&CanonicalResponse, ..)` for non-streamed answers;
//! - `StreamDecoder`: a provider's SSE events → canonical events;
//! - `StreamEncoder`: canonical events → the exact SSE frames that format's clients expect.
//!
//! Parsing SSE bytes is the caller's job (the gateway uses an SSE parser crate); decoders take
//! one event's name and data at a time.

pub mod anthropic;
pub mod gemini;
pub mod openai;
pub mod responses;

/// One server-sent event to write: `event: <event>` (when set) and `data: <data>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseFrame {
    pub event: Option<&'static str>,
    pub data: String,
}

impl SseFrame {
    pub fn data(data: String) -> Self {
        Self { event: None, data }
    }

    pub fn named(event: &'static str, data: String) -> Self {
        Self { event: Some(event), data }
    }

    /// The frame as text, with an `id:` line when given (the run's sequence number, so a client
    /// can resume from it).
    pub fn to_text(&self, id: Option<u64>) -> String {
        let mut out = String::with_capacity(self.data.len() + 32);
        if let Some(id) = id {
            out.push_str(&format!("id: {id}\n"));
        }
        if let Some(event) = self.event {
            out.push_str(&format!("event: {event}\n"));
        }
        // A data value with newlines must be split over several `data:` lines.
        for line in self.data.split('\n') {
            out.push_str("data: ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
        out
    }
}

/// A provider's stream could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed {format} stream event: {message}")]
    Malformed { format: &'static str, message: String },
    #[error("the {format} stream ended before its final event")]
    Truncated { format: &'static str },
}

/// The schema of a tool that takes no arguments.
pub(crate) fn empty_object_schema() -> serde_json::Value {
    serde_json::json!({"type": "object", "properties": {}})
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serializing these plain data types cannot fail: no maps with non-string keys, no
    // fallible Serialize impls.
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_render_with_id_event_and_data() {
        let f = SseFrame::named("ping", "{}".into());
        assert_eq!(f.to_text(Some(3)), "id: 3\nevent: ping\ndata: {}\n\n");
        assert_eq!(SseFrame::data("a\nb".into()).to_text(None), "data: a\ndata: b\n\n");
    }
}
