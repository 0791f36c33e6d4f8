//! Anthropic messages.

use hearth_protocol::wire::anthropic;
use hearth_protocol::CanonicalRequest;

use super::http::{impl_sse_decoder, Api, Endpoint};

// Constants.

pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";

// Struct.

pub struct AnthropicApi {
    endpoint: Endpoint,
    /// Anthropic requires `max_tokens`; this fills it when the caller set none.
    default_max_tokens: u32,
}

impl AnthropicApi {
    pub fn new(base_url: Option<&str>, default_max_tokens: u32) -> Self {
        let base_url = base_url.unwrap_or(DEFAULT_BASE_URL).trim_end_matches('/');
        Self { endpoint: Endpoint::new(format!("{base_url}/v1/messages")), default_max_tokens }
    }
}

// Credentials: `x-api-key`, plus the API version every request must name.

impl Api for AnthropicApi {
    type Body = anthropic::MessagesRequest;
    const KEY_HEADER: (&'static str, &'static str) = ("x-api-key", "");
    const SYSTEM: &'static str = "anthropic";
    type Decoder = anthropic::StreamDecoder;

    fn body(&self, request: &CanonicalRequest, model: &str) -> Self::Body {
        anthropic::from_canonical(request, model, self.default_max_tokens)
    }

    fn post(&self, client: &reqwest::Client, _model: &str) -> reqwest::RequestBuilder {
        self.endpoint.post(client).header("anthropic-version", anthropic::API_VERSION)
    }
}

// Response conversion.

impl_sse_decoder!(anthropic::StreamDecoder);
