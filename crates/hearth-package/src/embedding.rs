//! What an embedding (encoder) package says about turning token states into one vector: the
//! sentence-transformers files `modules.json`, the pooling module's `config.json` (both the
//! legacy `pooling_mode_*_tokens` flags and the newer `pooling_mode`), a `Normalize` module, and
//! `sentence_bert_config.json` (`max_seq_length`, `do_lower_case`).
//!
//! A package without `modules.json` is read as sentence-transformers reads a plain Hugging Face
//! checkpoint: mean pooling, no normalisation.

use std::path::{Component, Path};

use serde::Deserialize;

use crate::error::PackageError;
use crate::model_config::ModelConfig;
use crate::tokens::read_optional;

pub(crate) const MODULES_FILE: &str = "modules.json";
pub(crate) const SENTENCE_CONFIG_FILE: &str = "sentence_bert_config.json";
const MODULE_CONFIG_FILE: &str = "config.json";

/// One way of reducing a sequence's token states to one vector, as sentence-transformers names
/// them. Several modes are concatenated in the order the pooling config lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
    /// The first token's state (`[CLS]`).
    Cls,
    /// Element-wise maximum over the tokens.
    Max,
    /// Mean over the tokens.
    Mean,
    /// Sum over the tokens divided by the square root of their number.
    MeanSqrtLen,
    /// Mean weighted by position (1, 2, 3, …).
    WeightedMean,
    /// The last token's state.
    LastToken,
}

impl PoolingMode {
    /// The name sentence-transformers' `pooling_mode` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cls => "cls",
            Self::Max => "max",
            Self::Mean => "mean",
            Self::MeanSqrtLen => "mean_sqrt_len_tokens",
            Self::WeightedMean => "weightedmean",
            Self::LastToken => "lasttoken",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::LEGACY_ORDER.into_iter().find(|mode| mode.as_str() == name)
    }

    /// The legacy flags' concatenation order, which sentence-transformers keeps.
    const LEGACY_ORDER: [PoolingMode; 6] =
        [Self::Cls, Self::Max, Self::Mean, Self::MeanSqrtLen, Self::WeightedMean, Self::LastToken];

    fn legacy_flag(self) -> &'static str {
        match self {
            Self::Cls => "pooling_mode_cls_token",
            Self::Max => "pooling_mode_max_tokens",
            Self::Mean => "pooling_mode_mean_tokens",
            Self::MeanSqrtLen => "pooling_mode_mean_sqrt_len_tokens",
            Self::WeightedMean => "pooling_mode_weightedmean_tokens",
            Self::LastToken => "pooling_mode_lasttoken",
        }
    }
}

/// How an embedding package turns text into one vector.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingConfig {
    /// Pooling modes, concatenated in this order; never empty.
    pub pooling: Vec<PoolingMode>,
    /// Whether the pooled vector is scaled to unit length (a `Normalize` module).
    pub normalize: bool,
    /// The longest input, in tokens including special tokens: hearth.yaml `context_length`,
    /// else `sentence_bert_config.json`'s `max_seq_length`, else the smaller of config.json's
    /// `max_position_embeddings` and tokenizer_config.json's `model_max_length`.
    pub max_seq_length: usize,
    /// `do_lower_case` of `sentence_bert_config.json`: lowercase text before tokenizing.
    pub lowercase: bool,
    /// The token-state width the pooling config was written for, when it says.
    pub word_embedding_dimension: Option<usize>,
}

impl EmbeddingConfig {
    /// The length of an embedding, given the model's hidden size.
    pub fn dimension(&self, hidden_size: usize) -> usize {
        hidden_size * self.pooling.len()
    }

    /// Reads the sentence-transformers files of the package in `dir`. `model_max_length` is
    /// tokenizer_config.json's, if it has one.
    pub(crate) fn load(
        dir: &Path,
        model: &ModelConfig,
        model_max_length: Option<usize>,
        context_length: Option<usize>,
    ) -> Result<Self, PackageError> {
        let (pooling, normalize) = match read_optional(dir, MODULES_FILE)? {
            Some(text) => parse_modules(dir, &text)?,
            None => (PoolingSpec::default_mean(), false),
        };
        let sentence: SentenceConfig = match read_optional(dir, SENTENCE_CONFIG_FILE)? {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| PackageError::parse(SENTENCE_CONFIG_FILE, e))?,
            None => SentenceConfig::default(),
        };
        let max_positions = model.max_position_embeddings;
        let max_seq_length = match (context_length, sentence.max_seq_length) {
            (Some(length), _) => length,
            (None, Some(length)) if length == 0 || length > max_positions => {
                return Err(PackageError::invalid(
                    SENTENCE_CONFIG_FILE,
                    "max_seq_length",
                    format!(
                        "is {length}; it must be between 1 and config.json's \
                         max_position_embeddings ({max_positions})"
                    ),
                ))
            }
            (None, Some(length)) => length,
            (None, None) => model_max_length.map_or(max_positions, |m| m.min(max_positions)),
        };
        Ok(Self {
            pooling: pooling.modes,
            normalize,
            max_seq_length,
            lowercase: sentence.do_lower_case,
            word_embedding_dimension: pooling.dimension,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
struct SentenceConfig {
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

/// One entry of `modules.json`.
#[derive(Debug, Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    idx: usize,
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

impl ModuleEntry {
    /// The class name without its module path: `Pooling` for
    /// `sentence_transformers.models.Pooling` and for its newer full paths alike.
    fn class(&self) -> &str {
        self.kind.rsplit('.').next().unwrap_or(&self.kind)
    }
}

struct PoolingSpec {
    modes: Vec<PoolingMode>,
    dimension: Option<usize>,
}

impl PoolingSpec {
    fn default_mean() -> Self {
        Self { modes: vec![PoolingMode::Mean], dimension: None }
    }
}

/// Reads the module pipeline: a Transformer, then one Pooling, then optionally Normalize.
/// Modules that change the vector in ways Hearth does not run (Dense, LayerNorm, …) are refused
/// rather than silently skipped, since skipping them would serve wrong vectors.
fn parse_modules(dir: &Path, text: &str) -> Result<(PoolingSpec, bool), PackageError> {
    let mut modules: Vec<ModuleEntry> =
        serde_json::from_str(text).map_err(|e| PackageError::parse(MODULES_FILE, e))?;
    modules.sort_by_key(|m| m.idx);
    let mut pooling: Option<PoolingSpec> = None;
    let mut normalize = false;
    for (position, module) in modules.iter().enumerate() {
        let field = format!("[{position}]");
        match module.class() {
            "Transformer" if position == 0 => {}
            "Transformer" => {
                return Err(PackageError::invalid(
                    MODULES_FILE,
                    &field,
                    "the Transformer module must come first",
                ))
            }
            _ if position == 0 => {
                return Err(PackageError::invalid(
                    MODULES_FILE,
                    &field,
                    format!("is `{}`; the first module must be a Transformer", module.kind),
                ))
            }
            "Pooling" if pooling.is_some() => {
                return Err(PackageError::invalid(MODULES_FILE, &field, "a second Pooling module"))
            }
            "Pooling" => pooling = Some(read_pooling(dir, &field, &module.path)?),
            "Normalize" if pooling.is_none() => {
                return Err(PackageError::invalid(
                    MODULES_FILE,
                    &field,
                    "Normalize must come after the Pooling module",
                ))
            }
            "Normalize" => normalize = true,
            // Dropout does nothing at inference.
            "Dropout" => {}
            _ => {
                return Err(PackageError::invalid(
                    MODULES_FILE,
                    &field,
                    format!(
                        "module `{}` is not supported; Hearth runs Transformer, Pooling and \
                         Normalize modules",
                        module.kind
                    ),
                ))
            }
        }
    }
    if modules.is_empty() {
        return Err(PackageError::invalid(MODULES_FILE, "modules", "must not be empty"));
    }
    let pooling = pooling.ok_or_else(|| {
        PackageError::invalid(MODULES_FILE, "modules", "has no Pooling module to make one vector")
    })?;
    Ok((pooling, normalize))
}

/// The pooling module's `config.json`, under the module's `path`.
fn read_pooling(dir: &Path, field: &str, path: &str) -> Result<PoolingSpec, PackageError> {
    if !is_relative_inside(path) {
        return Err(PackageError::invalid(
            MODULES_FILE,
            &format!("{field}.path"),
            format!("`{path}` must be a relative path inside the package"),
        ));
    }
    let file = Path::new(path).join(MODULE_CONFIG_FILE);
    let file_name = file.to_string_lossy().into_owned();
    let text = match std::fs::read_to_string(dir.join(&file)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PackageError::MissingFile {
                file: file_name,
                why: "modules.json names a Pooling module, whose config.json says how to pool",
            })
        }
        Err(e) => return Err(PackageError::io(dir.join(&file), e)),
    };
    parse_pooling(&file_name, &text)
}

fn parse_pooling(file: &str, text: &str) -> Result<PoolingSpec, PackageError> {
    let raw: serde_json::Value =
        serde_json::from_str(text).map_err(|e| PackageError::parse(file, e))?;
    let Some(object) = raw.as_object() else {
        return Err(PackageError::parse(file, "must be a JSON object"));
    };
    let dimension = ["embedding_dimension", "word_embedding_dimension"]
        .iter()
        .find_map(|key| object.get(*key).and_then(serde_json::Value::as_u64))
        .and_then(|d| usize::try_from(d).ok());
    let unknown_mode = |name: &str| {
        let known: Vec<&str> = PoolingMode::LEGACY_ORDER.iter().map(|m| m.as_str()).collect();
        PackageError::invalid(
            file,
            "pooling_mode",
            format!("`{name}` is not a pooling mode (modes: {})", known.join(", ")),
        )
    };
    let modes = match object.get("pooling_mode") {
        Some(serde_json::Value::String(name)) => {
            vec![PoolingMode::from_name(name).ok_or_else(|| unknown_mode(name))?]
        }
        Some(serde_json::Value::Array(names)) => names
            .iter()
            .map(|name| {
                let name = name.as_str().ok_or_else(|| {
                    PackageError::invalid(file, "pooling_mode", "must list mode names")
                })?;
                PoolingMode::from_name(name).ok_or_else(|| unknown_mode(name))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(PackageError::invalid(
                file,
                "pooling_mode",
                "must be a mode name or a list of them",
            ))
        }
        None => PoolingMode::LEGACY_ORDER
            .into_iter()
            .filter(|mode| object.get(mode.legacy_flag()).and_then(|v| v.as_bool()) == Some(true))
            .collect(),
    };
    if object.get("include_prompt").and_then(|v| v.as_bool()) == Some(false) {
        return Err(PackageError::invalid(
            file,
            "include_prompt",
            "false (pooling without the prompt's tokens) is not supported",
        ));
    }
    // sentence-transformers pools by mean when no mode is set.
    let modes = if modes.is_empty() { vec![PoolingMode::Mean] } else { modes };
    Ok(PoolingSpec { modes, dimension })
}

fn is_relative_inside(path: &str) -> bool {
    Path::new(path).components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BERT: &str = r#"{"architectures": ["BertModel"], "model_type": "bert",
        "max_position_embeddings": 512, "vocab_size": 100}"#;

    const MODULES: &str = r#"[
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
    ]"#;

    fn write(dir: &Path, file: &str, text: &str) {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn load(dir: &Path) -> Result<EmbeddingConfig, PackageError> {
        EmbeddingConfig::load(dir, &ModelConfig::parse(BERT).unwrap(), None, None)
    }

    #[test]
    fn reads_legacy_pooling_flags_and_normalize() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), MODULES_FILE, MODULES);
        write(
            tmp.path(),
            "1_Pooling/config.json",
            r#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": false,
                "pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": false}"#,
        );
        write(
            tmp.path(),
            SENTENCE_CONFIG_FILE,
            r#"{"max_seq_length": 256, "do_lower_case": false}"#,
        );
        let config = load(tmp.path()).unwrap();
        assert_eq!(config.pooling, [PoolingMode::Mean]);
        assert!(config.normalize);
        assert_eq!(config.max_seq_length, 256);
        assert_eq!(config.word_embedding_dimension, Some(384));
        assert_eq!(config.dimension(384), 384);
    }

    #[test]
    fn reads_the_newer_pooling_mode_and_concatenates_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), MODULES_FILE, &MODULES.replace(
            ",\n        {\"idx\": 2, \"name\": \"2\", \"path\": \"2_Normalize\", \"type\": \"sentence_transformers.models.Normalize\"}",
            "",
        ));
        write(
            tmp.path(),
            "1_Pooling/config.json",
            r#"{"embedding_dimension": 8, "pooling_mode": ["max", "cls"], "include_prompt": true}"#,
        );
        let config = load(tmp.path()).unwrap();
        assert_eq!(config.pooling, [PoolingMode::Max, PoolingMode::Cls]);
        assert!(!config.normalize);
        assert_eq!(config.max_seq_length, 512);
        assert_eq!(config.dimension(8), 16);
    }

    #[test]
    fn no_modules_file_means_mean_pooling() {
        let tmp = tempfile::tempdir().unwrap();
        let model = ModelConfig::parse(BERT).unwrap();
        let config = EmbeddingConfig::load(tmp.path(), &model, Some(128), None).unwrap();
        assert_eq!(
            (config.pooling.as_slice(), config.normalize),
            ([PoolingMode::Mean].as_slice(), false)
        );
        assert_eq!(config.max_seq_length, 128);
        let config = EmbeddingConfig::load(tmp.path(), &model, Some(128), Some(64)).unwrap();
        assert_eq!(config.max_seq_length, 64);
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let tmp = tempfile::tempdir().unwrap();
        let dense = MODULES.replace("models.Normalize", "models.Dense");
        write(tmp.path(), MODULES_FILE, &dense);
        write(tmp.path(), "1_Pooling/config.json", r#"{"pooling_mode": "mean"}"#);
        let err = load(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains("module `sentence_transformers.models.Dense` is not supported"),
            "{err}"
        );

        write(tmp.path(), MODULES_FILE, MODULES);
        write(tmp.path(), "1_Pooling/config.json", r#"{"pooling_mode": "median"}"#);
        let err = load(tmp.path()).unwrap_err().to_string();
        assert!(err.starts_with("1_Pooling/config.json: `pooling_mode` `median` is not"), "{err}");

        std::fs::remove_file(tmp.path().join("1_Pooling/config.json")).unwrap();
        let err = load(tmp.path()).unwrap_err().to_string();
        assert!(err.starts_with("1_Pooling/config.json is missing"), "{err}");

        write(tmp.path(), MODULES_FILE, &MODULES.replace("1_Pooling", "../elsewhere"));
        let err = load(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("must be a relative path inside the package"), "{err}");

        write(tmp.path(), MODULES_FILE, &MODULES.replace("models.Pooling", "models.Dropout"));
        let err = load(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("Normalize must come after the Pooling module"), "{err}");

        write(tmp.path(), MODULES_FILE, MODULES);
        write(tmp.path(), "1_Pooling/config.json", "{}");
        write(tmp.path(), SENTENCE_CONFIG_FILE, r#"{"max_seq_length": 4096}"#);
        let err = load(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("`max_seq_length` is 4096"), "{err}");
    }
}
