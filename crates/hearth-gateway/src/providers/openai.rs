//! OpenAI chat completions, and any OpenAI-compatible server (vLLM, llama.cpp, Together, …);
//! OpenAI's Responses API for requests that came in through it.

use hearth_protocol::wire::{openai, responses};
use hearth_protocol::{CanonicalRequest, OutputConstraint};

use super::http::{impl_sse_decoder, Api, Endpoint, HttpProvider, Upstream};
use super::{EventStream, Provider, ProviderError};

// Constants.

pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

// Struct.

/// OpenAI's chat completions API, or a compatible server's.
pub struct OpenAiApi {
    endpoint: Endpoint,
    /// OpenAI itself refuses parameters that compatible servers accept, and the reverse.
    compatible: bool,
}

impl OpenAiApi {
    /// `compatible` selects the OpenAI-compatible dialect (`max_tokens`, `top_k`).
    pub fn new(base_url: Option<&str>, compatible: bool) -> Self {
        let base_url = base_url.unwrap_or(DEFAULT_BASE_URL).trim_end_matches('/');
        Self { endpoint: Endpoint::new(format!("{base_url}/chat/completions")), compatible }
    }
}

// Credentials: `Authorization: Bearer <key>`; a compatible server may need none.

impl Api for OpenAiApi {
    type Body = openai::ChatCompletionRequest;
    const KEY_HEADER: (&'static str, &'static str) = ("authorization", "Bearer ");
    const SYSTEM: &'static str = "openai";
    type Decoder = openai::StreamDecoder;

    fn body(&self, request: &CanonicalRequest, model: &str) -> Self::Body {
        wire_request(request, model, self.compatible)
    }

    fn post(&self, client: &reqwest::Client, _model: &str) -> reqwest::RequestBuilder {
        self.endpoint.post(client)
    }

    /// OpenAI's `response_format` carries JSON Schemas and JSON objects, not grammars.
    fn enforces(&self, constraint: &OutputConstraint) -> bool {
        constraint.json_schema().is_some()
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

// Response conversion: OpenAI-compatible servers may answer a streamed request with one JSON
// body, which decodes as the stream it stands for.

impl_sse_decoder!(openai::StreamDecoder, whole = openai::StreamDecoder::push_whole);

/// OpenAI's Responses API (`/v1/responses`).
pub struct OpenAiResponsesApi {
    endpoint: Endpoint,
}

impl OpenAiResponsesApi {
    pub fn new(base_url: Option<&str>) -> Self {
        let base_url = base_url.unwrap_or(DEFAULT_BASE_URL).trim_end_matches('/');
        Self { endpoint: Endpoint::new(format!("{base_url}/responses")) }
    }
}

impl Api for OpenAiResponsesApi {
    type Body = responses::CreateResponse;
    const KEY_HEADER: (&'static str, &'static str) = ("authorization", "Bearer ");
    const SYSTEM: &'static str = "openai";
    type Decoder = responses::StreamDecoder;

    fn body(&self, request: &CanonicalRequest, model: &str) -> Self::Body {
        responses::from_canonical(request, model)
    }

    fn post(&self, client: &reqwest::Client, _model: &str) -> reqwest::RequestBuilder {
        self.endpoint.post(client)
    }

    /// `text.format` carries JSON Schemas and JSON objects, as `response_format` does.
    fn enforces(&self, constraint: &OutputConstraint) -> bool {
        constraint.json_schema().is_some()
    }
}

impl_sse_decoder!(responses::StreamDecoder);

/// OpenAI itself: chat completions, or its Responses API for a request that came in through it
/// (as LiteLLM does), so that models only the Responses API serves work behind `/v1/responses`.
/// OpenAI-compatible servers are called on chat completions only, which all of them serve.
pub struct OpenAiProvider {
    chat: HttpProvider<OpenAiApi>,
    responses: HttpProvider<OpenAiResponsesApi>,
}

impl OpenAiProvider {
    pub(crate) fn new(upstream: Upstream, client: reqwest::Client, base_url: Option<&str>) -> Self {
        let responses = OpenAiResponsesApi::new(base_url);
        Self {
            chat: HttpProvider::new(
                upstream.clone(),
                client.clone(),
                OpenAiApi::new(base_url, false),
            ),
            responses: HttpProvider::new(upstream, client, responses),
        }
    }
}

#[async_trait::async_trait]
impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        self.chat.name()
    }

    fn system(&self) -> &'static str {
        "openai"
    }

    async fn stream(
        &self,
        request: &CanonicalRequest,
        model: &str,
    ) -> Result<EventStream, ProviderError> {
        if request.via_responses_api {
            self.responses.stream(request, model).await
        } else {
            self.chat.stream(request, model).await
        }
    }

    fn enforces(&self, constraint: &OutputConstraint) -> bool {
        self.chat.enforces(constraint)
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
