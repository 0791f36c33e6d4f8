//! The feed-forward activations the families use, named as `transformers`' `ACT2FN` names them.

use candle_core::{Result, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu` / `swish`: Llama, Mistral, Qwen.
    Silu,
    /// `gelu`: the exact, erf-based GELU (BERT).
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh` / `gelu_fast`: the tanh approximation (Gemma, some
    /// encoders).
    GeluTanh,
    Relu,
}

impl Activation {
    /// The activation `name` stands for, or a message naming the ones that exist.
    pub fn parse(name: &str) -> std::result::Result<Self, String> {
        match name {
            "silu" | "swish" => Ok(Self::Silu),
            "gelu" => Ok(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Self::GeluTanh),
            "relu" => Ok(Self::Relu),
            other => Err(format!(
                "`{other}` is not supported (silu, gelu, gelu_new, gelu_pytorch_tanh, relu)"
            )),
        }
    }

    pub fn apply(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Silu => xs.silu(),
            Self::Gelu => xs.gelu_erf(),
            Self::GeluTanh => xs.gelu(),
            Self::Relu => xs.relu(),
        }
    }
}
