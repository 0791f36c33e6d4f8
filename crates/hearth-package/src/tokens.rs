//! `tokenizer.json`, `tokenizer_config.json` and `generation_config.json`: the tokenizer, its
//! special tokens and the chat template source.

use std::path::Path;

use serde::Deserialize;
use tokenizers::Tokenizer;

use crate::error::PackageError;
use crate::model_config::{token_ids, ModelConfig, CONFIG_FILE};

pub(crate) const TOKENIZER_FILE: &str = "tokenizer.json";
pub(crate) const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub(crate) const GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// The token ids that start and end a sequence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos_token_id: Option<u32>,
    /// Generation stops at any of these: the union of config.json's and generation_config.json's
    /// `eos_token_id` and tokenizer_config.json's `eos_token`, in that order.
    pub eos_token_ids: Vec<u32>,
    /// Whether raw (untemplated) prompts should start with the BOS token, per
    /// tokenizer_config.json. Rendered chat templates carry their own BOS text.
    pub add_bos_token: bool,
}

/// The parts of `tokenizer_config.json` Hearth uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct TokenizerConfig {
    chat_template: Option<TemplateField>,
    bos_token: Option<TokenField>,
    eos_token: Option<TokenField>,
    add_bos_token: Option<bool>,
    /// Written as a float by some tools (`1e30` for "no limit").
    model_max_length: Option<f64>,
}

/// A template is one string, or a list of named templates of which `default` is the chat one.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TemplateField {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Debug, Clone, Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

/// Special tokens are written as plain strings or as `AddedToken` objects.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TokenField {
    Text(String),
    Added { content: String },
}

impl TokenField {
    fn text(&self) -> &str {
        match self {
            Self::Text(text) | Self::Added { content: text } => text,
        }
    }
}

impl TokenizerConfig {
    /// Reads `tokenizer_config.json`; a package without one gets no template or token strings.
    pub(crate) fn parse(text: &str) -> Result<Self, PackageError> {
        serde_json::from_str(text).map_err(|e| PackageError::parse(TOKENIZER_CONFIG_FILE, e))
    }

    pub(crate) fn chat_template(&self) -> Option<&str> {
        match self.chat_template.as_ref()? {
            TemplateField::One(source) => Some(source),
            TemplateField::Named(list) => {
                list.iter().find(|t| t.name == "default").map(|t| t.template.as_str())
            }
        }
    }

    /// The template transformers uses for requests with tools, when the package names one.
    pub(crate) fn tool_use_template(&self) -> Option<&str> {
        match self.chat_template.as_ref()? {
            TemplateField::One(_) => None,
            TemplateField::Named(list) => {
                list.iter().find(|t| t.name == "tool_use").map(|t| t.template.as_str())
            }
        }
    }

    pub(crate) fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_ref().map(TokenField::text)
    }

    pub(crate) fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_ref().map(TokenField::text)
    }

    /// `model_max_length`, when it is a real limit rather than the "unlimited" sentinel.
    pub(crate) fn model_max_length(&self) -> Option<usize> {
        self.model_max_length.filter(|n| *n >= 1.0 && *n < 1e9).map(|n| n as usize)
    }
}

/// The text of `tokenizer.json`, which every package needs (or a .gguf to derive it from).
pub(crate) fn read_tokenizer(dir: &Path) -> Result<String, PackageError> {
    crate::read_required(
        &dir.join(TOKENIZER_FILE),
        TOKENIZER_FILE,
        "every package needs a Hugging Face tokenizer (or a .gguf to derive it from)",
    )
}

pub(crate) fn parse_tokenizer(text: &str) -> Result<Tokenizer, PackageError> {
    text.parse::<Tokenizer>().map_err(|e| PackageError::Tokenizer { message: e.to_string() })
}

impl SpecialTokens {
    /// Collects the special tokens from every file that names them, checking each id against the
    /// tokenizer so that generation cannot wait for a token that can never be produced.
    pub(crate) fn resolve(
        dir: &Path,
        model: &ModelConfig,
        tokenizer: &Tokenizer,
        config: &TokenizerConfig,
    ) -> Result<Self, PackageError> {
        let generation = read_generation_config(dir)?;
        // Looked up even when config.json has an id: a template that writes an unknown BOS
        // string would tokenize it as plain text.
        let bos_from_tokenizer = lookup(tokenizer, config.bos_token())?;
        let bos_token_id = model.token_ids("bos_token_id").first().copied().or(bos_from_tokenizer);
        let mut eos_token_ids = model.token_ids("eos_token_id");
        eos_token_ids.extend(token_ids(generation.as_ref().and_then(|g| g.get("eos_token_id"))));
        eos_token_ids.extend(lookup(tokenizer, config.eos_token())?);
        let mut seen = std::collections::HashSet::new();
        eos_token_ids.retain(|id| seen.insert(*id));
        for id in bos_token_id.iter().chain(&eos_token_ids) {
            if tokenizer.id_to_token(*id).is_none() {
                return Err(PackageError::UnknownToken {
                    file: CONFIG_FILE.to_string(),
                    token: format!("id {id}"),
                });
            }
        }
        Ok(Self {
            bos_token_id,
            eos_token_ids,
            add_bos_token: config.add_bos_token.unwrap_or(false),
        })
    }
}

fn lookup(tokenizer: &Tokenizer, token: Option<&str>) -> Result<Option<u32>, PackageError> {
    let Some(token) = token else { return Ok(None) };
    match tokenizer.token_to_id(token) {
        Some(id) => Ok(Some(id)),
        None => Err(PackageError::UnknownToken {
            file: TOKENIZER_CONFIG_FILE.to_string(),
            token: format!("`{token}`"),
        }),
    }
}

fn read_generation_config(dir: &Path) -> Result<Option<serde_json::Value>, PackageError> {
    read_optional(dir, GENERATION_CONFIG_FILE)?
        .map(|text| {
            serde_json::from_str(&text).map_err(|e| PackageError::parse(GENERATION_CONFIG_FILE, e))
        })
        .transpose()
}

/// The text of `dir/file`, or `None` when the file is absent (any other I/O error is one).
pub(crate) fn read_optional(dir: &Path, file: &str) -> Result<Option<String>, PackageError> {
    let path = dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PackageError::io(&path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_fields_take_both_forms() {
        let config: TokenizerConfig = serde_json::from_str(
            r#"{"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>",
                "chat_template": [{"name": "tool_use", "template": "T"},
                                  {"name": "default", "template": "D"}]}"#,
        )
        .unwrap();
        assert_eq!(config.bos_token(), Some("<s>"));
        assert_eq!(config.eos_token(), Some("</s>"));
        assert_eq!(config.chat_template(), Some("D"));
        assert_eq!(config.tool_use_template(), Some("T"));
    }

    #[test]
    fn null_tokens_are_absent() {
        let config: TokenizerConfig =
            serde_json::from_str(r#"{"bos_token": null, "add_bos_token": true}"#).unwrap();
        assert_eq!(config.bos_token(), None);
        assert_eq!(config.add_bos_token, Some(true));
    }
}
