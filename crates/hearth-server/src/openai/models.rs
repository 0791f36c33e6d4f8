//! `GET /v1/models` and `GET /v1/models/{model}`: the models that loaded and can be served.

use axum::extract::{Path, State};
use axum::Json;
use hearth_gateway::LocalModel;
use serde_json::{json, Value};

use super::error::OpenAiError;
use super::sampling::find_model;
use crate::state::AppState;

fn model_object(state: &AppState, name: &str, model: &LocalModel) -> Value {
    json!({
        "id": name,
        "object": "model",
        "created": state.setup_completed_at().timestamp(),
        "owned_by": "hearth",
        "context_length": model.engine.info().context_length,
    })
}

pub(crate) async fn list(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> =
        state.catalog().ready().map(|(name, model)| model_object(&state, name, model)).collect();
    Json(json!({ "object": "list", "data": data }))
}

pub(crate) async fn retrieve(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, OpenAiError> {
    let model = find_model(&state, &name)?;
    Ok(Json(model_object(&state, &name, &model)))
}
