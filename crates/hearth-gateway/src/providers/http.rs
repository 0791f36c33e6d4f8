//! What the HTTP providers share: sending a request, turning an error answer into a
//! [`ProviderError`] (with `Retry-After`), and decoding an SSE body into canonical events.

use std::collections::VecDeque;
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures::stream::BoxStream;
use futures::StreamExt;
use hearth_protocol::wire::DecodeError;
use hearth_protocol::{CanonicalEvent, CanonicalRequest, OutputConstraint};
use reqwest::header::{HeaderMap, HeaderValue};

use super::{ApiKey, EventStream, Provider, ProviderError};

/// Upstream error bodies are short; a longer one is cut rather than held in memory.
const MAX_ERROR_BODY: usize = 16 * 1024;
/// Longest upstream error text passed on to the caller.
const MAX_ERROR_MESSAGE: usize = 500;

/// One wire format's stream decoder, fed one SSE event at a time.
pub(crate) trait SseDecoder: Send + 'static {
    fn push(&mut self, event: &Event) -> Result<Vec<CanonicalEvent>, DecodeError>;
    /// Called at the end of the body; errs if the stream was cut before its final event.
    fn finish(&mut self) -> Result<Vec<CanonicalEvent>, DecodeError>;
    /// A whole JSON answer to a streamed request (some OpenAI-compatible servers ignore
    /// `stream: true`), as the events its stream would have carried; `None` for a format whose
    /// servers always stream.
    fn whole(&mut self, _body: &str) -> Option<Result<Vec<CanonicalEvent>, DecodeError>> {
        None
    }
}

/// What differs between the upstream HTTP APIs: the request body, where a call goes and how
/// the key travels, and the stream decoder. Sending, error answers and decoding are
/// [`HttpProvider`]'s, once for all of them.
pub(crate) trait Api: Send + Sync + 'static {
    type Body: serde::Serialize + Send + Sync;
    type Decoder: SseDecoder + Default;

    /// The header that carries the key, and what goes before the key in it.
    const KEY_HEADER: (&'static str, &'static str);
    /// The API's vendor as `gen_ai.system` names it ([`Provider::system`]).
    const SYSTEM: &'static str;

    /// The body of a streamed call of `model`.
    fn body(&self, request: &CanonicalRequest, model: &str) -> Self::Body;
    /// A POST of a streamed call of `model`, with any header every call of the API needs.
    fn post(&self, client: &reqwest::Client, model: &str) -> reqwest::RequestBuilder;
    /// Whether the API's body carries `constraint` (see [`Provider::enforces`]).
    fn enforces(&self, constraint: &OutputConstraint) -> bool {
        let _ = constraint;
        false
    }
}

/// An upstream provider over HTTP, speaking the API `A`.
pub(crate) struct HttpProvider<A> {
    upstream: Upstream,
    client: reqwest::Client,
    api: A,
}

impl<A: Api> HttpProvider<A> {
    pub(crate) fn new(upstream: Upstream, client: reqwest::Client, api: A) -> Self {
        Self { upstream, client, api }
    }
}

#[async_trait::async_trait]
impl<A: Api> Provider for HttpProvider<A> {
    fn name(&self) -> &str {
        &self.upstream.name
    }

    fn system(&self) -> &'static str {
        A::SYSTEM
    }

    async fn stream(
        &self,
        request: &CanonicalRequest,
        model: &str,
    ) -> Result<EventStream, ProviderError> {
        let body = self.api.body(request, model);
        let mut call = self.api.post(&self.client, model).json(&body);
        let (header, prefix) = A::KEY_HEADER;
        if let Some(key) = self.upstream.key_header(prefix) {
            call = call.header(header, key);
        }
        let response = self.upstream.send(call).await?;
        Ok(self.upstream.decode(response, A::Decoder::default()))
    }

    fn enforces(&self, constraint: &OutputConstraint) -> bool {
        self.api.enforces(constraint)
    }
}

/// Makes a protocol crate stream decoder an [`SseDecoder`]: each SSE event's `data` goes to its
/// `push`; `whole = path` names its decoder of a whole JSON answer, where the API has one.
macro_rules! impl_sse_decoder {
    ($decoder:ty $(, whole = $whole:path)?) => {
        impl $crate::providers::http::SseDecoder for $decoder {
            fn push(
                &mut self,
                event: &eventsource_stream::Event,
            ) -> Result<Vec<hearth_protocol::CanonicalEvent>, hearth_protocol::wire::DecodeError> {
                <$decoder>::push(self, &event.data)
            }

            fn finish(
                &mut self,
            ) -> Result<Vec<hearth_protocol::CanonicalEvent>, hearth_protocol::wire::DecodeError> {
                <$decoder>::finish(self)
            }

            $(
                fn whole(
                    &mut self,
                    body: &str,
                ) -> Option<
                    Result<Vec<hearth_protocol::CanonicalEvent>, hearth_protocol::wire::DecodeError>,
                > {
                    Some($whole(self, body))
                }
            )?
        }
    };
}
pub(crate) use impl_sse_decoder;

/// A provider's fixed endpoint, parsed once: given a string, reqwest parses the URL (IDNA
/// mapping and all) again on every call, a few percent of the gateway's CPU per request. A URL
/// that does not parse is kept as given, so the call fails exactly as it would have.
#[derive(Clone)]
pub(crate) struct Endpoint(Result<reqwest::Url, String>);

impl Endpoint {
    pub fn new(url: String) -> Self {
        Self(reqwest::Url::parse(&url).map_err(|_| url))
    }

    pub fn post(&self, client: &reqwest::Client) -> reqwest::RequestBuilder {
        match &self.0 {
            Ok(url) => client.post(url.clone()),
            Err(raw) => client.post(raw.as_str()),
        }
    }
}

/// Who is being called, for error messages and redaction.
#[derive(Clone)]
pub(crate) struct Upstream {
    pub name: String,
    pub key: Option<ApiKey>,
}

impl Upstream {
    fn redact(&self, text: &str) -> String {
        match &self.key {
            Some(key) => key.redact(text),
            None => text.to_string(),
        }
    }

    /// A header value holding the key, marked sensitive so HTTP debug output hides it.
    pub fn key_header(&self, prefix: &str) -> Option<HeaderValue> {
        let key = self.key.as_ref()?;
        let mut value = HeaderValue::from_str(&format!("{prefix}{}", key.expose())).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// Sends `request`; a non-2xx answer becomes an error carrying the provider's message.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ProviderError> {
        let response = request.send().await.map_err(|e| self.request_error(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_after(response.headers());
        let body = read_capped(response).await;
        Err(ProviderError::Status {
            provider: self.name.clone(),
            status: status.as_u16(),
            message: self.redact(&error_message(&body)),
            retry_after,
        })
    }

    fn request_error(&self, error: &reqwest::Error) -> ProviderError {
        if error.is_timeout() {
            return ProviderError::Timeout {
                provider: self.name.clone(),
                during: "while connecting",
            };
        }
        ProviderError::Connect {
            provider: self.name.clone(),
            message: self.redact(&error_chain(error)),
        }
    }

    /// Decodes an SSE body with `decoder`. The stream ends after the terminal event; a cut,
    /// an unreadable event or an in-band error ends it with an `Err`.
    pub fn decode<D: SseDecoder>(&self, response: reqwest::Response, decoder: D) -> EventStream {
        if is_json(response.headers()) {
            let upstream = self.clone();
            let state = async move { upstream.decode_whole(response, decoder).await };
            return futures::stream::once(state)
                .flat_map(|state| futures::stream::unfold(state, DecodeState::next_item))
                .boxed();
        }
        let state = DecodeState {
            upstream: self.clone(),
            sse: response.bytes_stream().eventsource().boxed(),
            decoder,
            pending: VecDeque::new(),
            failure: None,
            done: false,
        };
        futures::stream::unfold(state, DecodeState::next_item).boxed()
    }

    /// A JSON body where a stream was asked for: decoded whole, then handed out as the stream's
    /// events would have been (the same terminal and error handling).
    async fn decode_whole<D: SseDecoder>(
        self,
        response: reqwest::Response,
        mut decoder: D,
    ) -> DecodeState<D> {
        let decoded = match response.text().await {
            Ok(body) => decoder.whole(&body).unwrap_or_else(|| {
                Err(DecodeError::Malformed {
                    format: "SSE",
                    message: "the server answered with JSON where a stream was asked for".into(),
                })
            }),
            Err(e) => Err(DecodeError::Malformed { format: "JSON", message: error_chain(&e) }),
        };
        let mut state = DecodeState {
            upstream: self,
            sse: futures::stream::empty().boxed(),
            decoder,
            pending: VecDeque::new(),
            failure: None,
            done: false,
        };
        match decoded {
            Ok(events) => state.pending.extend(events),
            Err(e) => state.failure = Some(e),
        }
        state
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"))
}

type SseStream =
    BoxStream<'static, Result<Event, eventsource_stream::EventStreamError<reqwest::Error>>>;

struct DecodeState<D> {
    upstream: Upstream,
    sse: SseStream,
    decoder: D,
    pending: VecDeque<CanonicalEvent>,
    /// A failure to report once the pending events are out.
    failure: Option<DecodeError>,
    done: bool,
}

impl<D: SseDecoder> DecodeState<D> {
    async fn next_item(mut self) -> Option<(Result<CanonicalEvent, ProviderError>, Self)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((self.emit(event), self));
            }
            if let Some(failure) = self.failure.take() {
                self.done = true;
                let error = self.stream_error(&failure);
                return Some((Err(error), self));
            }
            if self.done {
                return None;
            }
            let decoded = match self.sse.next().await {
                Some(Ok(event)) => self.decoder.push(&event),
                Some(Err(e)) => {
                    Err(DecodeError::Malformed { format: "SSE", message: transport_text(&e) })
                }
                None => {
                    self.done = true;
                    self.decoder.finish()
                }
            };
            match decoded {
                Ok(events) => self.pending.extend(events),
                Err(e) => {
                    self.done = true;
                    let error = self.stream_error(&e);
                    return Some((Err(error), self));
                }
            }
        }
    }

    fn stream_error(&self, error: &DecodeError) -> ProviderError {
        let message = self.upstream.redact(&error.to_string());
        ProviderError::Stream { provider: self.upstream.name.clone(), message }
    }

    /// Passes an event on; the terminal one ends the stream, an error event becomes an `Err`.
    fn emit(&mut self, event: CanonicalEvent) -> Result<CanonicalEvent, ProviderError> {
        if !event.is_terminal() {
            return Ok(event);
        }
        self.done = true;
        self.pending.clear();
        match event {
            CanonicalEvent::Error { mut error } => {
                error.message = self.upstream.redact(&error.message);
                Err(ProviderError::InBand { provider: self.upstream.name.clone(), error })
            }
            finish => Ok(finish),
        }
    }
}

/// A transport failure mid-body (a reset connection) reads better with its causes.
fn transport_text(error: &eventsource_stream::EventStreamError<reqwest::Error>) -> String {
    match error {
        eventsource_stream::EventStreamError::Transport(e) => {
            format!("connection failed mid-stream: {}", error_chain(e))
        }
        other => other.to_string(),
    }
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn read_capped(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_ERROR_BODY.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    body
}

/// The `error.message` every provider puts in its error bodies, else the body's text.
fn error_message(body: &[u8]) -> String {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let message = json.as_ref().and_then(|v| {
        v.pointer("/error/message").or_else(|| v.get("message")).and_then(|m| m.as_str())
    });
    let text = match message {
        Some(m) => m.to_string(),
        None => String::from_utf8_lossy(body).trim().to_string(),
    };
    match text.char_indices().nth(MAX_ERROR_MESSAGE) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None if text.is_empty() => "(no message)".to_string(),
        None => text,
    }
}

/// `retry-after-ms` (OpenAI), `Retry-After` in seconds, or `Retry-After` as an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return duration_from_secs(ms / 1000.0);
    }
    let value = text("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return duration_from_secs(secs);
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

fn duration_from_secs(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_milliseconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn error_messages_come_from_the_body() {
        assert_eq!(error_message(br#"{"error": {"message": "bad model"}}"#), "bad model");
        assert_eq!(error_message(b"  plain  "), "plain");
        assert_eq!(error_message(b""), "(no message)");
        assert!(error_message("x".repeat(2000).as_bytes()).ends_with('…'));
    }
}
