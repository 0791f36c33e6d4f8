//! Model families. One family is one file; each runs packed batches against the engine-owned
//! paged KV cache in [`crate::generation::kv_cache`]; encoders ([`bert`]) run padded batches for
//! the embedder. Their layers run on [`crate::kernels`], their weights come from
//! [`crate::loading`].

pub mod activation;
pub mod bert;
pub mod llama;
