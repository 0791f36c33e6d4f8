//! The inputs a Hearth language model takes over the Cog API: one table that drives both input
//! validation (`input.rs`) and the OpenAPI schema (`schema.rs`).
//!
//! The names and defaults follow the language models Replicate hosts (Llama 3 and kin), so Cog
//! clients written for those work unchanged: `temperature` 0.7, `top_p` 0.95, `top_k` 50,
//! `max_tokens` 512, penalties 0, and `stop_sequences` as one comma-separated string.

/// A JSON type an input takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    String,
    Integer,
    Number,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::Integer => "integer",
            Kind::Number => "number",
        }
    }
}

/// A default value; `Null` means "unset" for a nullable input.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DefaultValue {
    Required,
    Null,
    Str(&'static str),
    Int(i64),
    Num(f64),
}

/// An upper bound: fixed, or the model's context length (known only per model).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Maximum {
    None,
    Fixed(f64),
    ContextLength,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Field {
    pub name: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    pub kind: Kind,
    pub default: DefaultValue,
    pub minimum: Option<f64>,
    /// The minimum itself is not allowed (`top_p` must be above 0).
    pub exclusive_minimum: bool,
    pub maximum: Maximum,
}

const fn field(
    name: &'static str,
    title: &'static str,
    kind: Kind,
    default: DefaultValue,
) -> Field {
    Field {
        name,
        title,
        description: "",
        kind,
        default,
        minimum: None,
        exclusive_minimum: false,
        maximum: Maximum::None,
    }
}

/// Every input, in `x-order`.
pub(crate) const FIELDS: &[Field] = &[
    Field {
        description:
            "Prompt to send to the model. When the model has a chat template, it is sent as \
                      the user's message and formatted by the template; otherwise it is used as is.",
        ..field("prompt", "Prompt", Kind::String, DefaultValue::Required)
    },
    Field {
        description:
            "System prompt, sent as the system message through the model's chat template. \
                      Empty means none. Without a chat template it is put before the prompt.",
        ..field("system_prompt", "System Prompt", Kind::String, DefaultValue::Str(""))
    },
    Field {
        description: "Maximum number of tokens to generate.",
        minimum: Some(1.0),
        maximum: Maximum::ContextLength,
        ..field("max_tokens", "Max Tokens", Kind::Integer, DefaultValue::Int(512))
    },
    Field {
        description: "Minimum number of tokens to generate. Hearth supports only 0.",
        minimum: Some(0.0),
        maximum: Maximum::Fixed(0.0),
        ..field("min_tokens", "Min Tokens", Kind::Integer, DefaultValue::Int(0))
    },
    Field {
        description: "Randomness of the output; 0 always picks the most likely token.",
        minimum: Some(0.0),
        maximum: Maximum::Fixed(5.0),
        ..field("temperature", "Temperature", Kind::Number, DefaultValue::Num(0.7))
    },
    Field {
        description: "Sample only from the most likely tokens whose probabilities add up to this.",
        minimum: Some(0.0),
        exclusive_minimum: true,
        maximum: Maximum::Fixed(1.0),
        ..field("top_p", "Top P", Kind::Number, DefaultValue::Num(0.95))
    },
    Field {
        description: "Sample only from this many most likely tokens; 0 means no limit.",
        minimum: Some(0.0),
        ..field("top_k", "Top K", Kind::Integer, DefaultValue::Int(50))
    },
    Field {
        description: "A comma-separated list of sequences that stop generation, for example \
                      '<end>,<stop>'. The matched sequence is not returned.",
        ..field("stop_sequences", "Stop Sequences", Kind::String, DefaultValue::Str(""))
    },
    Field {
        description: "Random seed. Leave blank to randomize.",
        minimum: Some(0.0),
        ..field("seed", "Seed", Kind::Integer, DefaultValue::Null)
    },
    Field {
        description: "Penalizes tokens that have already appeared in the output.",
        minimum: Some(-2.0),
        maximum: Maximum::Fixed(2.0),
        ..field("presence_penalty", "Presence Penalty", Kind::Number, DefaultValue::Num(0.0))
    },
    Field {
        description: "Penalizes tokens by how often they have appeared in the output.",
        minimum: Some(-2.0),
        maximum: Maximum::Fixed(2.0),
        ..field("frequency_penalty", "Frequency Penalty", Kind::Number, DefaultValue::Num(0.0))
    },
];

pub(crate) fn find(name: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.name == name)
}

impl Maximum {
    pub(crate) fn resolve(self, context_length: usize) -> Option<f64> {
        match self {
            Maximum::None => None,
            Maximum::Fixed(v) => Some(v),
            Maximum::ContextLength => Some(context_length as f64),
        }
    }
}
