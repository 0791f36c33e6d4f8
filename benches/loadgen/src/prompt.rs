//! Random prompt text of a requested token length.
//!
//! Prompts are random on purpose: real text from a data set would make prefix caches hit across
//! requests in ways that depend on the data set, and would need a download. Two sources:
//! - a tokenizer (`tokenizer.json`): sample random token ids from the vocabulary and decode them,
//!   then correct the length until re-encoding gives (close to) the requested count;
//! - no tokenizer: random common English words, each about one token in the BPE vocabularies of
//!   Llama-, Mistral- and Qwen-family models. The server's `usage.prompt_tokens` is what reports
//!   record, so the approximation only affects how close the offered length is to the target.

use std::collections::HashSet;
use std::path::Path;

use rand::seq::IndexedRandom;
use rand::Rng;
use tokenizers::Tokenizer;

use crate::Error;

/// Common words that are a single token (with their leading space) in the major BPE vocabularies.
// One word per line would make this list 200 lines long.
#[rustfmt::skip]
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no", "time", "people", "year",
    "way", "day", "man", "thing", "woman", "life", "child", "world", "school", "state", "family",
    "student", "group", "country", "problem", "hand", "part", "place", "case", "week", "company",
    "system", "program", "question", "work", "government", "number", "night", "point", "home",
    "water", "room", "mother", "area", "money", "story", "fact", "month", "lot", "right", "study",
    "book", "eye", "job", "word", "business", "issue", "side", "kind", "head", "house", "service",
    "friend", "father", "power", "hour", "game", "line", "end", "member", "law", "car", "city",
    "name", "team", "minute", "idea", "kid", "body", "back", "parent", "face", "others", "level",
    "office", "door", "health", "person", "art", "war", "history", "party", "result", "change",
    "morning", "reason", "research", "girl", "guy", "moment", "air", "teacher", "force", "order",
    "good", "new", "first", "last", "long", "great", "little", "own", "other", "old", "big",
    "high", "different", "small", "large", "next", "early", "young", "important", "few", "public",
    "bad", "same", "able", "make", "know", "take", "see", "come", "think", "look", "want", "give",
    "use", "find", "tell", "ask", "seem", "feel", "try", "leave", "call", "keep", "let", "begin",
    "help", "show", "hear", "play", "run", "move", "live", "believe", "bring", "write", "sit",
    "stand", "lose", "pay", "meet", "include", "set", "learn", "lead", "understand", "watch",
    "follow", "stop", "create", "speak", "read", "spend", "grow", "open", "walk", "win", "offer",
    "remember", "love", "consider", "appear", "buy", "wait", "serve", "die", "send", "build",
];

/// How close a tokenizer-built prompt must come to the requested length: 2%, at least one token.
fn tolerance(target: usize) -> usize {
    (target / 50).max(1)
}

const MAX_CORRECTIONS: usize = 6;

/// Generates random prompts of a target token length.
pub enum PromptGen {
    Words,
    Tokenizer { tokenizer: Box<Tokenizer>, ids: Vec<u32> },
}

impl PromptGen {
    /// Loads a `tokenizer.json` and collects the ordinary (non-special) token ids to sample from.
    pub fn from_tokenizer_file(path: &Path) -> Result<PromptGen, Error> {
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        Self::from_tokenizer(tokenizer)
    }

    /// Wraps an in-memory tokenizer. Special tokens are excluded because decoding skips them and
    /// some servers refuse them in user text; so are tokens that do not decode to clean text on
    /// their own (byte-fallback pieces, partial UTF-8, control characters), which would otherwise
    /// fill prompts with U+FFFD and control bytes that no real client sends.
    pub fn from_tokenizer(tokenizer: Tokenizer) -> Result<PromptGen, Error> {
        let special: HashSet<u32> = tokenizer.get_added_tokens_decoder().into_keys().collect();
        let mut ids: Vec<u32> = tokenizer
            .get_vocab(false)
            .into_values()
            .filter(|id| !special.contains(id) && decodes_cleanly(&tokenizer, *id))
            .collect();
        ids.sort_unstable(); // HashMap order is random; sorting keeps seeded runs reproducible.
        if ids.is_empty() {
            return Err(Error::Tokenizer("vocabulary has no ordinary tokens".into()));
        }
        Ok(PromptGen::Tokenizer { tokenizer: Box::new(tokenizer), ids })
    }

    /// A prompt of about `tokens` tokens. Returns the text and the token count this generator
    /// believes it has (exact for the tokenizer source, the word count otherwise).
    pub fn generate<R: Rng + ?Sized>(
        &self,
        tokens: u32,
        rng: &mut R,
    ) -> Result<(String, u32), Error> {
        let target = tokens.max(1) as usize;
        match self {
            PromptGen::Words => Ok((random_words(target, rng), target as u32)),
            PromptGen::Tokenizer { tokenizer, ids } => {
                let (text, n) = tokenizer_prompt(tokenizer, ids, target, rng)?;
                Ok((text, n as u32))
            }
        }
    }
}

fn decodes_cleanly(tokenizer: &Tokenizer, id: u32) -> bool {
    match tokenizer.decode(&[id], true) {
        Ok(text) => {
            !text.trim().is_empty() && !text.chars().any(|c| c == '\u{FFFD}' || c.is_control())
        }
        Err(_) => false,
    }
}

fn random_words<R: Rng + ?Sized>(n: usize, rng: &mut R) -> String {
    let mut out = String::with_capacity(n * 6);
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS.choose(rng).expect("word list is not empty"));
    }
    out
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

/// Decoding random ids and re-encoding rarely round-trips exactly (merges differ at the seams),
/// so the length is corrected a few times: trim when long, append fresh random ids when short.
fn tokenizer_prompt<R: Rng + ?Sized>(
    tokenizer: &Tokenizer,
    vocab: &[u32],
    target: usize,
    rng: &mut R,
) -> Result<(String, usize), Error> {
    let mut ids: Vec<u32> = (0..target).map(|_| *vocab.choose(rng).expect("non-empty")).collect();
    let mut text = tokenizer.decode(&ids, true).map_err(tok_err)?;
    for _ in 0..MAX_CORRECTIONS {
        ids = tokenizer.encode(text.as_str(), false).map_err(tok_err)?.get_ids().to_vec();
        if ids.len().abs_diff(target) <= tolerance(target) {
            break;
        }
        if ids.len() > target {
            ids.truncate(target);
        } else {
            ids.extend((ids.len()..target).map(|_| *vocab.choose(rng).expect("non-empty")));
        }
        text = tokenizer.decode(&ids, true).map_err(tok_err)?;
    }
    let actual = tokenizer.encode(text.as_str(), false).map_err(tok_err)?.len();
    if actual.abs_diff(target) > tolerance(target) {
        tracing::debug!(target, actual, "tokenizer prompt length off after corrections");
    }
    Ok((text, actual))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use std::collections::HashMap;
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;

    fn word_level_tokenizer() -> Tokenizer {
        let mut vocab: HashMap<String, u32> = HashMap::new();
        vocab.insert("[UNK]".into(), 0);
        for (i, w) in WORDS.iter().enumerate() {
            vocab.entry((*w).to_string()).or_insert(i as u32 + 1);
        }
        // A token that decodes to a control character must never be sampled.
        vocab.insert("bell\u{7}".into(), 10_000);
        let model = WordLevel::builder()
            .vocab(vocab.into_iter().collect())
            .unk_token("[UNK]".into())
            .build()
            .unwrap();
        let mut tok = Tokenizer::new(model);
        tok.with_pre_tokenizer(Some(Whitespace {}));
        tok.add_special_tokens(&[tokenizers::AddedToken::from("<s>", true)]);
        tok
    }

    #[test]
    fn words_have_requested_count_and_vary() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (a, n) = PromptGen::Words.generate(50, &mut rng).unwrap();
        let (b, _) = PromptGen::Words.generate(50, &mut rng).unwrap();
        assert_eq!(n, 50);
        assert_eq!(a.split(' ').count(), 50);
        assert_ne!(a, b);
    }

    #[test]
    fn seeded_generation_is_reproducible() {
        let gen = PromptGen::from_tokenizer(word_level_tokenizer()).unwrap();
        let a = gen.generate(40, &mut ChaCha8Rng::seed_from_u64(9)).unwrap();
        let b = gen.generate(40, &mut ChaCha8Rng::seed_from_u64(9)).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn tokenizer_prompt_reencodes_to_target_length() {
        let tok = word_level_tokenizer();
        let gen = PromptGen::from_tokenizer(tok.clone()).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for target in [1, 17, 300] {
            let (text, n) = gen.generate(target, &mut rng).unwrap();
            let reencoded = tok.encode(text.as_str(), false).unwrap().len() as u32;
            assert_eq!(reencoded, n);
            assert!(n.abs_diff(target) <= tolerance(target as usize) as u32, "{n} vs {target}");
            assert!(!text.contains("<s>"), "special tokens must not be sampled");
            assert!(!text.contains('\u{7}'), "unclean tokens must not be sampled");
        }
    }

    #[test]
    fn tokenizer_file_errors_are_reported() {
        let err = PromptGen::from_tokenizer_file(Path::new("/nonexistent/tokenizer.json"));
        assert!(matches!(err, Err(Error::Tokenizer(_))));
    }
}
