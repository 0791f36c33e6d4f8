//! Embedding models: the [`Embedder`] thread, which batches requests dynamically and runs an
//! encoder from [`crate::models`].

mod embedder;

pub use embedder::{EmbedInput, EmbedTicket, Embedder, EmbedderConfig, EmbedderInfo, Embeddings};
