//! The catalog: every model id this daemon answers for, and the ordered routes behind each.
//! Local packages are listed under their own name; `[[models]]` entries add ids whose routes
//! are upstream providers, local packages, or both; `provider/model` reaches a configured
//! provider directly. Local embedding packages are kept apart from the generative ones: they are
//! served only by the embedding surfaces, never routed to for generation.

use std::collections::BTreeMap;
use std::sync::Arc;

use hearth_engine::{Embedder, Engine};
use hearth_package::{CogConfig, PackageSettings};
use serde::Serialize;

use crate::config::{ConfigError, GatewayConfig, ModelConfig, LOCAL_PROVIDER};
use crate::pricing::Prices;
use crate::providers::{build_providers, LocalProvider, Provider};
use crate::router::Target;

mod listing;
pub use listing::ModelListing;

/// A package that loaded and is being served.
#[derive(Clone)]
pub struct LocalModel {
    pub engine: Engine,
    pub cog: CogConfig,
    pub settings: PackageSettings,
}

/// An embedding package that loaded and is being served.
#[derive(Clone)]
pub struct EmbeddingModel {
    pub embedder: Embedder,
    pub cog: CogConfig,
    pub settings: PackageSettings,
}

/// A package whose Cog predictor runs in its own Python, behind a supervised worker.
#[derive(Clone)]
pub struct PythonModel {
    pub worker: hearth_python::Worker,
    pub cog: CogConfig,
    pub settings: PackageSettings,
}

/// What the catalog knows about one model id.
// Entries are few and live as long as the daemon; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum CatalogEntry {
    Ready(LocalModel),
    /// The package was refused; the reason says what is wrong with it.
    Failed {
        reason: String,
    },
}

/// Every model id this daemon answers for.
#[derive(Clone, Default)]
pub struct Catalog {
    entries: BTreeMap<String, CatalogEntry>,
    embedders: BTreeMap<String, EmbeddingModel>,
    python: BTreeMap<String, PythonModel>,
    default_model: Option<String>,
    providers: BTreeMap<String, Arc<dyn Provider>>,
    models: BTreeMap<String, ModelEntry>,
}

/// A `[[models]]` entry: routes as `(provider, model)` pairs, in order.
#[derive(Debug, Clone)]
struct ModelEntry {
    routes: Vec<(String, String)>,
    prices: Prices,
    context_length: Option<u64>,
}

/// One way to serve a model.
// Short-lived and few per request; the local variant is mostly cheap handles.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Route {
    /// A local package, under one of its LoRA adapters when `adapter` names one.
    Local {
        model: LocalModel,
        adapter: Option<String>,
    },
    Upstream {
        provider: String,
        model: String,
    },
}

impl Route {
    /// How the route is named in config, logs and the ledger: `provider/model`.
    pub fn label(&self) -> String {
        match self {
            Route::Local { model, adapter } => {
                let name = &model.engine.info().name;
                match adapter {
                    Some(adapter) => format!("{LOCAL_PROVIDER}/{name}{ADAPTER_SEPARATOR}{adapter}"),
                    None => format!("{LOCAL_PROVIDER}/{name}"),
                }
            }
            Route::Upstream { provider, model } => format!("{provider}/{model}"),
        }
    }

    pub fn kind(&self) -> RouteKind {
        match self {
            Route::Local { .. } => RouteKind::Local,
            Route::Upstream { .. } => RouteKind::Upstream,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    Local,
    Upstream,
}

/// A model id resolved: its routes in the order to try them, and its prices.
#[derive(Clone)]
pub struct ResolvedModel {
    pub id: String,
    pub routes: Vec<Route>,
    pub prices: Prices,
}

/// Separates a local package from one of its adapters in a model id: `PACKAGE:ADAPTER`.
pub const ADAPTER_SEPARATOR: char = ':';

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("model `{0}` does not exist")]
    NotFound(String),
    #[error("model `{model}` is unavailable: {reason}")]
    Unavailable { model: String, reason: String },
    #[error("model `{0}` is an embedding model; it serves embeddings, not text generation")]
    EmbeddingOnly(String),
    #[error("model `{model}` has no LoRA adapter `{adapter}` (adapters: {known})")]
    NoAdapter { model: String, adapter: String, known: String },
}

impl Catalog {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert_ready(&mut self, name: String, model: LocalModel) {
        self.entries.insert(name, CatalogEntry::Ready(model));
    }

    pub fn insert_failed(&mut self, name: String, reason: String) {
        self.embedders.remove(&name);
        self.entries.insert(name, CatalogEntry::Failed { reason });
    }

    /// Drops whatever is served as `name` (ready, failed or embedding); true if anything was.
    /// Engines are not stopped here: each stops once its last handle, and so its last
    /// in-flight request, is gone.
    pub fn remove(&mut self, name: &str) -> bool {
        let entry = self.entries.remove(name).is_some();
        let embedder = self.embedders.remove(name).is_some();
        // A worker process ends with its last handle, after its predictions in flight.
        let python = self.python.remove(name).is_some();
        entry || embedder || python
    }

    /// Adds a loaded embedding package under `name`.
    pub fn insert_embedder(&mut self, name: String, model: EmbeddingModel) {
        self.entries.remove(&name);
        self.embedders.insert(name, model);
    }

    /// Adds a package served by its Python predictor under `name`.
    pub fn insert_python(&mut self, name: String, model: PythonModel) {
        self.entries.remove(&name);
        self.embedders.remove(&name);
        self.python.insert(name, model);
    }

    /// The Python-served model called `id`, if one is loaded.
    pub fn python(&self, id: &str) -> Option<&PythonModel> {
        self.python.get(id)
    }

    /// Every Python-served model, sorted by name.
    pub fn python_models(&self) -> impl Iterator<Item = (&String, &PythonModel)> {
        self.python.iter()
    }

    /// The Python-served model at the Cog root routes, when the default model is one.
    pub fn default_python(&self) -> Option<(&str, &PythonModel)> {
        let name = self.default_model.as_deref()?;
        self.python(name).map(|m| (name, m))
    }

    /// The embedding model called `id`, if one is loaded.
    pub fn embedder(&self, id: &str) -> Option<&EmbeddingModel> {
        self.embedders.get(id)
    }

    /// Every loaded embedding model, sorted by name.
    pub fn embedders(&self) -> impl Iterator<Item = (&String, &EmbeddingModel)> {
        self.embedders.iter()
    }

    /// The embedding model served at the Cog root routes, when the default model is one.
    pub fn default_embedder(&self) -> Option<(&str, &EmbeddingModel)> {
        let name = self.default_model.as_deref()?;
        self.embedder(name).map(|m| (name, m))
    }

    /// Chooses the model served at the Cog root routes: the one named, else the only ready
    /// model (generative or embedding), else the one whose package settings say `default: true`.
    pub fn set_default(&mut self, name: Option<String>) {
        self.default_model = name.or_else(|| {
            let ready: Vec<(&String, bool)> = self
                .ready()
                .map(|(n, m)| (n, m.settings.default))
                .chain(self.embedders.iter().map(|(n, m)| (n, m.settings.default)))
                .chain(self.python.iter().map(|(n, m)| (n, m.settings.default)))
                .collect();
            match ready.as_slice() {
                [(name, _)] => Some((*name).clone()),
                _ => ready.iter().find(|(_, default)| *default).map(|(n, _)| (*n).clone()),
            }
        });
    }

    pub fn entry(&self, id: &str) -> Option<&CatalogEntry> {
        self.entries.get(id)
    }

    /// The ready model called `id`, if any.
    pub fn get(&self, id: &str) -> Option<&LocalModel> {
        match self.entries.get(id) {
            Some(CatalogEntry::Ready(model)) => Some(model),
            _ => None,
        }
    }

    pub fn default_model(&self) -> Option<(&str, &LocalModel)> {
        let name = self.default_model.as_deref()?;
        self.get(name).map(|m| (name, m))
    }

    pub fn ready(&self) -> impl Iterator<Item = (&String, &LocalModel)> {
        self.entries.iter().filter_map(|(name, e)| match e {
            CatalogEntry::Ready(m) => Some((name, m)),
            CatalogEntry::Failed { .. } => None,
        })
    }

    pub fn entries(&self) -> impl Iterator<Item = (&String, &CatalogEntry)> {
        self.entries.iter()
    }

    /// Adds `[[providers]]` and `[[models]]` from a validated config, reading API keys from
    /// the environment variables the providers name.
    pub fn configure(&mut self, config: &GatewayConfig) -> Result<(), ConfigError> {
        self.configure_with_env(config, |var| std::env::var(var).ok())
    }

    /// As [`Catalog::configure`], with API keys looked up through `env`.
    pub fn configure_with_env(
        &mut self,
        config: &GatewayConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        config.validate()?;
        for provider in build_providers(config, &env)? {
            self.insert_provider(provider);
        }
        for model in &config.models {
            self.insert_model(model);
        }
        Ok(())
    }

    /// Adds (or replaces) a provider under its own name.
    pub fn insert_provider(&mut self, provider: Arc<dyn Provider>) {
        self.providers.insert(provider.name().to_string(), provider);
    }

    /// Adds (or replaces) a model entry; its routes should name known providers.
    pub fn insert_model(&mut self, config: &ModelConfig) {
        let routes = config
            .routes
            .iter()
            .filter_map(|r| r.split_once('/'))
            .map(|(p, m)| (p.to_string(), m.to_string()))
            .collect();
        let entry = ModelEntry {
            routes,
            prices: Prices::from_model(config),
            context_length: config.context_length,
        };
        self.models.insert(config.id.clone(), entry);
    }

    pub fn provider(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        self.providers.get(name)
    }

    /// The routes serving `id`, in order: a `[[models]]` entry, else a local package of that
    /// name, else `provider/model` for a configured provider.
    pub fn resolve(&self, id: &str) -> Result<ResolvedModel, CatalogError> {
        if let Some(entry) = self.models.get(id) {
            return self.resolve_entry(id, entry);
        }
        match self.entries.get(id) {
            Some(CatalogEntry::Ready(model)) => {
                let prices = Prices::from_floats(
                    model.settings.input_price_per_mtok,
                    model.settings.output_price_per_mtok,
                );
                return Ok(ResolvedModel {
                    id: id.into(),
                    routes: vec![Route::Local { model: model.clone(), adapter: None }],
                    prices,
                });
            }
            Some(CatalogEntry::Failed { reason }) => {
                return Err(CatalogError::Unavailable { model: id.into(), reason: reason.clone() });
            }
            None if self.embedders.contains_key(id) => {
                return Err(CatalogError::EmbeddingOnly(id.into()));
            }
            None => {}
        }
        if let Some(resolved) = self.resolve_adapter(id)? {
            return Ok(resolved);
        }
        match id.split_once('/') {
            Some((provider, model))
                if !model.is_empty() && self.providers.contains_key(provider) =>
            {
                let route = Route::Upstream { provider: provider.into(), model: model.into() };
                Ok(ResolvedModel { id: id.into(), routes: vec![route], prices: Prices::default() })
            }
            _ => Err(CatalogError::NotFound(id.into())),
        }
    }

    /// The ready local package a `PACKAGE:ADAPTER` id runs on, and the adapter: `None` when
    /// `id` has no such form or names no ready package (so other rules apply), an error naming
    /// the package's adapters when it has none of that name.
    pub fn adapter_base<'a>(
        &self,
        id: &'a str,
    ) -> Result<Option<(&LocalModel, &'a str)>, CatalogError> {
        let Some((base, adapter)) = id.split_once(ADAPTER_SEPARATOR) else { return Ok(None) };
        let Some(CatalogEntry::Ready(model)) = self.entries.get(base) else { return Ok(None) };
        let names = model.engine.adapter_names();
        if !names.iter().any(|n| n == adapter) {
            let known = if names.is_empty() { "none".into() } else { names.join(", ") };
            return Err(CatalogError::NoAdapter {
                model: base.into(),
                adapter: adapter.into(),
                known,
            });
        }
        Ok(Some((model, adapter)))
    }

    /// `PACKAGE:ADAPTER`: a ready local package under one of its LoRA adapters.
    fn resolve_adapter(&self, id: &str) -> Result<Option<ResolvedModel>, CatalogError> {
        let Some((model, adapter)) = self.adapter_base(id)? else { return Ok(None) };
        let prices = Prices::from_floats(
            model.settings.input_price_per_mtok,
            model.settings.output_price_per_mtok,
        );
        let route = Route::Local { model: model.clone(), adapter: Some(adapter.into()) };
        Ok(Some(ResolvedModel { id: id.into(), routes: vec![route], prices }))
    }

    /// Shorthand for `resolve(id)?.routes`.
    pub fn routes(&self, id: &str) -> Result<Vec<Route>, CatalogError> {
        Ok(self.resolve(id)?.routes)
    }

    /// Local routes whose package is not ready are left out; a model with no route left is
    /// unavailable, and the reason says why each was left out.
    fn resolve_entry(&self, id: &str, entry: &ModelEntry) -> Result<ResolvedModel, CatalogError> {
        let mut routes = Vec::new();
        let mut missing = Vec::new();
        for (provider, model) in &entry.routes {
            if provider != LOCAL_PROVIDER {
                routes.push(Route::Upstream { provider: provider.clone(), model: model.clone() });
                continue;
            }
            match self.entries.get(model) {
                Some(CatalogEntry::Ready(local)) => {
                    routes.push(Route::Local { model: local.clone(), adapter: None })
                }
                Some(CatalogEntry::Failed { reason }) => {
                    missing.push(format!("local/{model}: {reason}"))
                }
                None if self.embedders.contains_key(model) => {
                    missing.push(format!("local/{model}: an embedding model cannot generate"))
                }
                None => missing.push(format!("local/{model}: no such package is loaded")),
            }
        }
        if routes.is_empty() {
            return Err(CatalogError::Unavailable { model: id.into(), reason: missing.join("; ") });
        }
        Ok(ResolvedModel { id: id.into(), routes, prices: entry.prices })
    }

    /// What the router calls for each route; routes naming an unknown provider are skipped.
    pub(crate) fn targets(&self, routes: &[Route]) -> Vec<Target> {
        routes
            .iter()
            .filter_map(|route| {
                let label = route.label();
                match route {
                    Route::Local { model: local, adapter } => {
                        let provider: Arc<dyn Provider> = Arc::new(
                            LocalProvider::new(local.engine.clone()).with_adapter(adapter.clone()),
                        );
                        Some(Target { label, provider, model: local.engine.info().name.clone() })
                    }
                    Route::Upstream { provider, model } => {
                        let provider = self.providers.get(provider)?.clone();
                        Some(Target { label, provider, model: model.clone() })
                    }
                }
            })
            .collect()
    }

    /// Stops every engine and embedder, letting each finish what it has in flight.
    pub fn shutdown(&self) {
        for (_, model) in self.ready() {
            model.engine.shutdown();
        }
        for model in self.embedders.values() {
            model.embedder.shutdown();
        }
        for model in self.python.values() {
            model.worker.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[[providers]]
name = "openai"
kind = "openai"
api_key_env = "OPENAI_KEY"

[[providers]]
name = "claude"
kind = "anthropic"

[[models]]
id = "chat"
routes = ["openai/gpt-4o-mini", "claude/claude-haiku", "openai/gpt-4o"]
input_price_per_mtok = 0.15
output_price_per_mtok = 0.6
context_length = 128000

[[models]]
id = "only-local"
routes = ["local/missing"]
"#;

    fn catalog() -> Catalog {
        let config = GatewayConfig::parse(CONFIG).unwrap();
        let mut catalog = Catalog::new();
        catalog.configure_with_env(&config, |_| Some("sk-x".into())).unwrap();
        catalog.insert_failed("broken".into(), "config.json: missing `hidden_size`".into());
        catalog
    }

    fn labels(routes: &[Route]) -> Vec<String> {
        routes.iter().map(Route::label).collect()
    }

    #[test]
    fn model_entries_resolve_to_their_routes_in_order() {
        let resolved = catalog().resolve("chat").unwrap();
        assert_eq!(
            labels(&resolved.routes),
            ["openai/gpt-4o-mini", "claude/claude-haiku", "openai/gpt-4o"]
        );
        assert_eq!(resolved.prices.input_per_mtok, Some("0.15".parse().unwrap()));
        assert_eq!(catalog().targets(&resolved.routes).len(), 3);
    }

    #[test]
    fn provider_prefixed_ids_route_straight_to_the_provider() {
        let routes = catalog().routes("claude/claude-opus").unwrap();
        assert_eq!(labels(&routes), ["claude/claude-opus"]);
        assert_eq!(catalog().resolve("claude/claude-opus").unwrap().prices, Prices::default());
        let nope = catalog().resolve("nope/model").err();
        assert_eq!(nope, Some(CatalogError::NotFound("nope/model".into())));
    }

    #[test]
    fn unusable_models_say_why() {
        let c = catalog();
        let broken = c.resolve("broken").err().unwrap();
        assert_eq!(
            broken.to_string(),
            "model `broken` is unavailable: config.json: missing `hidden_size`"
        );
        assert!(matches!(broken, CatalogError::Unavailable { .. }));
        let local = c.resolve("only-local").err().unwrap();
        assert!(local.to_string().contains("local/missing: no such package is loaded"), "{local}");
        assert!(matches!(c.resolve("ghost").err(), Some(CatalogError::NotFound(_))));
    }

    #[test]
    fn a_missing_api_key_variable_is_a_config_error() {
        let config = GatewayConfig::parse(CONFIG).unwrap();
        let err = Catalog::new().configure_with_env(&config, |_| None).unwrap_err();
        assert_eq!(err.path, "providers[0].api_key_env");
        assert!(err.message.contains("OPENAI_KEY"));
    }

    #[test]
    fn upstream_models_are_listed_with_providers_and_prices() {
        let listed = catalog().list_models();
        let chat = listed.iter().find(|m| m.id == "chat").unwrap();
        assert_eq!(chat.kind, RouteKind::Upstream);
        assert_eq!(chat.providers, ["openai", "claude"]);
        assert_eq!((chat.modality, chat.context_length), ("chat", Some(128_000)));
        assert!(listed.iter().all(|m| m.id != "broken"));
    }
}
