//! `GET /openapi.json`: the OpenAPI document Cog serves, with the component names Cog's tools
//! read (`Input`, `Output`, `PredictionRequest`, `PredictionResponse`, `Status`,
//! `HTTPValidationError`). The `Input` schema comes from the same table that validates input.

use serde_json::{json, Map, Value};

use super::fields::{DefaultValue, Field, FIELDS};

/// The document for one (generative, so streaming) model whose routes live under `prefix`
/// ("" at the root).
pub(crate) fn openapi(model: &str, prefix: &str, context_length: usize) -> Value {
    let mut document = json!({
        "openapi": "3.0.2",
        "info": { "title": format!("Cog: {model}"), "version": "0.1.0" },
        "paths": paths(prefix),
        "components": { "schemas": schemas(context_length) },
    });
    set_streaming(&mut document, prefix, true);
    document
}

/// Marks the prediction operation as streaming or not, as `cog build` does with
/// `x-cog-streaming`: Cog's server answers `Accept: text/event-stream` only when it is set.
pub(crate) fn set_streaming(document: &mut Value, prefix: &str, streams: bool) {
    let operation = &mut document["paths"][format!("{prefix}/predictions")]["post"];
    match operation.as_object_mut() {
        Some(operation) if streams => {
            operation.insert("x-cog-streaming".into(), Value::Bool(true));
        }
        Some(operation) => {
            operation.remove("x-cog-streaming");
        }
        None => {}
    }
}

fn input_property(field: &Field, order: usize, context_length: usize) -> Value {
    let mut p = Map::new();
    p.insert("type".into(), json!(field.kind.as_str()));
    p.insert("title".into(), json!(field.title));
    p.insert("description".into(), json!(field.description));
    p.insert("x-order".into(), json!(order));
    let default = match field.default {
        DefaultValue::Str(s) => Some(json!(s)),
        DefaultValue::Int(i) => Some(json!(i)),
        DefaultValue::Num(n) => Some(json!(n)),
        // Cog writes no default for optional inputs, nor for required ones.
        DefaultValue::Null | DefaultValue::Required => None,
    };
    if let Some(default) = default {
        p.insert("default".into(), default);
    }
    if let Some(min) = field.minimum {
        p.insert("minimum".into(), json!(min));
        if field.exclusive_minimum {
            p.insert("exclusiveMinimum".into(), json!(true));
        }
    }
    if let Some(max) = field.maximum.resolve(context_length) {
        p.insert("maximum".into(), json!(max));
    }
    Value::Object(p)
}

fn schemas(context_length: usize) -> Value {
    let properties: Map<String, Value> = FIELDS
        .iter()
        .enumerate()
        .map(|(order, field)| (field.name.to_owned(), input_property(field, order, context_length)))
        .collect();
    let required: Vec<&str> = FIELDS
        .iter()
        .filter(|f| matches!(f.default, DefaultValue::Required))
        .map(|f| f.name)
        .collect();
    let mut schemas = json!({
        "Input": { "title": "Input", "type": "object", "required": required, "properties": properties },
        "Output": {
            "title": "Output",
            "type": "array",
            "items": { "type": "string" },
            "x-cog-array-type": "iterator",
            "x-cog-array-display": "concatenate",
        },
        "WebhookEvent": {
            "title": "WebhookEvent",
            "description": "An enumeration.",
            "type": "string",
            "enum": ["start", "output", "logs", "completed"],
        },
        "PredictionRequest": {
            "title": "PredictionRequest",
            "type": "object",
            "properties": {
                "id": { "title": "Id", "type": "string" },
                "created_at": { "title": "Created At", "type": "string", "format": "date-time" },
                "input": { "$ref": "#/components/schemas/Input" },
                "webhook": { "title": "Webhook", "type": "string", "format": "uri", "minLength": 1 },
                "webhook_events_filter": {
                    "type": "array",
                    "items": { "$ref": "#/components/schemas/WebhookEvent" },
                    "default": ["start", "output", "logs", "completed"],
                },
            },
        },
        "PredictionResponse": {
            "title": "PredictionResponse",
            "type": "object",
            "properties": {
                "id": { "title": "Id", "type": "string" },
                "input": { "$ref": "#/components/schemas/Input" },
                "output": { "$ref": "#/components/schemas/Output" },
                "status": { "$ref": "#/components/schemas/Status" },
                "logs": { "title": "Logs", "type": "string", "default": "" },
                "error": { "title": "Error", "type": "string" },
                "created_at": { "title": "Created At", "type": "string", "format": "date-time" },
                "started_at": { "title": "Started At", "type": "string", "format": "date-time" },
                "completed_at": { "title": "Completed At", "type": "string", "format": "date-time" },
                "metrics": { "title": "Metrics", "type": "object" },
            },
        },
    });
    if let Some(map) = schemas.as_object_mut() {
        map.extend(shared_components());
    }
    schemas
}

/// The components every Cog document has, whatever the model: `Status` and the validation
/// error shapes.
pub(crate) fn shared_components() -> Map<String, Value> {
    let components = json!({
    "Status": {
        "title": "Status",
        "description": "An enumeration.",
        "type": "string",
        "enum": ["starting", "processing", "succeeded", "canceled", "failed"],
    },
    "HTTPValidationError": {
        "title": "HTTPValidationError",
        "type": "object",
        "properties": {
            "detail": {
                "title": "Detail",
                "type": "array",
                "items": { "$ref": "#/components/schemas/ValidationError" },
            },
        },
    },
    "ValidationError": {
        "title": "ValidationError",
        "type": "object",
        "required": ["loc", "msg", "type"],
        "properties": {
            "loc": {
                "title": "Location",
                "type": "array",
                "items": { "anyOf": [{ "type": "string" }, { "type": "integer" }] },
            },
            "msg": { "title": "Message", "type": "string" },
            "type": { "title": "Error Type", "type": "string" },
        },
    },
    });
    match components {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

pub(crate) fn json_response(schema: &str, description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } },
    })
}

/// A 200 answer whose body is any JSON.
pub(crate) fn any_json() -> Value {
    json!({ "description": "Successful Response", "content": { "application/json": { "schema": {} } } })
}

/// The paths every Cog document has whatever the model, under `prefix`: the index and the
/// health check.
pub(crate) fn base_paths(prefix: &str) -> Map<String, Value> {
    let get = |summary: &str, operation_id: &str| {
        json!({ "get": { "summary": summary, "operationId": operation_id,
                         "responses": { "200": any_json() } } })
    };
    Map::from_iter([
        (format!("{prefix}/"), get("Root", "root__get")),
        (format!("{prefix}/health-check"), get("Healthcheck", "healthcheck_health_check_get")),
    ])
}

fn paths(prefix: &str) -> Value {
    let any_json = any_json();
    let predict = |operation_id: &str, path_param: bool| {
        let mut parameters = vec![json!({
            "in": "header", "name": "prefer", "required": false,
            "schema": { "title": "Prefer", "type": "string" },
        })];
        if path_param {
            parameters.push(json!({
                "in": "path", "name": "prediction_id", "required": true,
                "schema": { "title": "Prediction ID", "type": "string" },
            }));
        }
        json!({
            "summary": "Predict",
            "operationId": operation_id,
            "parameters": parameters,
            "requestBody": {
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/PredictionRequest" } } },
            },
            "responses": {
                "200": json_response("PredictionResponse", "Successful Response"),
                "422": json_response("HTTPValidationError", "Validation Error"),
            },
        })
    };
    let mut paths = base_paths(prefix);
    let mut add = |path: &str, item: Value| paths.insert(format!("{prefix}{path}"), item);
    add("/predictions", json!({ "post": predict("predict_predictions_post", false) }));
    add(
        "/predictions/{prediction_id}",
        json!({ "put": predict("predict_idempotent_predictions__prediction_id__put", true) }),
    );
    add(
        "/predictions/{prediction_id}/cancel",
        json!({ "post": {
            "summary": "Cancel",
            "operationId": "cancel_predictions__prediction_id__cancel_post",
            "parameters": [{ "in": "path", "name": "prediction_id", "required": true,
                             "schema": { "title": "Prediction ID", "type": "string" } }],
            "responses": { "200": any_json, "404": any_json },
        } }),
    );
    add(
        "/shutdown",
        json!({ "post": { "summary": "Start Shutdown", "operationId": "start_shutdown_shutdown_post",
                          "responses": { "200": any_json } } }),
    );
    Value::Object(paths)
}
