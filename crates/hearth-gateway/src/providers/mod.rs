//! Provider adapters: one narrow trait, one file per provider. Every adapter always streams
//! upstream and answers with canonical events; non-streamed answers are assembled from them.

mod anthropic;
mod gemini;
mod http;
mod local;
mod openai;
mod replicas;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use hearth_protocol::{CanonicalEvent, CanonicalRequest, ErrorKind, OutputConstraint, StreamError};

use crate::config::{ConfigError, GatewayConfig, ProviderKind};

use anthropic::AnthropicApi;
use gemini::GeminiApi;
use http::{HttpProvider, Upstream};
pub use local::LocalProvider;
use openai::{OpenAiApi, OpenAiProvider};
use replicas::EngineReplicas;

/// A provider's answer. It ends after its terminal event, or with an `Err` (an in-band error
/// event of the provider arrives as `Err` too, so the router can fail over on it).
pub type EventStream = BoxStream<'static, Result<CanonicalEvent, ProviderError>>;

#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// The configured name, as routes spell it (`<name>/<model>`).
    fn name(&self) -> &str;

    /// What serves the model, as OpenTelemetry's GenAI conventions name it in `gen_ai.system`
    /// (`openai`, `anthropic`, `gcp.gemini`; `hearth` for Hearth's own engines).
    fn system(&self) -> &'static str {
        "_OTHER"
    }

    /// Starts one streamed call of `model`. Returns once the provider has accepted the request
    /// (the response headers are in); the events follow on the stream.
    async fn stream(
        &self,
        request: &CanonicalRequest,
        model: &str,
    ) -> Result<EventStream, ProviderError>;

    /// Whether the provider serves a [`hearth_protocol::RawPrompt`] (text or token ids with no
    /// chat template). Only the local engine does; chat APIs take conversations.
    fn takes_raw_prompts(&self) -> bool {
        false
    }

    /// Whether the wait for the first content counts against the stall budgets
    /// (`ttfb_timeout_ms`, and `between_token_timeout_ms` before any content). An upstream that
    /// says nothing may be down, so it is cut and the next route tried. The local engine's wait
    /// is its own queue and prefill, work it is doing, which a long prompt on a CPU can make
    /// longer than any fixed budget; once it streams, the between-token budget applies as usual.
    fn first_content_has_deadline(&self) -> bool {
        true
    }

    /// Whether the provider makes its answer match `constraint` (structured outputs). One that
    /// does not is skipped for such a request, never sent it with the constraint dropped.
    fn enforces(&self, constraint: &OutputConstraint) -> bool {
        let _ = constraint;
        false
    }
}

/// An API key. It prints as `[redacted]`, and error texts that might echo it are scrubbed, so
/// it never reaches a log, an error or a response.
#[derive(Clone)]
pub struct ApiKey(Arc<str>);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(Arc::from(key.into()))
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the key replaced.
    pub(crate) fn redact(&self, text: &str) -> String {
        if self.0.is_empty() {
            text.to_string()
        } else {
            text.replace(&*self.0, "[redacted]")
        }
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

/// Why a call failed. Messages never hold an API key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("{provider}: could not connect: {message}")]
    Connect { provider: String, message: String },
    #[error("{provider}: HTTP {status}: {message}")]
    Status { provider: String, status: u16, message: String, retry_after: Option<Duration> },
    #[error("{provider}: timed out {during}")]
    Timeout { provider: String, during: &'static str },
    /// The stream broke: reset, malformed event, or cut before its end.
    #[error("{provider}: stream failed: {message}")]
    Stream { provider: String, message: String },
    /// The provider sent an error event inside a stream it had begun.
    #[error("{provider}: {}", error.message)]
    InBand { provider: String, error: StreamError },
    /// This route cannot serve this request (tools on a local model); another route may.
    #[error("{message}")]
    Unsupported { message: String },
    /// The request itself is wrong for this model (a prompt longer than its context); `param`
    /// and `code` say where and why, when the model knows.
    #[error("{message}")]
    Rejected { message: String, param: Option<String>, code: Option<String> },
    /// The route is busy; it may take the request after `retry_after`.
    #[error("{provider}: overloaded: {message}")]
    Overloaded { provider: String, message: String, retry_after: Option<Duration> },
}

/// What the router does after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Transient: retry this route (after a backoff), then fail over.
    Retry,
    /// This route is wrong for the request or misconfigured: go straight to the next route.
    NextRoute,
    /// The caller's request is at fault: no other route would do better.
    Fatal,
}

impl ProviderError {
    pub fn disposition(&self) -> Disposition {
        match self {
            Self::Connect { .. } | Self::Timeout { .. } | Self::Stream { .. } => Disposition::Retry,
            Self::Overloaded { .. } => Disposition::Retry,
            Self::Status { status, .. } => match status {
                408 | 409 | 425 | 429 | 500..=599 => Disposition::Retry,
                // A bad key, a forbidden project or an unknown model name are this route's
                // configuration, not the caller's fault.
                401 | 403 | 404 => Disposition::NextRoute,
                _ => Disposition::Fatal,
            },
            Self::InBand { error, .. } => match error.kind {
                ErrorKind::InvalidRequest => Disposition::Fatal,
                _ => Disposition::Retry,
            },
            Self::Unsupported { .. } => Disposition::NextRoute,
            Self::Rejected { .. } => Disposition::Fatal,
        }
    }

    /// Whether the error says something about the route's health. A caller's bad request or a
    /// request the route cannot serve (tools on a local model) must not cool a route down.
    pub fn counts_against_route(&self) -> bool {
        !matches!(self, Self::Unsupported { .. } | Self::Rejected { .. })
            && self.disposition() != Disposition::Fatal
    }

    /// How long the provider asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } | Self::Overloaded { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The canonical kind a caller sees.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Connect { .. } | Self::Stream { .. } => ErrorKind::Upstream,
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::Overloaded { .. } => ErrorKind::Overloaded,
            Self::Status { status: 429, .. } => ErrorKind::Overloaded,
            Self::Status { status: 400..=499, .. } => ErrorKind::InvalidRequest,
            Self::Status { .. } => ErrorKind::Upstream,
            Self::InBand { error, .. } => error.kind,
            Self::Unsupported { .. } | Self::Rejected { .. } => ErrorKind::InvalidRequest,
        }
    }

    pub fn to_stream_error(&self) -> StreamError {
        let error = StreamError::new(self.kind(), self.to_string());
        match self {
            Self::Rejected { param, code, .. } => {
                StreamError { param: param.clone(), code: code.clone(), ..error }
            }
            _ => error,
        }
    }
}

/// Builds the `[[providers]]` of a validated config. Keys come from `env`; a provider that names
/// a variable that is not set is an error, not a provider that fails every call later.
pub(crate) fn build_providers(
    config: &GatewayConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Arc<dyn Provider>>, ConfigError> {
    let client = reqwest::Client::builder()
        .connect_timeout(config.gateway.connect_timeout())
        .build()
        .map_err(|e| ConfigError::new("gateway", format!("cannot build the HTTP client: {e}")))?;
    let mut out: Vec<Arc<dyn Provider>> = Vec::new();
    for (i, p) in config.providers.iter().enumerate() {
        let key = match &p.api_key_env {
            None => None,
            Some(var) => Some(ApiKey::new(env(var).ok_or_else(|| {
                ConfigError::new(
                    format!("providers[{i}].api_key_env"),
                    format!("environment variable `{var}` is not set"),
                )
            })?)),
        };
        let upstream = Upstream { name: p.name.clone(), key };
        let (url, client) = (p.base_url.as_deref(), client.clone());
        out.push(match p.kind {
            ProviderKind::Openai => Arc::new(OpenAiProvider::new(upstream, client, url)),
            ProviderKind::OpenaiCompatible => {
                Arc::new(HttpProvider::new(upstream, client, OpenAiApi::new(url, true)))
            }
            ProviderKind::Anthropic => {
                let max_tokens = config.gateway.anthropic_default_max_tokens;
                Arc::new(HttpProvider::new(upstream, client, AnthropicApi::new(url, max_tokens)))
            }
            ProviderKind::Gemini => {
                Arc::new(HttpProvider::new(upstream, client, GeminiApi::new(url)))
            }
            ProviderKind::Hearth => {
                Arc::new(EngineReplicas::new(upstream, client, &p.base_urls, p.placement))
            }
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_never_print() {
        let key = ApiKey::new("sk-secret");
        assert_eq!(format!("{key:?}"), "ApiKey([redacted])");
        assert_eq!(key.redact("bad key sk-secret given"), "bad key [redacted] given");
    }

    #[test]
    fn caller_errors_do_not_fail_over_but_outages_do() {
        let status = |status| ProviderError::Status {
            provider: "p".into(),
            status,
            message: String::new(),
            retry_after: None,
        };
        assert_eq!(status(400).disposition(), Disposition::Fatal);
        assert_eq!(status(422).disposition(), Disposition::Fatal);
        assert_eq!(status(401).disposition(), Disposition::NextRoute);
        assert_eq!(status(429).disposition(), Disposition::Retry);
        assert_eq!(status(503).disposition(), Disposition::Retry);
        assert_eq!(status(429).kind(), ErrorKind::Overloaded);
        assert_eq!(status(400).kind(), ErrorKind::InvalidRequest);
        assert!(!status(400).counts_against_route() && status(401).counts_against_route());
        assert!(!ProviderError::Unsupported { message: String::new() }.counts_against_route());
    }
}
