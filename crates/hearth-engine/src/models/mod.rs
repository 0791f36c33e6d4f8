//! Model families. One family is one file; each runs packed batches against the engine-owned
//! paged KV cache in [`crate::kv_cache`].

pub mod llama;
