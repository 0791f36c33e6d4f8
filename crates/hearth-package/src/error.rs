use std::fmt;
use std::path::PathBuf;

/// Everything that can be wrong with a package. Each message names the file at fault (relative to
/// the package directory) so that an operator can fix it without reading Hearth's source.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),

    #[error("{file} is missing: {why}")]
    MissingFile { file: String, why: &'static str },

    /// The file is not well-formed YAML/JSON, or does not fit the expected shape.
    #[error("{file}: {message}")]
    Parse { file: String, message: String },

    /// The file parses but a value in it is not acceptable.
    #[error("{file}: `{field}` {message}")]
    Invalid { file: String, field: String, message: String },

    #[error(
        "package name `{name}` (from {origin}) must be {pattern}; set `name` in hearth.yaml to \
         choose another",
        pattern = crate::NAME_PATTERN
    )]
    InvalidName { name: String, origin: String },

    #[error("config.json: unsupported architecture `{architecture}` (supported: {})", supported.join(", "))]
    UnsupportedArchitecture { architecture: String, supported: Vec<&'static str> },

    #[error("{file} is truncated: header says {expected} bytes of data, file has {actual}")]
    Truncated { file: String, expected: u64, actual: u64 },

    #[error("{file}: corrupt safetensors file: {message}")]
    CorruptSafetensors { file: String, message: String },

    #[error("{file}: corrupt GGUF file: {message}")]
    CorruptGguf { file: String, message: String },

    #[error("model.safetensors.index.json: {message}")]
    ShardIndex { message: String },

    #[error("weights do not match the model: {}", TensorProblems(problems))]
    TensorMismatch { problems: Vec<TensorProblem> },

    #[error("tokenizer.json does not parse: {message}")]
    Tokenizer { message: String },

    #[error("tokenizer_config.json: chat_template does not compile: {message}")]
    TemplateCompile { message: String },

    #[error("chat template failed to render: {message}")]
    TemplateRender { message: String },

    #[error("{file}: special token {token} is not in tokenizer.json's vocabulary")]
    UnknownToken { file: String, token: String },

    #[error("invalid synthetic package spec: {0}")]
    InvalidSpec(String),
}

impl PackageError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    pub(crate) fn parse(file: &str, message: impl fmt::Display) -> Self {
        Self::Parse { file: file.to_string(), message: message.to_string() }
    }

    pub(crate) fn invalid(file: &str, field: &str, message: impl Into<String>) -> Self {
        Self::Invalid { file: file.to_string(), field: field.to_string(), message: message.into() }
    }
}

/// One way in which a checkpoint differs from what the model expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TensorProblem {
    Missing { name: String },
    Unexpected { name: String },
    Shape { name: String, actual: Vec<usize>, expected: Vec<usize> },
}

impl fmt::Display for TensorProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { name } => write!(f, "missing tensor `{name}`"),
            Self::Unexpected { name } => write!(f, "unexpected tensor `{name}`"),
            Self::Shape { name, actual, expected } => {
                write!(f, "tensor `{name}` has shape {actual:?}, expected {expected:?}")
            }
        }
    }
}

/// How many problems a mismatch error spells out; a wrong architecture can produce hundreds and
/// the first few are enough to see the pattern.
const PROBLEMS_SHOWN: usize = 5;

struct TensorProblems<'a>(&'a [TensorProblem]);

impl fmt::Display for TensorProblems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().take(PROBLEMS_SHOWN).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        if self.0.len() > PROBLEMS_SHOWN {
            write!(f, "; and {} more", self.0.len() - PROBLEMS_SHOWN)?;
        }
        Ok(())
    }
}
