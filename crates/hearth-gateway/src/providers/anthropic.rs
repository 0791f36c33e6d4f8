//! Anthropic messages.

use eventsource_stream::Event;
use hearth_protocol::wire::{anthropic, DecodeError};
use hearth_protocol::{CanonicalEvent, CanonicalRequest};

use super::http::{Endpoint, SseDecoder, Upstream};
use super::{ApiKey, EventStream, Provider, ProviderError};

// Constants.

pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";

// Struct.

pub struct AnthropicProvider {
    upstream: Upstream,
    endpoint: Endpoint,
    client: reqwest::Client,
    /// Anthropic requires `max_tokens`; this fills it when the caller set none.
    default_max_tokens: u32,
}

impl AnthropicProvider {
    pub fn new(
        name: impl Into<String>,
        base_url: Option<String>,
        key: Option<ApiKey>,
        client: reqwest::Client,
        default_max_tokens: u32,
    ) -> Self {
        let base_url = base_url.unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
        Self {
            upstream: Upstream { name: name.into(), key },
            endpoint: Endpoint::new(format!("{}/v1/messages", base_url.trim_end_matches('/'))),
            client,
            default_max_tokens,
        }
    }
}

// Credentials: `x-api-key`, plus the API version every request must name.

impl AnthropicProvider {
    fn request(&self, body: &anthropic::MessagesRequest) -> reqwest::RequestBuilder {
        let mut request = self
            .endpoint
            .post(&self.client)
            .header("anthropic-version", anthropic::API_VERSION)
            .json(body);
        if let Some(key) = self.upstream.key_header("") {
            request = request.header("x-api-key", key);
        }
        request
    }
}

// Trait impl.

#[async_trait::async_trait]
impl Provider for AnthropicProvider {
    fn name(&self) -> &str {
        &self.upstream.name
    }

    async fn stream(
        &self,
        request: &CanonicalRequest,
        model: &str,
    ) -> Result<EventStream, ProviderError> {
        let body = anthropic::from_canonical(request, model, self.default_max_tokens);
        let response = self.upstream.send(self.request(&body)).await?;
        Ok(self.upstream.decode(response, Decoder::default()))
    }
}

// Response conversion.

#[derive(Default)]
struct Decoder(anthropic::StreamDecoder);

impl SseDecoder for Decoder {
    fn push(&mut self, event: &Event) -> Result<Vec<CanonicalEvent>, DecodeError> {
        self.0.push(&event.data)
    }

    fn finish(&mut self) -> Result<Vec<CanonicalEvent>, DecodeError> {
        self.0.finish()
    }
}
