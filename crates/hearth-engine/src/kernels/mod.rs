//! The CPU products the models run on. [`linear`] is the generative models' linear layer (dense
//! or quantized, chosen once at load); [`split_matmul`] spreads decode's few-row products over
//! the CPU cores, [`q8_matmul`] runs q8_0 products (decode and prefill) with AVX-512 VNNI,
//! [`nibble_matmul`] q4_0, q4_1, q5_0 and q5_1 at 4 and 5 bits with AVX-512 VNNI, [`int8_matmul`] every other ggml block type (and q8_0 without VNNI) with AVX-512 VNNI or
//! AVX2 (the first two with AMX tile products for prefill's many rows where the CPU has
//! them, `amx`), [`softmax`] the attention softmax with a vectorized exp, and [`decode_attention`] attends all of a step's decode rows at once from the paged cache. Each
//! chooses its path at run time from what the CPU has.

mod activations;
mod amx;
pub mod decode_attention;
mod ggml_groups;
pub mod int8_matmul;
pub mod linear;
pub mod lora_delta;
pub mod nibble_matmul;
pub mod q8_matmul;
pub mod softmax;
pub mod split_matmul;
