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
#[cfg(feature = "test-support")]
pub mod example_models;
mod gguf;
mod gguf_hf;
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
pub use gguf::{GgufFile, GgufTensor, MetaValue};
pub use model_config::{ModelConfig, ModelKind, EMBEDDING_ARCHITECTURES, SUPPORTED_ARCHITECTURES};
pub use settings::{AdapterEntry, DType, PackageSettings, Quantize, Runtime, HF_ADAPTERS_DIR};
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
    /// Reads and validates every file of the package in `dir`, and maps its weights. A
    /// directory with one `.gguf` needs nothing else: cog.yaml is optional, and a missing
    /// config.json or tokenizer.json is derived from the GGUF's metadata.
    pub fn load(dir: &Path) -> Result<Package, PackageError> {
        if !dir.is_dir() {
            return Err(PackageError::NotADirectory(dir.to_path_buf()));
        }
        let gguf = weights::find_gguf(dir)?;
        let cog = if dir.join(cog::COG_FILE).is_file() {
            CogConfig::load(dir)?
        } else if gguf.is_some() {
            CogConfig::default()
        } else {
            return Err(PackageError::MissingFile {
                file: cog::COG_FILE.to_string(),
                why: "a package is a directory with a cog.yaml (or one .gguf file)",
            });
        };
        let settings = PackageSettings::load(dir)?;
        let name = package_name(dir, &cog, &settings)?;
        let files = HfFiles::read(dir, gguf.as_deref())?;
        Self::assemble(dir, name, cog, settings, files, Weights::load(dir)?)
    }

    /// A GGUF file served on its own (`hearth serve ./model.gguf`), as llama.cpp and Ollama
    /// serve one: named after the file (lowercased, other characters as `-`), with default
    /// settings, everything else from the file's metadata.
    pub fn load_gguf_file(path: &Path) -> Result<Package, PackageError> {
        let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !path.is_file() || !file.ends_with(".gguf") {
            return Err(PackageError::MissingFile { file, why: "expected a .gguf file" });
        }
        let name = name_from_file(&file);
        let gguf = GgufFile::load(dir, &file)?;
        let files = HfFiles::derive(&gguf, &file)?;
        let weights = Weights::from_gguf(gguf);
        let (cog, settings) = (CogConfig::default(), PackageSettings::default());
        Self::assemble(dir, name, cog, settings, files, weights)
    }

    fn assemble(
        dir: &Path,
        name: String,
        cog: CogConfig,
        settings: PackageSettings,
        files: HfFiles,
        weights: Weights,
    ) -> Result<Package, PackageError> {
        let model = ModelConfig::parse(&files.config)?;
        check_context_length(&settings, &model)?;
        let tokenizer = tokens::parse_tokenizer(&files.tokenizer)?;
        check_vocab(&tokenizer, &model)?;
        let tokenizer_config = match &files.tokenizer_config {
            Some(text) => TokenizerConfig::parse(text)?,
            None => TokenizerConfig::default(),
        };
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
        let is_package = path.join(cog::COG_FILE).is_file()
            || weights::find_gguf(&path).ok().flatten().is_some();
        if !hidden && path.is_dir() && is_package {
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

/// The Hugging Face files a package is read from, as text.
struct HfFiles {
    config: String,
    tokenizer: String,
    tokenizer_config: Option<String>,
}

impl HfFiles {
    /// From `dir`; where config.json or tokenizer.json is missing beside a GGUF, all three come
    /// from the GGUF's metadata (a config of one and a tokenizer of the other would not match).
    fn read(dir: &Path, gguf: Option<&str>) -> Result<Self, PackageError> {
        let complete = [model_config::CONFIG_FILE, tokens::TOKENIZER_FILE]
            .iter()
            .all(|f| dir.join(f).is_file());
        match gguf {
            Some(file) if !complete => Self::derive(&GgufFile::load(dir, file)?, file),
            _ => Ok(Self {
                config: ModelConfig::read(dir)?,
                tokenizer: tokens::read_tokenizer(dir)?,
                tokenizer_config: tokens::read_optional(dir, tokens::TOKENIZER_CONFIG_FILE)?,
            }),
        }
    }

    fn derive(gguf: &GgufFile, file: &str) -> Result<Self, PackageError> {
        let derived = gguf_hf::derive(gguf, file)?;
        Ok(Self {
            config: derived.config,
            tokenizer: derived.tokenizer,
            tokenizer_config: Some(derived.tokenizer_config),
        })
    }
}

/// A model name from a file name: `SmolLM2-135M-Instruct.Q4_1.gguf` → `smollm2-135m-instruct.q4_1`.
fn name_from_file(file: &str) -> String {
    let stem = file.strip_suffix(".gguf").unwrap_or(file).to_ascii_lowercase();
    let name: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' })
        .collect();
    let name = name.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    let name = if name.is_empty() { "model" } else { name };
    name.chars().take(MAX_NAME_LEN).collect()
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

/// Whether `name` can name a LoRA adapter: as a package name, but upper-case letters are
/// allowed (PEFT adapters are often named so). It becomes a directory name when the adapter is
/// pushed, so it may not start with a dot.
pub fn is_valid_adapter_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// [`is_valid_adapter_name`] in words.
pub const ADAPTER_NAME_PATTERN: &str =
    "1-128 characters of letters, digits, '.', '_' or '-', starting with a letter or digit";

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
