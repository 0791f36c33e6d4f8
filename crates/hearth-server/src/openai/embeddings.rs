//! `POST /v1/embeddings`: OpenAI's embeddings endpoint over the loaded embedding models. Each
//! request is a gateway run (`x-hearth-run-id`, one ledger record, counted in `/v1/usage`).
//!
//! `input` is a string, an array of strings, an array of token ids, or an array of token-id
//! arrays (token ids are used as they are, so they should include the model's special tokens).
//! `encoding_format` is `float` (default) or `base64` (little-endian f32 bytes, as OpenAI sends
//! them). `dimensions` is accepted only when it equals the model's: these models cannot shorten
//! their vectors. Every input error is a 400 naming `input`; a generative model named here is a
//! 400 too, and an unknown model a 404.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use hearth_gateway::{CatalogEntry, EmbedError, EmbedInput, EmbedRunError, EmbeddingModel};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::OpenAiError;
use super::extract::OpenAiJson;
use crate::relay::{self, RelayError};
use crate::state::AppState;

const INPUT_SHAPES: &str =
    "must be a string, an array of strings, an array of token ids, or an array of token-id arrays";

#[derive(Deserialize)]
struct EmbeddingsRequest {
    model: String,
    input: Value,
    encoding_format: Option<String>,
    dimensions: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Float,
    Base64,
}

/// The answer, typed so that each float is written as the shortest text that reads back as the
/// same f32 (a `serde_json::Value` would widen it to f64 and print twice the digits).
#[derive(Serialize)]
pub(crate) struct EmbeddingsResponse {
    object: &'static str,
    data: Vec<EmbeddingObject>,
    model: String,
    usage: Usage,
}

#[derive(Serialize)]
struct EmbeddingObject {
    object: &'static str,
    index: usize,
    embedding: EmbeddingData,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EmbeddingData {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

pub(crate) async fn embeddings(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: OpenAiJson,
) -> Result<Response, OpenAiError> {
    let request: EmbeddingsRequest = body.parse()?;
    let encoding = match request.encoding_format.as_deref() {
        None | Some("float") => Encoding::Float,
        Some("base64") => Encoding::Base64,
        Some(other) => {
            return Err(OpenAiError::invalid(
                "encoding_format",
                format!("`{other}` is not supported; use `float` or `base64`"),
            ))
        }
    };
    let inputs = parse_input(&request.input)?;
    let model = find_embedder(&state, &request.model)?;
    let dimension = model.embedder.info().dimension;
    if let Some(asked) = request.dimensions.filter(|d| *d != dimension as u64) {
        return Err(OpenAiError::invalid(
            "dimensions",
            format!(
                "`dimensions` is {asked}, but `{}` makes {dimension}-dimensional embeddings and \
                 cannot shorten them; leave `dimensions` out or set it to {dimension}",
                request.model
            ),
        ));
    }
    let caller = relay::caller(&headers)?;
    let run = match state.gateway().embed(&request.model, inputs, caller).await {
        Ok(run) => run,
        Err(EmbedRunError::Start(error)) => return Err(RelayError::from(error).into()),
        Err(EmbedRunError::Embed { run_id, route, error }) => {
            let mut response = embed_error(error).into_response();
            relay::set_run_headers(response.headers_mut(), &run_id, Some(&route));
            return Ok(response);
        }
    };
    let prompt_tokens = run.embeddings.prompt_tokens;
    let data = run
        .embeddings
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| EmbeddingObject {
            object: "embedding",
            index,
            embedding: match encoding {
                Encoding::Float => EmbeddingData::Float(vector),
                Encoding::Base64 => EmbeddingData::Base64(base64_f32(&vector)),
            },
        })
        .collect();
    let mut response = Json(EmbeddingsResponse {
        object: "list",
        data,
        model: request.model,
        usage: Usage { prompt_tokens, total_tokens: prompt_tokens },
    })
    .into_response();
    relay::set_run_headers(response.headers_mut(), &run.run_id, Some(&run.route));
    Ok(response)
}

/// The inputs of `input`, each checked for shape; the embedder checks lengths and token ids.
fn parse_input(input: &Value) -> Result<Vec<EmbedInput>, OpenAiError> {
    let invalid = |message: String| OpenAiError::invalid("input", message);
    match input {
        Value::String(text) if text.is_empty() => {
            Err(invalid("`input` must not be an empty string".into()))
        }
        Value::String(text) => Ok(vec![EmbedInput::Text(text.clone())]),
        Value::Array(items) if items.is_empty() => {
            Err(invalid("`input` must not be an empty array".into()))
        }
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item.as_str() {
                Some("") => Err(invalid(format!("`input[{i}]` must not be an empty string"))),
                Some(text) => Ok(EmbedInput::Text(text.to_owned())),
                None => unreachable!("checked to be strings"),
            })
            .collect(),
        Value::Array(items) if items.iter().all(Value::is_number) => Ok(vec![EmbedInput::Tokens(
            token_ids(items).map_err(|m| invalid(format!("`input` {m}")))?,
        )]),
        Value::Array(items) if items.iter().all(Value::is_array) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let ids = item.as_array().map(Vec::as_slice).unwrap_or_default();
                if ids.is_empty() {
                    return Err(invalid(format!("`input[{i}]` must not be an empty array")));
                }
                token_ids(ids)
                    .map(EmbedInput::Tokens)
                    .map_err(|m| invalid(format!("`input[{i}]` {m}")))
            })
            .collect(),
        Value::Array(_) => Err(invalid(format!("`input` mixes types; it {INPUT_SHAPES}"))),
        Value::Null => Err(invalid(format!("`input` is required; it {INPUT_SHAPES}"))),
        _ => Err(invalid(format!("`input` {INPUT_SHAPES}"))),
    }
}

fn token_ids(items: &[Value]) -> Result<Vec<u32>, String> {
    items
        .iter()
        .map(|v| v.as_u64().and_then(|id| u32::try_from(id).ok()))
        .collect::<Option<Vec<u32>>>()
        .ok_or_else(|| "must hold token ids: integers from 0 to 4294967295".to_owned())
}

/// The embedding model called `name`, or an error that says why it cannot embed.
fn find_embedder(state: &AppState, name: &str) -> Result<EmbeddingModel, OpenAiError> {
    let catalog = state.catalog();
    if let Some(model) = catalog.embedder(name) {
        return Ok(model.clone());
    }
    let not_embedding = |what: &str| {
        OpenAiError::invalid(
            "model",
            format!(
                "The model `{name}` {what} and does not make embeddings; name an embedding model{}",
                embedding_models_hint(state)
            ),
        )
    };
    match catalog.entry(name) {
        Some(CatalogEntry::Ready(_)) => Err(not_embedding("is a text-generation model")),
        Some(CatalogEntry::Failed { reason }) => {
            Err(OpenAiError::ModelUnavailable { model: name.to_owned(), reason: reason.clone() })
        }
        None if catalog.resolve(name).is_ok() => {
            Err(not_embedding("is routed to a text-generation provider"))
        }
        None => Err(OpenAiError::ModelNotFound(name.to_owned())),
    }
}

fn embedding_models_hint(state: &AppState) -> String {
    let catalog = state.catalog();
    let names: Vec<&str> = catalog.embedders().map(|(n, _)| n.as_str()).collect();
    if names.is_empty() {
        " (none is loaded)".to_owned()
    } else {
        format!(" ({})", names.join(", "))
    }
}

fn embed_error(err: EmbedError) -> OpenAiError {
    match err {
        EmbedError::Overloaded { num_waiting } => OpenAiError::Overloaded { num_waiting },
        EmbedError::ShuttingDown => OpenAiError::ShuttingDown,
        EmbedError::Failed(message) => OpenAiError::Generation(message),
        other => OpenAiError::invalid("input", capitalized(&other.to_string())),
    }
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// The vector's little-endian f32 bytes in standard base64, as OpenAI's `base64` format.
fn base64_f32(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parsed(input: Value) -> Result<Vec<EmbedInput>, String> {
        parse_input(&input).map_err(|e| e.to_string())
    }

    #[test]
    fn every_input_shape_parses() {
        assert_eq!(parsed(json!("hi")).unwrap(), [EmbedInput::Text("hi".into())]);
        assert_eq!(
            parsed(json!(["a", "b"])).unwrap(),
            [EmbedInput::Text("a".into()), EmbedInput::Text("b".into())]
        );
        assert_eq!(parsed(json!([101, 102])).unwrap(), [EmbedInput::Tokens(vec![101, 102])]);
        assert_eq!(
            parsed(json!([[101], [101, 102]])).unwrap(),
            [EmbedInput::Tokens(vec![101]), EmbedInput::Tokens(vec![101, 102])]
        );
    }

    #[test]
    fn bad_inputs_say_what_is_wrong() {
        assert!(parsed(json!("")).unwrap_err().contains("must not be an empty string"));
        assert!(parsed(json!([])).unwrap_err().contains("must not be an empty array"));
        assert!(parsed(json!(["a", ""])).unwrap_err().contains("`input[1]` must not be an empty"));
        assert!(parsed(json!(["a", 1])).unwrap_err().contains("mixes types"));
        assert!(parsed(json!([1, -2])).unwrap_err().contains("must hold token ids"));
        assert!(parsed(json!([[1], []])).unwrap_err().contains("`input[1]` must not be an empty"));
        assert!(parsed(json!({"text": "a"})).unwrap_err().contains("must be a string"));
        assert!(parsed(json!(3)).unwrap_err().contains("must be a string"));
    }

    #[test]
    fn floats_are_written_as_f32() {
        let text = serde_json::to_string(&EmbeddingData::Float(vec![0.1, -0.062_771_81])).unwrap();
        assert_eq!(text, "[0.1,-0.06277181]");
    }

    #[test]
    fn base64_is_little_endian_f32() {
        assert_eq!(base64_f32(&[1.0, -2.0]), "AACAPwAAAMA=");
    }
}
