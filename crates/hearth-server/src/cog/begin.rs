//! Starting a prediction, the one way the Cog routes, the Python predictors' Cog routes and
//! Replicate's API all do it: check the input, claim the id in the registry (a repeated id
//! finds the first prediction), start the run — on the engine through the gateway, or on the
//! package's Python worker — and wrap it in the [`AnyRun`] that whoever answers will own.

use std::sync::Arc;

use axum::http::HeaderMap;
use hearth_gateway::logging::LogOptions;
use hearth_gateway::{Caller, LocalModel, PredictorSchema, PythonModel};
use serde_json::{json, Value};

use super::error::{CogError, Detail};
use super::input::CogInput;
use super::prediction::Prediction;
use super::python;
use super::python_run::PythonRun;
use super::registry::{Claim, PredictionEntry};
use super::run::{AnyRun, Run, Started};
use crate::relay::{self, RelayError};
use crate::state::AppState;

/// Where a prediction is registered and what it is called.
pub(super) struct Claimed<'a> {
    /// The registry's namespace: the model's name on the Cog routes.
    pub namespace: &'a str,
    pub id: String,
    /// The model as the caller named it, shown by Replicate's API.
    pub label: Option<String>,
    /// What the caller asked to be kept of the prediction (its logging headers).
    pub log: LogOptions,
}

/// A prediction request's logging headers (`x-hearth-collect-log`, `…-payload`).
pub(super) fn log_options(headers: &HeaderMap) -> Result<LogOptions, CogError> {
    relay::log_options(headers).map_err(|err| match err {
        RelayError::Header { name, message } => {
            CogError::Invalid(vec![Detail::at(&["header", name], message)])
        }
        other => CogError::Internal(other.to_string()),
    })
}

/// A prediction that started.
pub(super) struct Begun {
    pub run: AnyRun,
    pub run_id: String,
    pub route: String,
    /// The prediction as it was accepted, before it started processing (an async answer).
    pub accepted: Prediction,
}

pub(super) enum Begin {
    Started(Box<Begun>),
    /// A prediction with this id exists already; it is not run twice.
    Existing(Arc<PredictionEntry>),
}

/// Cog's semantics: a prediction whose client leaves is cancelled.
fn caller(log: LogOptions) -> Caller {
    Caller { cancel_on_disconnect: true, log, ..crate::auth::keyed_caller() }
}

/// Registers the prediction; `Err` holds the one already registered under its id.
fn claim(
    state: &AppState,
    at: &Claimed<'_>,
    shown: Value,
) -> Result<Arc<PredictionEntry>, Arc<PredictionEntry>> {
    let mut prediction = Prediction::new(at.id.clone(), shown);
    prediction.model = at.label.clone();
    let cancel = state.cancel_all().child_token();
    let keep = at.log.collect != Some(false);
    match state.predictions().claim(at.namespace, prediction, cancel, keep) {
        Claim::New(entry) => Ok(entry),
        Claim::Existing(entry) => Err(entry),
    }
}

/// A prediction of the native model `name`: Cog's input becomes a gateway run.
pub(super) async fn native(
    state: &AppState,
    at: Claimed<'_>,
    name: &str,
    model: &LocalModel,
    input: Option<Value>,
) -> Result<Begin, CogError> {
    let parsed = CogInput::parse(input.as_ref(), model.engine.info().context_length)?;
    let canonical = parsed.to_canonical(name, model.engine.has_chat_template())?;
    let entry = match claim(state, &at, input.unwrap_or_default()) {
        Ok(entry) => entry,
        Err(existing) => return Ok(Begin::Existing(existing)),
    };
    let started = Started::now();
    let run = state.gateway().start_run(canonical, caller(at.log)).await.map_err(|err| {
        state.predictions().forget(at.namespace, &at.id);
        CogError::from(err)
    })?;
    let (run_id, route) = (run.run_id.clone(), run.route.clone());
    let accepted = entry.snapshot();
    let run = AnyRun::Engine(Run::start(entry, state.gateway().clone(), run, started));
    Ok(Begin::Started(Box::new(Begun { run, run_id, route, accepted })))
}

/// A prediction of the Python-served model `name`, whose worker has read `schema`.
pub(super) async fn python(
    state: &AppState,
    at: Claimed<'_>,
    name: &str,
    schema: &PredictorSchema,
    input: Option<Value>,
) -> Result<Begin, CogError> {
    let input = input_object(input)?;
    let entry = match claim(state, &at, schema.redacted(&input)) {
        Ok(entry) => entry,
        Err(existing) => return Ok(Begin::Existing(existing)),
    };
    let started = Started::now();
    let files = state.files();
    let run = state.gateway().predict(name, &at.id, input, caller(at.log), files).await.map_err(
        |err| {
            state.predictions().forget(at.namespace, &at.id);
            python::start_error(err)
        },
    )?;
    let (run_id, route) = (run.run_id.clone(), run.route.clone());
    let accepted = entry.snapshot();
    let run = AnyRun::Python(PythonRun::start(entry, run, started, schema.streams));
    Ok(Begin::Started(Box::new(Begun { run, run_id, route, accepted })))
}

/// A Python model's schema, or why it has none yet.
pub(super) fn schema_of(model: &PythonModel) -> Result<Arc<PredictorSchema>, CogError> {
    model.worker.schema().ok_or_else(|| python::not_ready(model))
}

/// The `input` of a Python prediction: an object (absent means no inputs).
fn input_object(input: Option<Value>) -> Result<Value, CogError> {
    match input {
        None | Some(Value::Null) => Ok(json!({})),
        Some(input @ Value::Object(_)) => Ok(input),
        Some(_) => Err(CogError::Invalid(vec![Detail::at(
            &["body", "input"],
            "input must be a JSON object",
        )])),
    }
}
