//! Hearth end-to-end tests and benchmarks live in `tests/` and `benches/`; this crate has no code of its own.
