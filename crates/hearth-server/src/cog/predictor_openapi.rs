//! `GET /openapi.json` of a Python predictor: the document `cog build` writes into the image
//! for the same predictor (Cog's `pkg/schema/openapi_spec.go`), so that tools reading Cog's
//! schema read Hearth's the same. The predictor's parts (`Input`, `Output`, the enums of its
//! choices, whether it streams) come from the worker, which reads them with Cog's SDK and off
//! the predictor's source; the rest of the document is fixed.
//!
//! Hearth serves more than the document lists (the idempotent `PUT`, `/shutdown`, webhooks),
//! as Cog's own server does; the document stays Cog's.

use hearth_gateway::PredictorSchema;
use serde_json::{json, Map, Value};

use super::schema::{any_json, base_paths, json_response, shared_components};

/// The document for a predictor whose routes live under `prefix` ("" at the root).
pub(crate) fn openapi(prefix: &str, schema: &PredictorSchema) -> Value {
    json!({
        "openapi": "3.0.2",
        "info": { "title": "Cog", "version": schema.cog_version },
        "paths": paths(prefix, schema.streaming),
        "components": { "schemas": components(schema) },
    })
}

fn components(schema: &PredictorSchema) -> Map<String, Value> {
    let mut components = Map::new();
    components.insert("Input".into(), schema.input.clone());
    components.insert("Output".into(), schema.output.clone());
    // The fixed components go in after the enums and win a clash of names, as in Cog.
    components.extend(schema.components.clone());
    let date = |title: &str| json!({ "title": title, "type": "string", "format": "date-time" });
    let fixed = json!({
        "PredictionRequest": {
            "title": "PredictionRequest",
            "type": "object",
            "properties": {
                "id": { "title": "Id", "type": "string" },
                "input": { "$ref": "#/components/schemas/Input" },
            },
        },
        "PredictionResponse": {
            "title": "PredictionResponse",
            "type": "object",
            "properties": {
                "input": { "$ref": "#/components/schemas/Input" },
                "output": { "$ref": "#/components/schemas/Output" },
                "id": { "title": "Id", "type": "string" },
                "version": { "title": "Version", "type": "string" },
                "created_at": date("Created At"),
                "started_at": date("Started At"),
                "completed_at": date("Completed At"),
                "status": { "title": "Status", "type": "string" },
                "error": { "title": "Error", "type": "string" },
                "logs": { "title": "Logs", "type": "string" },
                "metrics": { "title": "Metrics", "type": "object" },
            },
        },
    });
    if let Value::Object(fixed) = fixed {
        components.extend(fixed);
    }
    components.extend(shared_components());
    components
}

fn paths(prefix: &str, streaming: bool) -> Value {
    let mut predict = json!({
        "summary": "Predict",
        "description": "Run a single prediction on the model",
        "operationId": "predict_predictions_post",
        "requestBody": {
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/PredictionRequest" } } },
        },
        "responses": {
            "200": json_response("PredictionResponse", "Successful Response"),
            "422": json_response("HTTPValidationError", "Validation Error"),
        },
    });
    if streaming {
        predict["x-cog-streaming"] = Value::Bool(true);
    }
    let cancel = json!({
        "summary": "Cancel",
        "operationId": "cancel_predictions__prediction_id__cancel_post",
        "parameters": [{ "required": true, "schema": { "title": "Prediction Id", "type": "string" },
                         "name": "prediction_id", "in": "path" }],
        "responses": {
            "200": any_json(),
            "422": json_response("HTTPValidationError", "Validation Error"),
        },
    });
    let mut paths = base_paths(prefix);
    paths.insert(format!("{prefix}/predictions"), json!({ "post": predict }));
    paths.insert(
        format!("{prefix}/predictions/{{prediction_id}}/cancel"),
        json!({ "post": cancel }),
    );
    Value::Object(paths)
}
