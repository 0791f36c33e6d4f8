//! Google Gemini (`generativelanguage` API), streamed with `alt=sse`.

use eventsource_stream::Event;
use hearth_protocol::wire::{gemini, DecodeError};
use hearth_protocol::{CanonicalEvent, CanonicalRequest};

use super::http::{SseDecoder, Upstream};
use super::{ApiKey, EventStream, Provider, ProviderError};

// Constants.

pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com/v1beta";

// Struct.

pub struct GeminiProvider {
    upstream: Upstream,
    base_url: String,
    client: reqwest::Client,
}

impl GeminiProvider {
    pub fn new(
        name: impl Into<String>,
        base_url: Option<String>,
        key: Option<ApiKey>,
        client: reqwest::Client,
    ) -> Self {
        let base_url = base_url.unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
        Self {
            upstream: Upstream { name: name.into(), key },
            base_url: base_url.trim_end_matches('/').to_string(),
            client,
        }
    }
}

// Credentials: the key goes in `x-goog-api-key`, never in the URL, where it would end up in
// logs and error texts.

impl GeminiProvider {
    fn request(
        &self,
        model: &str,
        body: &gemini::GenerateContentRequest,
    ) -> reqwest::RequestBuilder {
        let url = stream_url(&self.base_url, model);
        let mut request = self.client.post(url).json(body);
        if let Some(key) = self.upstream.key_header("") {
            request = request.header("x-goog-api-key", key);
        }
        request
    }
}

// Trait impl.

#[async_trait::async_trait]
impl Provider for GeminiProvider {
    fn name(&self) -> &str {
        &self.upstream.name
    }

    async fn stream(
        &self,
        request: &CanonicalRequest,
        model: &str,
    ) -> Result<EventStream, ProviderError> {
        let body = gemini::from_canonical(request);
        let response = self.upstream.send(self.request(model, &body)).await?;
        Ok(self.upstream.decode(response, Decoder::default()))
    }
}

// Request.

/// Model names may come with or without Google's `models/` prefix.
fn stream_url(base_url: &str, model: &str) -> String {
    let model = model.strip_prefix("models/").unwrap_or(model);
    format!("{base_url}/models/{model}:streamGenerateContent?alt=sse")
}

// Response conversion.

#[derive(Default)]
struct Decoder(gemini::StreamDecoder);

impl SseDecoder for Decoder {
    fn push(&mut self, event: &Event) -> Result<Vec<CanonicalEvent>, DecodeError> {
        self.0.push(&event.data)
    }

    fn finish(&mut self) -> Result<Vec<CanonicalEvent>, DecodeError> {
        self.0.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_model_once() {
        let base = "http://127.0.0.1:1/v1beta";
        let expected =
            "http://127.0.0.1:1/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
        assert_eq!(stream_url(base, "gemini-2.5-flash"), expected);
        assert_eq!(stream_url(base, "models/gemini-2.5-flash"), expected);
    }
}
