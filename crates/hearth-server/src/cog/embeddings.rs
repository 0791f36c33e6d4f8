//! The Cog container API of an embedding model, at `/cog/{model}/…` and, when it is the default
//! model, at the root.
//!
//! A middleware in front of the Cog routes ([`hook`]) answers requests for embedding models and
//! passes every other request on, so the generative Cog handlers never see an embedding model.
//! `POST /predictions` (and `PUT /predictions/{id}`) take `{"input": {"text": "…"}}` or
//! `{"input": {"texts": ["…", …]}}` and answer a finished prediction whose `output` is a list of
//! vectors, one per text. Predictions are answered synchronously whatever `Prefer` or `Accept`
//! say: an embedding takes milliseconds, so there is nothing to stream or to call back about.
//! `/openapi.json` describes exactly that input and output.

use axum::extract::{FromRequest, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use hearth_gateway::{EmbedError, EmbedInput, EmbedRunError, EmbeddingModel};
use serde_json::{json, Map, Value};

use super::error::{CogError, Detail};
use super::request::PredictionRequest;
use super::schema;
use super::target::{addressed, Addressed};
use super::{handlers, prediction};
use crate::relay;
use crate::state::AppState;

/// An embedding model addressed by a Cog route.
type Target = Addressed<EmbeddingModel>;

fn target(state: &AppState, path: &str) -> Option<Target> {
    let catalog = state.catalog();
    addressed(
        path,
        |name| catalog.embedder(name).cloned(),
        || catalog.default_embedder().map(|(name, model)| (name.to_owned(), model.clone())),
    )
}

/// Answers the Cog routes of embedding models; passes everything else on.
pub(crate) async fn hook(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(target) = target(&state, request.uri().path()) else {
        return next.run(request).await;
    };
    let method = request.method().clone();
    let route = target.route.as_str();
    let prediction_id = route
        .strip_prefix("/predictions/")
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .map(str::to_owned);
    match (method, route) {
        (Method::GET, "/") => index(&target),
        (Method::GET, "/health-check") => health_check(&state, &target),
        (Method::GET, "/openapi.json") => openapi(&target),
        (Method::POST, "/predictions") => predict(state, target, None, request).await,
        (Method::PUT, _) if prediction_id.is_some() => {
            predict(state, target, prediction_id, request).await
        }
        // Nothing runs long enough to be cancelled, so no prediction id is ever known.
        (Method::POST, r) if r.starts_with("/predictions/") && r.ends_with("/cancel") => {
            let id = r.trim_start_matches("/predictions/").trim_end_matches("/cancel");
            CogError::UnknownPrediction(id.to_owned()).into_response()
        }
        _ => next.run(request).await,
    }
}

fn index(target: &Target) -> Response {
    Json(handlers::index_body(&target.prefix)).into_response()
}

fn health_check(state: &AppState, target: &Target) -> Response {
    let busy = target
        .model
        .cog
        .max_concurrency()
        .is_some_and(|max| target.model.embedder.num_waiting() >= max);
    let status = if busy { "BUSY" } else { "READY" };
    Json(handlers::health_body(state, status, "succeeded", "")).into_response()
}

/// The generative document with the embedding model's own `Input` and `Output`.
fn openapi(target: &Target) -> Response {
    let info = target.model.embedder.info();
    let mut document = schema::openapi(&target.name, &target.prefix, info.max_input_tokens);
    // Answered synchronously whatever `Accept` says.
    schema::set_streaming(&mut document, &target.prefix, false);
    let dimension = info.dimension;
    let schemas = &mut document["components"]["schemas"];
    schemas["Input"] = json!({
        "title": "Input",
        "type": "object",
        "description": "Give exactly one of `text` and `texts`.",
        "properties": {
            "text": {
                "title": "Text",
                "type": "string",
                "description": "One text to embed.",
                "x-order": 0,
            },
            "texts": {
                "title": "Texts",
                "type": "array",
                "items": { "type": "string" },
                "description": "Several texts to embed, one vector each.",
                "x-order": 1,
            },
        },
    });
    schemas["Output"] = json!({
        "title": "Output",
        "type": "array",
        "description": format!(
            "One embedding per input text, each {dimension} numbers{}.",
            if info.normalize { " of unit length" } else { "" }
        ),
        "items": {
            "type": "array",
            "items": { "type": "number" },
            "minItems": dimension,
            "maxItems": dimension,
        },
    });
    Json(document).into_response()
}

async fn predict(
    state: AppState,
    target: Target,
    url_id: Option<String>,
    request: Request,
) -> Response {
    match run_prediction(state, target, url_id, request).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn run_prediction(
    state: AppState,
    target: Target,
    url_id: Option<String>,
    request: Request,
) -> Result<Response, CogError> {
    let log = super::begin::log_options(request.headers())?;
    let body = PredictionRequest::from_request(request, &state).await?;
    if let (Some(url_id), Some(body_id)) = (&url_id, &body.id) {
        if url_id != body_id {
            let msg = format!("prediction ID must match the ID supplied in the URL (`{url_id}`)");
            return Err(CogError::Invalid(vec![Detail::at(&["body", "id"], msg)]));
        }
    }
    let (field, texts) = parse_input(body.input.as_ref())?;
    let inputs: Vec<EmbedInput> = texts.into_iter().map(EmbedInput::Text).collect();
    let created_at = Utc::now();
    let caller = hearth_gateway::Caller { log, ..crate::auth::keyed_caller() };
    let answer = state.gateway().embed(&target.name, inputs, caller).await;
    let completed_at = Utc::now();
    let (run_id, route, status, output, error, input_tokens) = match answer {
        Ok(run) => {
            let output = f32_rows(&run.embeddings.vectors);
            let tokens = run.embeddings.prompt_tokens;
            (run.run_id, run.route, "succeeded", output, Value::Null, tokens)
        }
        Err(EmbedRunError::Start(error)) => return Err(CogError::from(error)),
        Err(EmbedRunError::Embed { error: EmbedError::Failed(message), run_id, route }) => {
            (run_id, route, "failed", Value::Null, json!(message), 0)
        }
        Err(EmbedRunError::Embed { error, .. }) => return Err(submit_error(field, error)),
    };
    let seconds = (completed_at - created_at).num_microseconds().unwrap_or(0) as f64 / 1e6;
    let id = url_id.or(body.id).unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let mut response = Json(json!({
        "id": id,
        "status": status,
        "input": body.input,
        "output": output,
        "logs": "",
        "error": error,
        "created_at": prediction::timestamp(created_at),
        "started_at": prediction::timestamp(created_at),
        "completed_at": prediction::timestamp(completed_at),
        "metrics": {
            "predict_time": seconds,
            "input_token_count": input_tokens,
            "output_token_count": 0,
        },
    }))
    .into_response();
    relay::set_run_headers(response.headers_mut(), &run_id, Some(&route));
    Ok(response)
}

/// The vectors as JSON numbers that print as f32 does: a plain conversion widens each to f64 and
/// prints twice the digits. Each value is the f64 nearest the f32's shortest decimal form.
fn f32_rows(vectors: &[Vec<f32>]) -> Value {
    let number = |v: f32| {
        let shortest: f64 = v.to_string().parse().unwrap_or(f64::from(v));
        serde_json::Number::from_f64(shortest).map_or(Value::Null, Value::Number)
    };
    Value::Array(
        vectors.iter().map(|row| Value::Array(row.iter().map(|v| number(*v)).collect())).collect(),
    )
}

/// `text` or `texts`, exactly one, each text non-empty. Every problem is reported, in
/// pydantic's 422 shape.
fn parse_input(input: Option<&Value>) -> Result<(&'static str, Vec<String>), CogError> {
    let object: &Map<String, Value> = match input {
        Some(Value::Object(object)) => object,
        Some(_) => {
            return Err(CogError::Invalid(vec![Detail::at(
                &["body", "input"],
                "input must be a JSON object",
            )]))
        }
        None => {
            return Err(CogError::Invalid(vec![Detail::at(&["body", "input"], "field required")]))
        }
    };
    let mut details: Vec<Detail> = object
        .keys()
        .filter(|key| !matches!(key.as_str(), "text" | "texts"))
        .map(|key| Detail::input(key, "unexpected input field; this model takes: text, texts"))
        .collect();
    let text = object.get("text").filter(|v| !v.is_null());
    let texts = object.get("texts").filter(|v| !v.is_null());
    let parsed = match (text, texts) {
        (Some(_), Some(_)) => {
            details.push(Detail::at(&["body", "input"], "give `text` or `texts`, not both"));
            None
        }
        (None, None) => {
            details.push(Detail::at(
                &["body", "input"],
                "give `text` (a string) or `texts` (a list of strings)",
            ));
            None
        }
        (Some(Value::String(text)), None) if !text.is_empty() => Some(("text", vec![text.clone()])),
        (Some(Value::String(_)), None) => {
            details.push(Detail::input("text", "must not be empty"));
            None
        }
        (Some(_), None) => {
            details.push(Detail::input("text", "must be a string"));
            None
        }
        (None, Some(Value::Array(items))) if items.is_empty() => {
            details.push(Detail::input("texts", "must hold at least one text"));
            None
        }
        (None, Some(Value::Array(items))) => {
            let mut texts = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some("") => details.push(Detail::input("texts", format!("item {i} is empty"))),
                    Some(text) => texts.push(text.to_owned()),
                    None => {
                        details.push(Detail::input("texts", format!("item {i} is not a string")))
                    }
                }
            }
            Some(("texts", texts))
        }
        (None, Some(_)) => {
            details.push(Detail::input("texts", "must be a list of strings"));
            None
        }
    };
    match parsed {
        Some(parsed) if details.is_empty() => Ok(parsed),
        _ => Err(CogError::Invalid(details)),
    }
}

fn submit_error(field: &str, err: EmbedError) -> CogError {
    match err {
        EmbedError::Overloaded { .. } => CogError::AtCapacity,
        EmbedError::ShuttingDown => CogError::ShuttingDown,
        other => {
            let message = match (field, other.input_index()) {
                ("texts", Some(_)) => other.to_string().replacen("input", "item", 1),
                ("text", Some(_)) => other.to_string().replacen("input 0", "the text", 1),
                _ => other.to_string(),
            };
            CogError::input(field, message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn details(input: Value) -> Vec<String> {
        match parse_input(Some(&input)) {
            Err(CogError::Invalid(details)) => details.into_iter().map(|d| d.msg).collect(),
            other => panic!("expected a 422, got {:?}", other.map(|(f, t)| (f, t.len()))),
        }
    }

    #[test]
    fn vectors_print_as_f32() {
        let rows = f32_rows(&[vec![0.1, -0.062_771_81, 1e-8]]);
        assert_eq!(rows.to_string(), "[[0.1,-0.06277181,1e-8]]");
    }

    #[test]
    fn takes_text_or_texts() {
        let (field, texts) = parse_input(Some(&json!({"text": "hi"}))).unwrap();
        assert_eq!((field, texts), ("text", vec!["hi".to_owned()]));
        let (field, texts) =
            parse_input(Some(&json!({"texts": ["a", "b"], "text": null}))).unwrap();
        assert_eq!((field, texts.len()), ("texts", 2));
    }

    #[test]
    fn refuses_everything_else_with_every_reason() {
        assert_eq!(
            details(json!({"text": "a", "texts": ["b"]})),
            ["give `text` or `texts`, not both"]
        );
        assert_eq!(details(json!({}))[0], "give `text` (a string) or `texts` (a list of strings)");
        assert_eq!(details(json!({"text": ""})), ["must not be empty"]);
        assert_eq!(details(json!({"text": 3})), ["must be a string"]);
        assert_eq!(
            details(json!({"texts": ["a", 2, ""]})),
            ["item 1 is not a string", "item 2 is empty"]
        );
        assert_eq!(
            details(json!({"text": "a", "prompt": "b"})),
            ["unexpected input field; this model takes: text, texts"]
        );
    }
}
