//! The request body of the OpenAI-compatible routes, read so that every problem — too large,
//! not JSON, a field of the wrong type — is answered in OpenAI's error shape.

use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::OpenAiError;
use crate::body::{read_object, typed};
use crate::state::AppState;

/// A JSON object body. Handlers read typed views of it with [`OpenAiJson::parse`]; each view
/// ignores fields it does not know, as OpenAI-compatible servers commonly do.
pub(crate) struct OpenAiJson(Value);

impl OpenAiJson {
    /// A typed view read from the body in place (no copy of it).
    pub(crate) fn parse<T: DeserializeOwned>(&self) -> Result<T, OpenAiError> {
        Ok(typed(&self.0)?)
    }

    /// The last typed view, which takes the body instead of copying it.
    pub(crate) fn into_typed<T: DeserializeOwned>(self) -> Result<T, OpenAiError> {
        Ok(typed(self.0)?)
    }
}

impl FromRequest<AppState> for OpenAiJson {
    type Rejection = OpenAiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, OpenAiError> {
        let object = read_object(req, state, state.config().max_body_bytes).await?;
        Ok(Self(Value::Object(object)))
    }
}
