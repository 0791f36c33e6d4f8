//! The body of `POST /predictions` and `PUT /predictions/{id}`, and how the caller wants the
//! answer (sync JSON, SSE, or async with webhooks).

use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap};
use reqwest::Url;
use serde_json::{Map, Value};

use super::error::{CogError, Detail};
use super::webhook::{EventFilter, WebhookTarget};
use crate::body::read_object;
use crate::state::AppState;

/// Longest prediction id accepted; ids travel in URLs and logs.
const MAX_ID_LEN: usize = 256;

pub(crate) struct PredictionRequest {
    pub id: Option<String>,
    pub input: Option<Value>,
    pub webhook: Option<WebhookTarget>,
    /// The body's other fields (Replicate's `version` and `model`); Cog ignores them.
    pub extra: Map<String, Value>,
}

/// How the caller wants the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Wait and answer with the finished prediction.
    Sync,
    /// `Accept: text/event-stream`: stream the prediction as server-sent events.
    Stream,
    /// `Prefer: respond-async`: answer 202 at once; progress goes to the webhook.
    Async,
}

impl Mode {
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        let has = |name, needle| {
            headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.to_ascii_lowercase().contains(needle)))
        };
        if has(header::ACCEPT, "text/event-stream") {
            Mode::Stream
        } else if has(header::HeaderName::from_static("prefer"), "respond-async") {
            Mode::Async
        } else {
            Mode::Sync
        }
    }
}

impl FromRequest<AppState> for PredictionRequest {
    type Rejection = CogError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, CogError> {
        let mut body = read_object(req, state, state.config().max_body_bytes).await?;
        // Cog's request model ignores fields it does not know (`created_at`, `context`, …).
        let id = parse_id(body.remove("id"))?;
        let webhook = parse_webhook(&mut body)?;
        let input = body.remove("input");
        Ok(Self { id, input, webhook, extra: body })
    }
}

fn invalid(field: &str, msg: impl Into<String>) -> CogError {
    CogError::Invalid(vec![Detail::at(&["body", field], msg)])
}

fn parse_id(value: Option<Value>) -> Result<Option<String>, CogError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_ID_LEN => Ok(Some(id)),
        Some(_) => {
            Err(invalid("id", format!("must be a non-empty string of at most {MAX_ID_LEN} bytes")))
        }
    }
}

fn parse_webhook(body: &mut Map<String, Value>) -> Result<Option<WebhookTarget>, CogError> {
    let filter = match body.remove("webhook_events_filter") {
        None | Some(Value::Null) => EventFilter::default(),
        Some(Value::Array(names)) => {
            let names: Option<Vec<&str>> = names.iter().map(Value::as_str).collect();
            let names = names
                .ok_or_else(|| invalid("webhook_events_filter", "must be a list of event names"))?;
            EventFilter::from_names(names).map_err(|name| {
                let known = EventFilter::NAMES.join(", ");
                invalid(
                    "webhook_events_filter",
                    format!("unknown event `{name}`; events are: {known}"),
                )
            })?
        }
        Some(_) => return Err(invalid("webhook_events_filter", "must be a list of event names")),
    };
    let url = match body.remove("webhook") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(url)) => url,
        Some(_) => return Err(invalid("webhook", "must be a URL string")),
    };
    match Url::parse(&url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => {
            Ok(Some(WebhookTarget { url, filter }))
        }
        Ok(_) => Err(invalid("webhook", "must be an http or https URL")),
        Err(err) => Err(invalid("webhook", format!("is not a valid URL: {err}"))),
    }
}
