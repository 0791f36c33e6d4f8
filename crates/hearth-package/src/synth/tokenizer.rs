//! A byte-level BPE tokenizer of an exact size: special tokens, the 256 byte tokens, merges that
//! the `tokenizers` trainer learns from a small built-in English text, then filler tokens up to
//! the requested size. Every id decodes to text, and the same size always gives the same file.

use std::collections::HashSet;

use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use super::SPECIAL_TOKENS;
use crate::error::PackageError;

/// Training text for the merges. Original prose, embedded so that building a tokenizer needs no
/// files and no network.
const CORPUS: &str = include_str!("corpus.txt");

/// A pair must occur this often in the corpus to become a merge; keeps one-off pairs out.
const MIN_PAIR_FREQUENCY: u64 = 2;

/// Builds the tokenizer and returns its `tokenizer.json` text.
pub(crate) fn build(vocab_size: usize) -> Result<String, PackageError> {
    let trained = train(vocab_size)?;
    let padded = pad_vocab(&trained, vocab_size)?;
    let tokenizer: Tokenizer = padded.parse().map_err(tokenizer_error)?;
    let actual = tokenizer.get_vocab_size(true);
    if actual != vocab_size {
        return Err(PackageError::InvalidSpec(format!(
            "tokenizer has {actual} tokens, expected {vocab_size}"
        )));
    }
    tokenizer.to_string(true).map(|text| text + "\n").map_err(tokenizer_error)
}

fn tokenizer_error(e: impl std::fmt::Display) -> PackageError {
    PackageError::InvalidSpec(format!("building the tokenizer: {e}"))
}

/// A fresh byte-level pipeline: no normalizer, ByteLevel pre-tokenizer and decoder.
fn empty_tokenizer(model: BPE) -> Tokenizer {
    let mut tokenizer = Tokenizer::new(model);
    let byte_level = ByteLevel::default().add_prefix_space(false);
    tokenizer.with_pre_tokenizer(Some(byte_level));
    tokenizer.with_post_processor(Some(byte_level.trim_offsets(false)));
    tokenizer.with_decoder(Some(byte_level));
    tokenizer
}

fn special_tokens() -> Vec<AddedToken> {
    SPECIAL_TOKENS.iter().map(|token| AddedToken::from(*token, true)).collect()
}

/// Learns up to `vocab_size` tokens from the corpus. The trainer puts the special tokens first
/// (ids 0..3), then the sorted byte alphabet, then merges in order of frequency with ties broken
/// by token id, which makes the result independent of hash-map order.
fn train(vocab_size: usize) -> Result<Tokenizer, PackageError> {
    let mut tokenizer = empty_tokenizer(BPE::default());
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let mut trainer: TrainerWrapper = BpeTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(MIN_PAIR_FREQUENCY)
        .show_progress(false)
        .special_tokens(special_tokens())
        .initial_alphabet(alphabet)
        .build()
        .into();
    tokenizer.train(&mut trainer, CORPUS.lines()).map_err(tokenizer_error)?;
    tokenizer.add_special_tokens(&special_tokens());
    Ok(tokenizer)
}

/// Appends `<|reserved_N|>` tokens until the vocabulary has `vocab_size` entries. They are plain
/// vocabulary entries (not special), so decoding one gives its text back; encoding never
/// produces them because no merge leads to them.
fn pad_vocab(trained: &Tokenizer, vocab_size: usize) -> Result<String, PackageError> {
    let mut json: serde_json::Value =
        serde_json::from_str(&trained.to_string(false).map_err(tokenizer_error)?)
            .map_err(tokenizer_error)?;
    let Some(vocab) = json.pointer_mut("/model/vocab").and_then(|v| v.as_object_mut()) else {
        return Err(tokenizer_error("trained tokenizer has no model.vocab"));
    };
    let mut next_id = vocab.len();
    let mut filler = 0usize;
    while next_id < vocab_size {
        let token = format!("<|reserved_{filler}|>");
        filler += 1;
        if !vocab.contains_key(&token) {
            vocab.insert(token, serde_json::Value::from(next_id));
            next_id += 1;
        }
    }
    // Only parsed back, never written: the tokenizers crate serialises the final file itself,
    // in id order.
    Ok(json.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer(vocab_size: usize) -> Tokenizer {
        build(vocab_size).unwrap().parse().unwrap()
    }

    #[test]
    fn has_the_exact_size_and_every_id_decodes() {
        let tokenizer = tokenizer(512);
        assert_eq!(tokenizer.get_vocab_size(true), 512);
        for id in 0..512u32 {
            let text = tokenizer.decode(&[id], false).unwrap();
            assert!(!text.is_empty(), "id {id} decodes to nothing");
        }
        assert_eq!(tokenizer.token_to_id("<|im_end|>"), Some(2));
    }

    #[test]
    fn round_trips_text_and_learns_merges() {
        let tokenizer = tokenizer(512);
        let text = "The hearth keeps the kitchen warm. Ünïcode ✓ and emoji 🔥 survive.";
        let encoding = tokenizer.encode(text, false).unwrap();
        assert!(encoding.get_ids().len() < text.len(), "no merges were learned");
        assert_eq!(tokenizer.decode(encoding.get_ids(), false).unwrap(), text);
        let chat = tokenizer.encode("<|im_start|>user\nhi<|im_end|>", false).unwrap();
        assert_eq!(chat.get_ids()[0], 1);
        assert_eq!(chat.get_ids().last(), Some(&2));
    }

    #[test]
    fn same_size_gives_the_same_file_and_large_sizes_are_padded() {
        assert_eq!(build(600).unwrap(), build(600).unwrap());
        let big = tokenizer(49_152);
        assert_eq!(big.get_vocab_size(true), 49_152);
        assert!(big.decode(&[49_151], false).unwrap().starts_with("<|reserved_"));
    }
}
