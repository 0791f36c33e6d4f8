//! Which model a Cog request is for: `/cog/{model}/…` names it; the root routes use the
//! catalog's default model.

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use hearth_gateway::{CatalogEntry, LocalModel};

use super::error::CogError;
use crate::state::AppState;

/// A ready model, and where its Cog routes live.
pub(crate) struct CogModel {
    pub name: String,
    pub model: LocalModel,
    /// `""` at the root, `/cog/{name}` otherwise.
    pub prefix: String,
}

/// A model as the health check sees it: ready, or refused at load.
pub(crate) enum CogModelState {
    Ready(Box<CogModel>),
    Failed { reason: String },
}

/// A path parameter of the matched route, if it has one by that name.
pub(crate) async fn path_param(parts: &mut Parts, state: &AppState, name: &str) -> Option<String> {
    let params = RawPathParams::from_request_parts(parts, state).await.ok()?;
    params.iter().find(|(key, _)| *key == name).map(|(_, value)| value.to_owned())
}

fn resolve(state: &AppState, named: Option<String>) -> Result<CogModelState, CogError> {
    let catalog = state.catalog();
    let Some(name) = named else {
        return match catalog.default_model() {
            Some((name, model)) => {
                let model =
                    CogModel { name: name.to_owned(), model: model.clone(), prefix: String::new() };
                Ok(CogModelState::Ready(Box::new(model)))
            }
            None => Err(unknown(
                state,
                "there is no default model; use /cog/{model}/… with one of the models",
            )),
        };
    };
    match catalog.entry(&name) {
        Some(CatalogEntry::Ready(model)) => {
            let prefix = format!("/cog/{name}");
            Ok(CogModelState::Ready(Box::new(CogModel { name, model: model.clone(), prefix })))
        }
        Some(CatalogEntry::Failed { reason }) => {
            Ok(CogModelState::Failed { reason: reason.clone() })
        }
        // `PACKAGE:ADAPTER`: the package's engine, under the adapter the name carries on to the
        // gateway's route.
        None => match catalog.adapter_base(&name) {
            Ok(Some((model, _))) => {
                let prefix = format!("/cog/{name}");
                Ok(CogModelState::Ready(Box::new(CogModel { name, model: model.clone(), prefix })))
            }
            Ok(None) => Err(unknown(state, &format!("model `{name}` does not exist"))),
            Err(err) => Err(unknown(state, &err.to_string())),
        },
    }
}

fn unknown(state: &AppState, message: &str) -> CogError {
    let models = state.catalog().ready().map(|(name, _)| name.clone()).collect();
    CogError::UnknownModel { message: message.to_owned(), models }
}

impl FromRequestParts<AppState> for CogModelState {
    type Rejection = CogError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, CogError> {
        let named = path_param(parts, state, "model").await;
        resolve(state, named)
    }
}

impl FromRequestParts<AppState> for CogModel {
    type Rejection = CogError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, CogError> {
        let named = path_param(parts, state, "model").await;
        let model_name = named.clone().unwrap_or_default();
        match resolve(state, named)? {
            CogModelState::Ready(model) => Ok(*model),
            CogModelState::Failed { reason } => {
                Err(CogError::ModelFailed { model: model_name, reason })
            }
        }
    }
}

/// A Cog request for a model that a middleware in front of the Cog routes serves (embedding
/// models, Python predictors): the model `/cog/{name}/…` names, or the default one at the root.
pub(crate) struct Addressed<M> {
    pub name: String,
    pub model: M,
    /// `""` at the root, `/cog/{name}` otherwise.
    pub prefix: String,
    /// The route below the prefix: `/predictions`, `/openapi.json`, …
    pub route: String,
}

/// Routes the Cog API serves at the root, which go to the default model.
fn is_root_cog_route(path: &str) -> bool {
    matches!(path, "/" | "/health-check" | "/openapi.json" | "/predictions")
        || path.starts_with("/predictions/")
}

/// Reads `path` as a Cog route of a model `named` finds (under `/cog/{name}/`), or of the
/// `default` one (at the root); `None` when it is neither.
pub(crate) fn addressed<M: Clone>(
    path: &str,
    named: impl FnOnce(&str) -> Option<M>,
    default: impl FnOnce() -> Option<(String, M)>,
) -> Option<Addressed<M>> {
    if let Some(rest) = path.strip_prefix("/cog/") {
        let (name, route) = match rest.split_once('/') {
            Some((name, route)) => (name, format!("/{route}")),
            None => (rest, "/".to_owned()),
        };
        let model = named(name)?;
        let prefix = format!("/cog/{name}");
        return Some(Addressed { name: name.to_owned(), model, prefix, route });
    }
    if !is_root_cog_route(path) {
        return None;
    }
    let (name, model) = default()?;
    Some(Addressed { name, model, prefix: String::new(), route: path.to_owned() })
}
