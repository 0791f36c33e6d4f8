//! Model families. One family is one file; each runs packed batches against the engine-owned
//! paged KV cache in [`crate::kv_cache`]; encoders ([`bert`]) run padded batches for the
//! embedder. [`linear`] is the generative models' linear layer (dense or quantized) and
//! [`quantized`] where their weights come from (safetensors, quantized on load or not, or GGUF).
//! [`split_matmul`] spreads decode's few-row products over the CPU cores, [`q8_matmul`] runs
//! q8_0 products (decode and prefill) with AVX-512 VNNI, and
//! [`decode_attention`] attends all of a step's decode rows at once from the paged cache.

pub mod bert;
pub mod decode_attention;
pub mod linear;
pub mod llama;
pub mod q8_matmul;
pub mod quantized;
pub mod split_matmul;
