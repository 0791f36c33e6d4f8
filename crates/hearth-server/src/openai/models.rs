//! `GET /v1/models` and `GET /v1/models/{model}`: every model a caller can name, local and
//! upstream, in OpenAI's list shape with Hearth's fields added (kind, providers, modality,
//! context length, prices).

use axum::extract::{Path, State};
use axum::Json;
use hearth_gateway::{CatalogEntry, ModelListing};
use serde_json::{json, Value};

use super::error::OpenAiError;
use crate::state::AppState;

fn model_object(state: &AppState, listing: &ModelListing) -> Value {
    json!({
        "id": listing.id,
        "object": "model",
        "created": state.setup_completed_at().timestamp(),
        "owned_by": "hearth",
        "kind": listing.kind,
        "providers": listing.providers,
        "modality": listing.modality,
        "context_length": listing.context_length,
        "prices": listing.prices,
        // vLLM's name for the model a LoRA adapter runs over.
        "parent": listing.parent,
    })
}

pub(crate) async fn list(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> =
        state.catalog().list_models().iter().map(|m| model_object(&state, m)).collect();
    Json(json!({ "object": "list", "data": data }))
}

pub(crate) async fn retrieve(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, OpenAiError> {
    let catalog = state.catalog();
    if let Some(listing) = catalog.list_models().iter().find(|m| m.id == name) {
        return Ok(Json(model_object(&state, listing)));
    }
    Err(match catalog.entry(&name) {
        Some(CatalogEntry::Failed { reason }) => {
            OpenAiError::ModelUnavailable { model: name, reason: reason.clone() }
        }
        _ => OpenAiError::ModelNotFound(name),
    })
}
