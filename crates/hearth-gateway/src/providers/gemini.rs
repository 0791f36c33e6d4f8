//! Google Gemini (`generativelanguage` API), streamed with `alt=sse`.

use hearth_protocol::wire::gemini;
use hearth_protocol::CanonicalRequest;

use super::http::{impl_sse_decoder, Api};

// Constants.

pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com/v1beta";

// Struct.

pub struct GeminiApi {
    base_url: String,
}

impl GeminiApi {
    pub fn new(base_url: Option<&str>) -> Self {
        let base_url = base_url.unwrap_or(DEFAULT_BASE_URL);
        Self { base_url: base_url.trim_end_matches('/').to_string() }
    }
}

// Credentials: the key goes in `x-goog-api-key`, never in the URL, where it would end up in
// logs and error texts.

impl Api for GeminiApi {
    type Body = gemini::GenerateContentRequest;
    const KEY_HEADER: (&'static str, &'static str) = ("x-goog-api-key", "");
    const SYSTEM: &'static str = "gcp.gemini";
    type Decoder = gemini::StreamDecoder;

    fn body(&self, request: &CanonicalRequest, _model: &str) -> Self::Body {
        gemini::from_canonical(request)
    }

    fn post(&self, client: &reqwest::Client, model: &str) -> reqwest::RequestBuilder {
        client.post(stream_url(&self.base_url, model))
    }
}

// Request.

/// Model names may come with or without Google's `models/` prefix.
fn stream_url(base_url: &str, model: &str) -> String {
    let model = model.strip_prefix("models/").unwrap_or(model);
    format!("{base_url}/models/{model}:streamGenerateContent?alt=sse")
}

// Response conversion.

impl_sse_decoder!(gemini::StreamDecoder);

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
