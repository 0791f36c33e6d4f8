//! Cog-style model packages: a directory that Cog itself would accept (`cog.yaml`, a predictor
//! stub) holding a Hugging Face-format model (`config.json`, safetensors weights, `tokenizer.json`,
//! `tokenizer_config.json`) and optional Hearth settings (`hearth.yaml`). An encoder package adds
//! sentence-transformers' `modules.json` and pooling config, which say how it embeds text.
//!
//! [`Package::load`] validates all of it before any weight reaches a device, and says which file
//! is wrong when something is. [`synth`] writes deterministic packages with random weights for
//! tests and benchmarks.
//!
//! This crate must never know about devices, tensors-as-math (candle), HTTP or the scheduler:
//! it hands the engine validated files and memory-mapped bytes, nothing more.

pub mod archive;
mod cog;
mod embedding;
mod error;
mod gguf;
#[cfg(feature = "hub")]
pub mod hub;
mod model_config;
mod settings;
pub mod synth;
mod template;
mod tokens;
mod weights;

#[cfg(test)]
mod load_tests;

use std::path::{Path, PathBuf};

pub use cog::{
    BuildCommand, BuildConfig, BuildMount, BuildStep, CogConfig, ConcurrencyConfig, WeightsEntry,
    WeightsSource,
};
pub use embedding::{EmbeddingConfig, PoolingMode};
pub use error::{PackageError, TensorProblem};
pub use gguf::{GgufFile, GgufTensor};
pub use model_config::{ModelConfig, ModelKind, EMBEDDING_ARCHITECTURES, SUPPORTED_ARCHITECTURES};
pub use settings::{DType, PackageSettings, Quantize, Runtime};
pub use template::ChatTemplate;
pub use tokens::SpecialTokens;
pub use weights::{TensorDtype, TensorInfo, Weights};

use tokens::TokenizerConfig;

/// Longest package name accepted; names end up in URLs, metrics labels and file names.
const MAX_NAME_LEN: usize = 128;

/// A validated model package.
#[derive(Debug)]
pub struct Package {
    /// The name requests use: hearth.yaml `name`, else the last part of cog.yaml `model`, else
    /// the directory name.
    pub name: String,
    pub dir: PathBuf,
    pub cog: CogConfig,
    pub settings: PackageSettings,
    pub model: ModelConfig,
    pub weights: Weights,
    pub tokenizer: tokenizers::Tokenizer,
    /// `None` when tokenizer_config.json has no `chat_template` (a base model).
    pub chat_template: Option<ChatTemplate>,
    pub special_tokens: SpecialTokens,
    /// How an embedding package pools and normalises (`modules.json` and friends); `None` for a
    /// generative package.
    pub embedding: Option<EmbeddingConfig>,
}

/// Whether the package in `dir` runs its Cog predictor in Python: `hearth.yaml` says
/// `runtime: python`, or it says nothing and the package has a predictor but no model files
/// Hearth's engine reads (`config.json`, a `.gguf`).
pub fn runs_in_python(dir: &Path, cog: &CogConfig, settings: &PackageSettings) -> bool {
    match settings.runtime {
        Some(Runtime::Python) => true,
        Some(Runtime::Native) => false,
        None => {
            let has_gguf =
                std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| {
                    e.path().extension().is_some_and(|ext| ext.eq_ignore_ascii_case("gguf"))
                });
            cog.predictor().is_some() && !dir.join("config.json").is_file() && !has_gguf
        }
    }
}

/// The name a package is served under, read without loading the rest of it (for packages
/// that run in Python).
pub fn name_of(
    dir: &Path,
    cog: &CogConfig,
    settings: &PackageSettings,
) -> Result<String, PackageError> {
    package_name(dir, cog, settings)
}

impl Package {
    /// Reads and validates every file of the package in `dir`, and maps its weights.
    pub fn load(dir: &Path) -> Result<Package, PackageError> {
        if !dir.is_dir() {
            return Err(PackageError::NotADirectory(dir.to_path_buf()));
        }
        if !dir.join(cog::COG_FILE).is_file() {
            return Err(PackageError::MissingFile {
                file: cog::COG_FILE.to_string(),
                why: "a package is a directory with a cog.yaml",
            });
        }
        let cog = CogConfig::load(dir)?;
        let settings = PackageSettings::load(dir)?;
        let name = package_name(dir, &cog, &settings)?;
        let model = ModelConfig::load(dir)?;
        check_context_length(&settings, &model)?;
        let tokenizer = tokens::load_tokenizer(dir)?;
        check_vocab(&tokenizer, &model)?;
        let tokenizer_config = TokenizerConfig::load(dir)?;
        let special_tokens = SpecialTokens::resolve(dir, &model, &tokenizer, &tokenizer_config)?;
        let chat_template = compile_template(&tokenizer_config)?;
        let embedding = match model.kind() {
            ModelKind::Embedding => Some(EmbeddingConfig::load(
                dir,
                &model,
                tokenizer_config.model_max_length(),
                settings.context_length,
            )?),
            ModelKind::Generative => None,
        };
        let weights = Weights::load(dir)?;
        Ok(Package {
            name,
            dir: dir.to_path_buf(),
            cog,
            settings,
            model,
            weights,
            tokenizer,
            chat_template,
            special_tokens,
            embedding,
        })
    }

    /// The longest sequence (prompt plus output) this package serves; for an embedding package,
    /// the longest input.
    pub fn context_length(&self) -> usize {
        match (&self.settings.context_length, &self.embedding) {
            (Some(length), _) => *length,
            (None, Some(embedding)) => embedding.max_seq_length,
            (None, None) => self.model.max_position_embeddings,
        }
    }
}

/// The package directories under `models_dir`: subdirectories holding a `cog.yaml`, sorted.
/// Hidden directories are skipped.
pub fn discover(models_dir: &Path) -> Result<Vec<PathBuf>, PackageError> {
    let entries = std::fs::read_dir(models_dir).map_err(|e| PackageError::io(models_dir, e))?;
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| PackageError::io(models_dir, e))?.path();
        let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if !hidden && path.is_dir() && path.join(cog::COG_FILE).is_file() {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// Reads a file the package cannot do without, naming it when it is absent.
pub(crate) fn read_required(
    path: &Path,
    file: &str,
    why: &'static str,
) -> Result<String, PackageError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(PackageError::MissingFile { file: file.to_string(), why })
        }
        Err(e) => Err(PackageError::io(path, e)),
    }
}

/// The name the package in `dir` would be served under, read from `hearth.yaml` and `cog.yaml`
/// alone (no weights, no tokenizer), for tools that must match a name to a directory.
pub fn read_name(dir: &Path) -> Result<String, PackageError> {
    package_name(dir, &CogConfig::load(dir)?, &PackageSettings::load(dir)?)
}

fn package_name(
    dir: &Path,
    cog: &CogConfig,
    settings: &PackageSettings,
) -> Result<String, PackageError> {
    let (name, origin) = if let Some(name) = &settings.name {
        (name.clone(), "hearth.yaml `name`")
    } else if let Some(model) = &cog.model {
        // `model` is an image reference such as `r8.im/owner/name`; requests use its last part.
        (model.rsplit('/').next().unwrap_or(model).to_string(), "cog.yaml `model`")
    } else {
        let dir_name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        (dir_name.unwrap_or_default(), "the directory name")
    };
    if is_valid_name(&name) {
        Ok(name)
    } else {
        Err(PackageError::InvalidName { name, origin: origin.to_string() })
    }
}

/// The one rule for model names, as people read it (error messages, the README).
pub const NAME_PATTERN: &str =
    "1-128 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit";

/// Whether `name` can name a package: it ends up in URLs, metrics labels and file names, so it
/// must not be a path component with a meaning of its own (`.`, `..`) or a hidden file (the
/// staging area is `.hearth-staging`): the first character is a letter or a digit.
pub fn is_valid_name(name: &str) -> bool {
    let is_plain = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    name.len() <= MAX_NAME_LEN
        && name.bytes().next().is_some_and(is_plain)
        && name.bytes().all(|b| is_plain(b) || b"._-".contains(&b))
}

fn check_context_length(
    settings: &PackageSettings,
    model: &ModelConfig,
) -> Result<(), PackageError> {
    match settings.context_length {
        Some(length) if length > model.max_position_embeddings => Err(PackageError::invalid(
            settings::SETTINGS_FILE,
            "context_length",
            format!(
                "is {length}, more than config.json's max_position_embeddings ({})",
                model.max_position_embeddings
            ),
        )),
        _ => Ok(()),
    }
}

/// Every token the tokenizer can produce needs an embedding row. Checkpoints often pad the
/// embedding beyond the tokenizer, so only the other direction is an error.
fn check_vocab(tokenizer: &tokenizers::Tokenizer, model: &ModelConfig) -> Result<(), PackageError> {
    let tokenizer_vocab = tokenizer.get_vocab_size(true);
    if tokenizer_vocab > model.vocab_size {
        return Err(PackageError::invalid(
            model_config::CONFIG_FILE,
            "vocab_size",
            format!("is {}, but tokenizer.json has {tokenizer_vocab} tokens", model.vocab_size),
        ));
    }
    Ok(())
}

fn compile_template(config: &TokenizerConfig) -> Result<Option<ChatTemplate>, PackageError> {
    let Some(source) = config.chat_template() else { return Ok(None) };
    let template = ChatTemplate::new(source, config.bos_token(), config.eos_token())?;
    match config.tool_use_template() {
        Some(tool_use) => template.with_tool_template(tool_use).map(Some),
        None => Ok(Some(template)),
    }
}
