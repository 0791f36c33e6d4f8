//! `hearth.yaml`: the Hearth-specific settings that cannot live in `cog.yaml` without making Cog
//! reject the package. The file is optional; every setting has a default.

use std::path::Path;

use hearth_protocol::tools::ToolFormat;
use serde::{Deserialize, Serialize};

use crate::error::PackageError;

pub(crate) const SETTINGS_FILE: &str = "hearth.yaml";

/// A floating-point type for weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    Bf16,
}

impl DType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        }
    }

    /// The name `config.json`'s `torch_dtype` uses.
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::Bf16 => "bfloat16",
        }
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }
}

/// Block quantization of the linear layers' weights, applied when the model loads (hearth.yaml
/// `quantize`). Embeddings and norms stay in the compute dtype. GGUF packages are already
/// quantized and ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantize {
    /// 8-bit, blocks of 32 weights with one scale: close to the original (~1% error).
    #[serde(rename = "q8_0")]
    Q8_0,
    /// 4-bit, blocks of 32 with a scale (q4_0) or a scale and an offset (q4_1).
    #[serde(rename = "q4_0")]
    Q4_0,
    #[serde(rename = "q4_1")]
    Q4_1,
    /// 5-bit, blocks of 32 (q5_0: scale; q5_1: scale and offset).
    #[serde(rename = "q5_0")]
    Q5_0,
    #[serde(rename = "q5_1")]
    Q5_1,
    /// k-quants: super-blocks of 256 weights with 2 to 6 bits each; q4_k is a quarter of
    /// f16's memory. Layers whose inputs are not whole super-blocks take llama.cpp's fallback.
    #[serde(rename = "q2_k")]
    Q2K,
    #[serde(rename = "q3_k")]
    Q3K,
    #[serde(rename = "q4_k")]
    Q4K,
    #[serde(rename = "q5_k")]
    Q5K,
    #[serde(rename = "q6_k")]
    Q6K,
}

impl Quantize {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q5_0 => "q5_0",
            Self::Q5_1 => "q5_1",
            Self::Q2K => "q2_k",
            Self::Q3K => "q3_k",
            Self::Q4K => "q4_k",
            Self::Q5K => "q5_k",
            Self::Q6K => "q6_k",
        }
    }
}

/// How a package's predictions are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// Hearth's own engine (the model family must be one it knows).
    Native,
    /// The package's `predict.py`, in its own Python environment.
    Python,
}

/// The parsed `hearth.yaml`, or its defaults when the file is absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageSettings {
    /// Overrides the package name (otherwise cog.yaml `model`, then the directory name).
    pub name: Option<String>,
    /// Compute dtype; the engine picks one for the device when unset.
    pub dtype: Option<DType>,
    /// Longest sequence served; defaults to config.json's `max_position_embeddings`.
    pub context_length: Option<usize>,
    /// KV-cache budget in MiB; the engine sizes it from free memory when unset.
    pub kv_cache_mb: Option<usize>,
    /// Prices in currency units per million tokens, for the spend ledger.
    pub input_price_per_mtok: Option<f64>,
    pub output_price_per_mtok: Option<f64>,
    /// Quantize linear-layer weights on load (`q8_0` or `q4_k`); unset serves them as stored.
    pub quantize: Option<Quantize>,
    /// Serve this package when a request names no model.
    #[serde(default)]
    pub default: bool,
    /// `python` runs the package's Cog predictor even when Hearth knows its model family;
    /// unset, a package with no `config.json` or GGUF file but a predictor runs in Python.
    pub runtime: Option<Runtime>,
    /// How the model writes tool calls (`hermes`, `llama3_json`, `mistral`); unset, it is read
    /// off the chat template's markers.
    pub tool_parser: Option<ToolFormat>,
    /// Price of a second of prediction time, for the ledger (Python predictors).
    pub price_per_second: Option<f64>,
    /// Seconds a Python predictor's `setup()` may take before the package is marked failed.
    pub setup_timeout_s: Option<u64>,
    /// Seconds a Python prediction may take; then it is cancelled (and, if it will not stop,
    /// its worker is restarted).
    pub predict_timeout_s: Option<u64>,
    /// LoRA adapters (PEFT format) served over this model; a request picks one with the model
    /// id `PACKAGE:NAME`.
    #[serde(default)]
    pub adapters: Vec<AdapterEntry>,
    /// Memory the loaded adapters may take, in MiB (default 256); beyond it the least recently
    /// used is dropped, to be read again on its next request.
    pub adapter_cache_mb: Option<usize>,
}

/// One adapter of `hearth.yaml`'s `adapters:`: a directory in the package, or an `hf://`
/// repository fetched when the package loads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterEntry {
    /// What requests call it (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// Its directory (`adapter_config.json` + `adapter_model.safetensors`), inside the package.
    pub path: Option<String>,
    /// `hf://org/repo[@revision]`: a PEFT adapter repository on the hub, whose adapter files are
    /// fetched into [`HF_ADAPTERS_DIR`]`/<name>` in the package, beside `hf://` weights.
    pub source: Option<String>,
}

/// Where adapters with an `hf://` source are placed inside the package (a hidden directory,
/// so it never clashes with the package's own files).
pub const HF_ADAPTERS_DIR: &str = ".hearth-hf-adapters";

impl AdapterEntry {
    /// The adapter's directory in the package at `package_dir`.
    pub fn dir_in(&self, package_dir: &Path) -> std::path::PathBuf {
        match &self.path {
            Some(path) => package_dir.join(path),
            None => package_dir.join(HF_ADAPTERS_DIR).join(&self.name),
        }
    }
}

impl PackageSettings {
    /// Reads `hearth.yaml` in `dir`, or returns the defaults when there is none.
    pub fn load(dir: &Path) -> Result<Self, PackageError> {
        let path = dir.join(SETTINGS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(PackageError::io(&path, e)),
        }
    }

    pub fn parse(text: &str) -> Result<Self, PackageError> {
        // An empty file is a valid "all defaults" file, but YAML reads it as null.
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let settings: Self =
            serde_yaml_ng::from_str(text).map_err(|e| PackageError::parse(SETTINGS_FILE, e))?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), PackageError> {
        let invalid =
            |field: &str, message: &str| PackageError::invalid(SETTINGS_FILE, field, message);
        if self.context_length == Some(0) {
            return Err(invalid("context_length", "must be at least 1"));
        }
        if self.setup_timeout_s == Some(0) {
            return Err(invalid("setup_timeout_s", "must be at least 1"));
        }
        if self.predict_timeout_s == Some(0) {
            return Err(invalid("predict_timeout_s", "must be at least 1"));
        }
        if self.kv_cache_mb == Some(0) {
            return Err(invalid("kv_cache_mb", "must be at least 1"));
        }
        if self.adapter_cache_mb == Some(0) {
            return Err(invalid("adapter_cache_mb", "must be at least 1"));
        }
        self.validate_adapters()?;
        let prices = [
            ("input_price_per_mtok", self.input_price_per_mtok),
            ("output_price_per_mtok", self.output_price_per_mtok),
            ("price_per_second", self.price_per_second),
        ];
        for (field, price) in prices {
            if price.is_some_and(|p| !p.is_finite() || p < 0.0) {
                return Err(invalid(field, "must be a non-negative number"));
            }
        }
        Ok(())
    }

    fn validate_adapters(&self) -> Result<(), PackageError> {
        let invalid = |message: String| PackageError::invalid(SETTINGS_FILE, "adapters", &message);
        let mut seen = std::collections::HashSet::new();
        for adapter in &self.adapters {
            let name = &adapter.name;
            if !crate::is_valid_adapter_name(name) {
                return Err(invalid(format!(
                    "name `{name}` must be {}",
                    crate::ADAPTER_NAME_PATTERN
                )));
            }
            if !seen.insert(name) {
                return Err(invalid(format!("`{name}` is named twice")));
            }
            match (&adapter.path, &adapter.source) {
                (Some(path), None) => {
                    let escapes = Path::new(path)
                        .components()
                        .any(|c| !matches!(c, std::path::Component::Normal(_)));
                    if path.is_empty() || escapes {
                        return Err(invalid(format!(
                            "`{name}`: path `{path}` must be a relative path inside the package"
                        )));
                    }
                }
                (None, Some(source)) if source.starts_with("hf://") => {}
                (None, Some(source)) => {
                    return Err(invalid(format!(
                        "`{name}`: source `{source}` must be hf://org/repo[@revision]"
                    )))
                }
                _ => {
                    return Err(invalid(format!(
                        "`{name}` needs exactly one of `path` (a directory in the package) or \
                         `source` (hf://org/repo)"
                    )))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapters_need_plain_names_and_paths_inside_the_package() {
        let ok =
            "adapters:\n  - {name: support-v2, path: adapters/support}\nadapter_cache_mb: 64\n";
        let settings = PackageSettings::parse(ok).unwrap();
        assert_eq!(settings.adapters[0].name, "support-v2");
        assert_eq!(settings.adapter_cache_mb, Some(64));
        let refused = [
            ("adapters:\n  - {name: 'a:b', path: x}\n", "name `a:b`"),
            ("adapters:\n  - {name: '..', path: x}\n", "name `..`"),
            ("adapters:\n  - {name: a, path: x}\n  - {name: a, path: y}\n", "named twice"),
            ("adapters:\n  - {name: a, path: ../elsewhere}\n", "inside the package"),
            ("adapters:\n  - {name: a, path: /abs}\n", "inside the package"),
            ("adapters:\n  - {name: a}\n", "exactly one of `path`"),
            ("adapters:\n  - {name: a, path: x, source: 'hf://o/r'}\n", "exactly one of `path`"),
            ("adapters:\n  - {name: a, source: 's3://o/r'}\n", "hf://org/repo"),
        ];
        for (text, why) in refused {
            let err = PackageSettings::parse(text).unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn parses_all_fields() {
        let text = "name: my-model\ndtype: bf16\ncontext_length: 4096\nkv_cache_mb: 512\n\
                    input_price_per_mtok: 0.1\noutput_price_per_mtok: 0.4\ndefault: true\n";
        let settings = PackageSettings::parse(text).unwrap();
        assert_eq!(settings.dtype, Some(DType::Bf16));
        assert_eq!(settings.context_length, Some(4096));
        assert!(settings.default);
    }

    #[test]
    fn tool_parser_names_a_format() {
        let settings = PackageSettings::parse("tool_parser: mistral\n").unwrap();
        assert_eq!(settings.tool_parser, Some(ToolFormat::Mistral));
        let wrong = PackageSettings::parse("tool_parser: xml\n").unwrap_err().to_string();
        assert!(wrong.contains("unknown variant `xml`"), "{wrong}");
    }

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(PackageSettings::parse("\n").unwrap(), PackageSettings::default());
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        let unknown = PackageSettings::parse("dtyp: f32\n").unwrap_err().to_string();
        assert!(unknown.starts_with("hearth.yaml: unknown field `dtyp`"), "{unknown}");
        let dtype = PackageSettings::parse("dtype: f64\n").unwrap_err().to_string();
        assert!(dtype.contains("unknown variant `f64`"), "{dtype}");
        let zero = PackageSettings::parse("context_length: 0\n").unwrap_err().to_string();
        assert_eq!(zero, "hearth.yaml: `context_length` must be at least 1");
        assert!(PackageSettings::parse("input_price_per_mtok: -1\n").is_err());
    }

    #[test]
    fn quantize_names_a_known_scheme() {
        let q8 = PackageSettings::parse("quantize: q8_0\n").unwrap();
        assert_eq!(q8.quantize, Some(Quantize::Q8_0));
        assert_eq!(
            PackageSettings::parse("quantize: q4_k\n").unwrap().quantize,
            Some(Quantize::Q4K)
        );
        let q6 = PackageSettings::parse("quantize: q6_k\n").unwrap().quantize;
        assert_eq!(q6.map(Quantize::as_str), Some("q6_k"));
        let bad = PackageSettings::parse("quantize: q3\n").unwrap_err().to_string();
        assert!(bad.contains("unknown variant `q3`") && bad.contains("q8_0"), "{bad}");
    }
}
