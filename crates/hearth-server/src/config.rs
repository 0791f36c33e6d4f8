//! How the HTTP server behaves; every limit has a default that suits one machine.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Settings of the HTTP server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// After the shutdown signal, how long in-flight requests may run before they are cancelled.
    pub shutdown_grace: Duration,
    /// Largest request body accepted; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Interval of SSE keep-alive comments, so proxies do not close a quiet stream.
    pub sse_keep_alive: Duration,
    /// Finished Cog predictions kept for idempotent `PUT` and cancel; the oldest go first.
    pub max_retained_predictions: usize,
    /// Whether `POST /shutdown` (Cog) may stop the daemon. Off by default: one daemon serves
    /// many models, so one model's caller should not be able to stop the others.
    pub allow_shutdown_route: bool,
    /// When model setup began, reported by Cog's health check; defaults to when the state was made.
    pub setup_started_at: Option<DateTime<Utc>>,
    pub webhook: WebhookConfig,
    /// How long a connection may take to send a request's head, counted from when the server
    /// starts waiting for it; a kept-alive connection idle this long is closed too.
    pub header_read_timeout: Duration,
    /// Longest pause allowed between two pieces of a request body; a body that stalls longer
    /// gets 408 and its connection is closed.
    pub body_read_timeout: Duration,
    /// Open connections served at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Largest file a Python predictor's `Path`/`File` input may fetch.
    pub max_input_file_bytes: u64,
    /// Cog's `--upload-url`: file outputs of Python predictors are `PUT` to
    /// `{upload_url}/{filename}` and answered as that URL; unset, they are `data:` URIs.
    pub upload_url: Option<String>,
    /// How long a stored response (`/v1/responses` with `store`) is kept for retrieval and for
    /// `previous_response_id`.
    pub responses_ttl: Duration,
    /// Memory all stored responses may hold together; the oldest are dropped first.
    pub responses_max_bytes: usize,
    /// Spans are exported (`[telemetry]`): each request's span takes the caller's
    /// `traceparent` as its parent.
    pub traces: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            shutdown_grace: Duration::from_secs(30),
            max_body_bytes: 8 << 20,
            sse_keep_alive: Duration::from_secs(15),
            max_retained_predictions: 1024,
            allow_shutdown_route: false,
            setup_started_at: None,
            webhook: WebhookConfig::default(),
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_input_file_bytes: 100 << 20,
            upload_url: None,
            responses_ttl: Duration::from_secs(3_600),
            responses_max_bytes: 64 << 20,
            traces: false,
        }
    }
}

/// How Cog webhooks are delivered.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Limit on one delivery attempt.
    pub request_timeout: Duration,
    /// Least time between two `output` webhooks of one prediction (Cog sends at most two a second).
    pub output_interval: Duration,
    /// Attempts at the terminal webhook, the first included; only it is retried.
    pub max_attempts: u32,
    /// Wait before the first retry; each later retry waits twice as long as the one before.
    pub initial_backoff: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            output_interval: Duration::from_millis(500),
            max_attempts: 6,
            initial_backoff: Duration::from_millis(500),
        }
    }
}
