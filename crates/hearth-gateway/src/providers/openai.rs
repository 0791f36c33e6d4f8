//! OpenAI chat completions, and any OpenAI-compatible server (vLLM, llama.cpp, Together, …).

use eventsource_stream::Event;
use hearth_protocol::wire::{openai, DecodeError};
use hearth_protocol::{CanonicalEvent, CanonicalRequest};

use super::http::{Endpoint, SseDecoder, Upstream};
use super::{ApiKey, EventStream, Provider, ProviderError};

// Constants.

pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

// Struct.

pub struct OpenAiProvider {
    upstream: Upstream,
    endpoint: Endpoint,
    client: reqwest::Client,
    /// OpenAI itself refuses parameters that compatible servers accept, and the reverse.
    compatible: bool,
}

impl OpenAiProvider {
    /// `compatible` selects the OpenAI-compatible dialect (`max_tokens`, `top_k`).
    pub fn new(
        name: impl Into<String>,
        base_url: Option<String>,
        key: Option<ApiKey>,
        client: reqwest::Client,
        compatible: bool,
    ) -> Self {
        let base_url = base_url.unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
        Self {
            upstream: Upstream { name: name.into(), key },
            endpoint: Endpoint::new(format!("{}/chat/completions", base_url.trim_end_matches('/'))),
            client,
            compatible,
        }
    }
}

// Credentials: `Authorization: Bearer <key>`; a compatible server may need none.

impl OpenAiProvider {
    fn request(&self, body: &openai::ChatCompletionRequest) -> reqwest::RequestBuilder {
        let mut request = self.endpoint.post(&self.client).json(body);
        if let Some(auth) = self.upstream.key_header("Bearer ") {
            request = request.header(reqwest::header::AUTHORIZATION, auth);
        }
        request
    }
}

// Trait impl.

#[async_trait::async_trait]
impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.upstream.name
    }

    async fn stream(
        &self,
        request: &CanonicalRequest,
        model: &str,
    ) -> Result<EventStream, ProviderError> {
        let body = wire_request(request, model, self.compatible);
        let response = self.upstream.send(self.request(&body)).await?;
        Ok(self.upstream.decode(response, Decoder::default()))
    }
}

// Request.

/// OpenAI's current models take `max_completion_tokens` and refuse `top_k` and the other engine
/// extensions; compatible servers know `max_tokens` and often the extensions.
fn wire_request(
    request: &CanonicalRequest,
    model: &str,
    compatible: bool,
) -> openai::ChatCompletionRequest {
    let mut body = openai::from_canonical(request, model);
    if !compatible {
        body.max_completion_tokens = body.max_tokens.take();
        body.top_k = None;
        body.min_p = None;
        body.repetition_penalty = None;
        body.ignore_eos = None;
    }
    body
}

// Response conversion.

#[derive(Default)]
struct Decoder(openai::StreamDecoder);

impl SseDecoder for Decoder {
    fn push(&mut self, event: &Event) -> Result<Vec<CanonicalEvent>, DecodeError> {
        self.0.push(&event.data)
    }

    fn finish(&mut self) -> Result<Vec<CanonicalEvent>, DecodeError> {
        self.0.finish()
    }

    fn whole(&mut self, body: &str) -> Option<Result<Vec<CanonicalEvent>, DecodeError>> {
        Some(self.0.push_whole(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::{Message, MessageRole};

    #[test]
    fn openai_and_compatible_dialects_differ_only_where_they_must() {
        let request = CanonicalRequest {
            model: "x".into(),
            messages: vec![Message::text(MessageRole::User, "hi")],
            max_tokens: Some(7),
            sampling: hearth_protocol::SamplingOptions {
                top_k: Some(3),
                ignore_eos: Some(true),
                ..Default::default()
            },
            ..Default::default()
        };
        let openai = wire_request(&request, "gpt", false);
        assert_eq!(
            (openai.max_tokens, openai.max_completion_tokens, openai.top_k),
            (None, Some(7), None)
        );
        let compat = wire_request(&request, "qwen", true);
        assert_eq!((compat.max_tokens, compat.top_k), (Some(7), Some(3)));
        assert_eq!(compat.stream, Some(true));
        assert_eq!((openai.ignore_eos, compat.ignore_eos), (None, Some(true)));
    }
}
