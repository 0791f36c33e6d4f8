//! `cog.yaml`, read with the same strictness as Cog's own schema (`config_schema_v1.0.json`):
//! unknown keys are refused, so a file Hearth accepts is one Cog accepts too.

use std::path::Path;

use serde::{Deserialize, Deserializer};

use crate::error::PackageError;

pub(crate) const COG_FILE: &str = "cog.yaml";

/// The parsed `cog.yaml`. Hearth reads the predictor, `build.gpu`, `concurrency`, `environment`
/// and `weights`; the other keys are kept so that nothing Cog accepts is lost.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CogConfig {
    #[serde(default, deserialize_with = "null_as_default")]
    pub build: BuildConfig,
    /// The predictor, `file.py:Class`.
    pub run: Option<String>,
    /// Older spelling of `run`; a file may use one or the other.
    pub predict: Option<String>,
    pub train: Option<String>,
    pub image: Option<String>,
    pub model: Option<String>,
    pub concurrency: Option<ConcurrencyConfig>,
    /// Runtime environment, `NAME=value` each.
    #[serde(default, deserialize_with = "null_as_default")]
    pub environment: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub weights: Vec<WeightsEntry>,
    /// `cog test` cases; free-form objects in Cog's schema.
    #[serde(default, deserialize_with = "null_as_default")]
    pub tests: Vec<serde_yaml_ng::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildConfig {
    #[serde(default)]
    pub gpu: bool,
    pub cuda: Option<String>,
    pub cudnn: Option<String>,
    /// Cog accepts a string or a number here; kept as written.
    #[serde(default, deserialize_with = "string_or_number")]
    pub python_version: Option<String>,
    pub python_requirements: Option<String>,
    pub python_overrides: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub python_packages: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub system_packages: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub pre_install: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub run: Vec<BuildStep>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub environment: Vec<String>,
    #[serde(default)]
    pub fast: bool,
    pub sdk_version: Option<String>,
}

/// One `build.run` entry: a shell command, or a command with secret mounts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum BuildStep {
    Command(String),
    WithMounts(BuildCommand),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildCommand {
    pub command: String,
    #[serde(default)]
    pub mounts: Vec<BuildMount>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildMount {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyConfig {
    /// Parsed signed so that `0` and `-1` get a clear message rather than a type error.
    pub max: i64,
    pub default_target: Option<i64>,
}

/// A managed-weights entry: files Cog fetches from `source.uri` into `target`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsEntry {
    pub name: String,
    pub target: String,
    pub source: WeightsSource,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsSource {
    pub uri: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub include: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub exclude: Vec<String>,
}

const WEIGHT_URI_SCHEMES: [&str; 3] = ["file://", "hf://", "https://"];

/// Variables a package may not set: the runtime owns them, and overriding them would break the
/// container (Cog keeps a similar deny-list).
const RESERVED_ENV: [&str; 5] =
    ["PATH", "LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONPATH", "VIRTUAL_ENV"];
const RESERVED_ENV_PREFIXES: [&str; 4] = ["CUDA_", "NVIDIA_", "COG_", "R8_"];

impl CogConfig {
    /// Reads and validates `cog.yaml` in `dir`.
    pub fn load(dir: &Path) -> Result<Self, PackageError> {
        let path = dir.join(COG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| PackageError::io(&path, e))?;
        Self::parse(&text)
    }

    /// Parses and validates the text of a `cog.yaml`.
    pub fn parse(text: &str) -> Result<Self, PackageError> {
        let config: CogConfig =
            serde_yaml_ng::from_str(text).map_err(|e| PackageError::parse(COG_FILE, e))?;
        config.validate()?;
        Ok(config)
    }

    /// The predictor reference (`run`, or its older name `predict`).
    pub fn predictor(&self) -> Option<&str> {
        self.run.as_deref().or(self.predict.as_deref())
    }

    /// `concurrency.max`, validated to be at least 1.
    pub fn max_concurrency(&self) -> Option<usize> {
        self.concurrency.as_ref().and_then(|c| usize::try_from(c.max).ok())
    }

    /// The runtime environment as (name, value) pairs, in file order.
    pub fn environment_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.environment.iter().filter_map(|entry| entry.split_once('='))
    }

    fn validate(&self) -> Result<(), PackageError> {
        if self.run.is_some() && self.predict.is_some() {
            return Err(invalid("predict", "cannot be set together with `run` (its newer name)"));
        }
        if let Some(concurrency) = &self.concurrency {
            validate_concurrency(concurrency)?;
        }
        validate_environment("environment", &self.environment)?;
        validate_environment("build.environment", &self.build.environment)?;
        for (i, entry) in self.weights.iter().enumerate() {
            validate_weights_entry(i, entry)?;
        }
        Ok(())
    }
}

fn invalid(field: &str, message: impl Into<String>) -> PackageError {
    PackageError::invalid(COG_FILE, field, message)
}

fn validate_concurrency(concurrency: &ConcurrencyConfig) -> Result<(), PackageError> {
    if concurrency.max < 1 {
        return Err(invalid(
            "concurrency.max",
            format!("must be at least 1, got {}", concurrency.max),
        ));
    }
    match concurrency.default_target {
        Some(target) if target < 1 || target > concurrency.max => Err(invalid(
            "concurrency.default_target",
            format!("must be between 1 and concurrency.max ({}), got {target}", concurrency.max),
        )),
        _ => Ok(()),
    }
}

fn validate_environment(field: &str, entries: &[String]) -> Result<(), PackageError> {
    for entry in entries {
        let Some((name, _)) = entry.split_once('=') else {
            return Err(invalid(field, format!("entry `{entry}` is not NAME=value")));
        };
        if !is_env_name(name) {
            return Err(invalid(field, format!("`{name}` is not a valid variable name")));
        }
        let reserved = RESERVED_ENV.contains(&name)
            || RESERVED_ENV_PREFIXES.iter().any(|prefix| name.starts_with(prefix));
        if reserved {
            return Err(invalid(field, format!("`{name}` is reserved for the runtime")));
        }
    }
    Ok(())
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn validate_weights_entry(index: usize, entry: &WeightsEntry) -> Result<(), PackageError> {
    let field = format!("weights[{index}]");
    if entry.name.is_empty() {
        return Err(invalid(&format!("{field}.name"), "must not be empty"));
    }
    if entry.target.is_empty() {
        return Err(invalid(&format!("{field}.target"), "must not be empty"));
    }
    if !WEIGHT_URI_SCHEMES.iter().any(|scheme| entry.source.uri.starts_with(scheme)) {
        return Err(invalid(
            &format!("{field}.source.uri"),
            format!(
                "`{}` must start with one of {}",
                entry.source.uri,
                WEIGHT_URI_SCHEMES.join(", ")
            ),
        ));
    }
    Ok(())
}

/// Cog's schema allows `null` wherever it allows a list; treat it as empty.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

fn string_or_number<'de, D>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Version {
        Text(String),
        Number(f64),
    }
    Ok(Option::<Version>::deserialize(deserializer)?.map(|v| match v {
        Version::Text(text) => text,
        Version::Number(number) => number.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
build:
  gpu: true
  python_version: "3.11"
  run:
    - echo hello
    - command: pip install x
      mounts:
        - type: secret
          id: token
          target: /run/token
predict: "predict.py:Predictor"
concurrency:
  max: 16
environment:
  - HF_HUB_OFFLINE=1
weights:
  - name: base
    target: /src/weights
    source:
      uri: hf://org/model
      include: ["*.safetensors"]
"#;

    fn error_of(text: &str) -> String {
        match CogConfig::parse(text) {
            Ok(config) => panic!("expected an error, parsed {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_a_valid_file() {
        let config = CogConfig::parse(VALID).unwrap();
        assert!(config.build.gpu);
        assert_eq!(config.build.python_version.as_deref(), Some("3.11"));
        assert_eq!(config.build.run.len(), 2);
        assert_eq!(config.predictor(), Some("predict.py:Predictor"));
        assert_eq!(config.max_concurrency(), Some(16));
        assert_eq!(config.environment_pairs().collect::<Vec<_>>(), [("HF_HUB_OFFLINE", "1")]);
        assert_eq!(config.weights[0].source.include, ["*.safetensors"]);
    }

    #[test]
    fn empty_and_null_sections_are_accepted() {
        let config = CogConfig::parse("build:\nenvironment:\nrun: p.py:P\n").unwrap();
        assert_eq!(config.predictor(), Some("p.py:P"));
        assert!(config.environment.is_empty());
        assert!(!config.build.gpu);
    }

    #[test]
    fn numeric_python_version_is_kept() {
        let config = CogConfig::parse("build:\n  python_version: 3.12\n").unwrap();
        assert_eq!(config.build.python_version.as_deref(), Some("3.12"));
    }

    #[test]
    fn unknown_top_level_key_is_refused() {
        let message = error_of("build:\n  gpu: true\ndtype: bf16\n");
        assert!(
            message.starts_with("cog.yaml: unknown field `dtype`, expected one of"),
            "{message}"
        );
    }

    #[test]
    fn unknown_build_key_is_refused() {
        assert!(error_of("build:\n  gpus: 2\n").contains("unknown field `gpus`"));
    }

    #[test]
    fn malformed_yaml_is_refused() {
        let message = error_of("build: [unclosed\n");
        assert!(message.starts_with("cog.yaml: "), "{message}");
    }

    #[test]
    fn run_and_predict_together_are_refused() {
        let message = error_of("run: a.py:A\npredict: b.py:B\n");
        assert!(message.contains("`predict` cannot be set together with `run`"), "{message}");
    }

    #[test]
    fn concurrency_below_one_is_refused() {
        let message = error_of("concurrency:\n  max: 0\n");
        assert_eq!(message, "cog.yaml: `concurrency.max` must be at least 1, got 0");
        assert!(
            error_of("concurrency:\n  max: 4\n  default_target: 9\n").contains("default_target")
        );
        assert!(error_of("concurrency: {}\n").contains("missing field `max`"));
    }

    #[test]
    fn environment_entries_must_be_name_value() {
        assert!(error_of("environment:\n  - JUSTANAME\n").contains("is not NAME=value"));
        assert!(error_of("environment:\n  - 1X=2\n").contains("not a valid variable name"));
        assert!(error_of("environment:\n  - CUDA_HOME=/x\n").contains("reserved"));
        assert!(error_of("build:\n  environment:\n    - PATH=/x\n").contains("build.environment"));
        let config = CogConfig::parse("environment:\n  - EMPTY=\n").unwrap();
        assert_eq!(config.environment_pairs().next(), Some(("EMPTY", "")));
    }

    #[test]
    fn weights_entries_are_checked() {
        let bad_uri = "weights:\n  - name: w\n    target: /w\n    source:\n      uri: s3://b/k\n";
        assert!(error_of(bad_uri).contains("weights[0].source.uri"));
        let missing_target = "weights:\n  - name: w\n    source:\n      uri: hf://a/b\n";
        assert!(error_of(missing_target).contains("missing field `target`"));
        let extra = "weights:\n  - name: w\n    target: /w\n    size: 3\n    source:\n      uri: hf://a/b\n";
        assert!(error_of(extra).contains("unknown field `size`"));
    }
}
