//! The model list (`/v1/models`): every model a caller can name, with its kind, providers,
//! modality, context length and prices, and each local package's LoRA adapters beside it.

use serde::Serialize;

use super::{
    Catalog, EmbeddingModel, LocalModel, ModelEntry, PythonModel, RouteKind, ADAPTER_SEPARATOR,
};
use crate::config::LOCAL_PROVIDER;
use crate::pricing::Prices;

/// One row of the model list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelListing {
    pub id: String,
    /// The kind of the first route, the one normally serving.
    pub kind: RouteKind,
    /// Providers in route order (`local` for local packages).
    pub providers: Vec<String>,
    /// `chat`, `completion` for a local base model without a chat template, or `embedding`.
    pub modality: &'static str,
    pub context_length: Option<u64>,
    pub prices: Prices,
    /// For a LoRA adapter (`PACKAGE:ADAPTER`), the package it runs over.
    pub parent: Option<String>,
}

impl Catalog {
    /// Every model a caller can name (besides direct `provider/model` ids), sorted by id.
    pub fn list_models(&self) -> Vec<ModelListing> {
        let mut out: Vec<ModelListing> =
            self.models.iter().map(|(id, entry)| self.entry_listing(id, entry)).collect();
        for (name, model) in self.ready() {
            if !self.models.contains_key(name) {
                out.push(local_listing(name, model));
            }
            for adapter in model.engine.adapter_names() {
                let base = local_listing(name, model);
                let id = format!("{name}{ADAPTER_SEPARATOR}{adapter}");
                out.push(ModelListing { id, parent: Some(name.clone()), ..base });
            }
        }
        for (name, model) in &self.embedders {
            if !self.models.contains_key(name) {
                out.push(embedding_listing(name, model));
            }
        }
        for (name, model) in &self.python {
            if !self.models.contains_key(name) {
                out.push(python_listing(name, model));
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    fn entry_listing(&self, id: &str, entry: &ModelEntry) -> ModelListing {
        let mut providers: Vec<String> = Vec::new();
        for (provider, _) in &entry.routes {
            if !providers.contains(provider) {
                providers.push(provider.clone());
            }
        }
        let first_local = entry
            .routes
            .first()
            .filter(|(p, _)| p == LOCAL_PROVIDER)
            .and_then(|(_, name)| self.get(name));
        ModelListing {
            id: id.into(),
            kind: if first_local.is_some() { RouteKind::Local } else { RouteKind::Upstream },
            providers,
            modality: first_local.map_or("chat", local_modality),
            context_length: entry
                .context_length
                .or_else(|| first_local.map(|m| m.engine.info().context_length as u64)),
            prices: entry.prices,
            parent: None,
        }
    }
}

fn python_listing(name: &str, model: &PythonModel) -> ModelListing {
    let modality =
        model.worker.schema().map_or("prediction", |schema| python_modality(&schema.output));
    ModelListing {
        id: name.into(),
        kind: RouteKind::Local,
        providers: vec![LOCAL_PROVIDER.into()],
        modality,
        context_length: None,
        prices: Prices::default(),
        parent: None,
    }
}

/// What a Python predictor makes, read off its output schema: `text` (a string, or a stream
/// of them), `file` (a `Path`, or a list or stream of them), or `json` (anything else).
/// `prediction` until setup has told.
fn python_modality(output: &serde_json::Value) -> &'static str {
    let item = output.get("items").unwrap_or(output);
    let is = |key: &str, value: &str| item.get(key).and_then(|v| v.as_str()) == Some(value);
    if is("format", "uri") {
        "file"
    } else if is("type", "string") {
        "text"
    } else {
        "json"
    }
}

fn local_modality(model: &LocalModel) -> &'static str {
    if model.engine.has_chat_template() {
        "chat"
    } else {
        "completion"
    }
}

fn local_listing(name: &str, model: &LocalModel) -> ModelListing {
    ModelListing {
        id: name.into(),
        kind: RouteKind::Local,
        providers: vec![LOCAL_PROVIDER.into()],
        modality: local_modality(model),
        context_length: Some(model.engine.info().context_length as u64),
        prices: Prices::from_floats(
            model.settings.input_price_per_mtok,
            model.settings.output_price_per_mtok,
        ),
        parent: None,
    }
}

fn embedding_listing(name: &str, model: &EmbeddingModel) -> ModelListing {
    ModelListing {
        id: name.into(),
        kind: RouteKind::Local,
        providers: vec![LOCAL_PROVIDER.into()],
        modality: "embedding",
        context_length: Some(model.embedder.info().max_input_tokens as u64),
        prices: Prices::from_floats(model.settings.input_price_per_mtok, None),
        parent: None,
    }
}
