//! Streaming text out of a token stream: incremental detokenization and stop sequences.
//!
//! [`IncrementalDetokenizer`] uses the prefix-offset / read-offset method of TGI and vLLM. Decoding
//! one token alone is wrong for many tokenizers (SentencePiece drops a leading space, byte-level
//! BPE splits UTF-8 characters over tokens), so each step decodes a short window that starts a
//! few tokens back and emits only what the new token added. Text that ends in U+FFFD is held
//! back: it means the last character is still incomplete.
//!
//! [`StopMatcher`] then cuts the text at the first stop sequence, holding back any tail that could
//! be the start of one, so a stop string is never emitted even when it spans several tokens.

use std::sync::Arc;

use tokenizers::Tokenizer;

/// How many prompt tokens the first window reaches back, to give the decoder context (vLLM's
/// value).
const NUM_PROMPT_CONTEXT_TOKENS: usize = 5;

/// What a decoder emits in place of bytes that are not (yet) valid UTF-8.
const REPLACEMENT_CHAR: char = '\u{FFFD}';

/// A failure of the tokenizer itself.
#[derive(Debug, thiserror::Error)]
#[error("could not decode tokens: {0}")]
pub struct DetokenizeError(#[source] tokenizers::Error);

/// Turns one sequence's generated tokens into text, a finished piece at a time.
pub struct IncrementalDetokenizer {
    tokenizer: Arc<Tokenizer>,
    /// The decoding window: tokens already emitted (context, ending at `read_offset`) followed by
    /// tokens not yet emitted. Tokens before the window are dropped, which keeps it short.
    window: Vec<u32>,
    read_offset: usize,
    /// Byte length of the decoded context `window[..read_offset]`, cached because the context
    /// only changes when text is emitted.
    context_len: Option<usize>,
}

impl IncrementalDetokenizer {
    /// A detokenizer for the tokens that follow `prompt_ids`. Special tokens are skipped, so an
    /// end-of-sequence token adds no text.
    pub fn new(tokenizer: Arc<Tokenizer>, prompt_ids: &[u32]) -> Self {
        let context_start = prompt_ids.len().saturating_sub(NUM_PROMPT_CONTEXT_TOKENS);
        let window = prompt_ids[context_start..].to_vec();
        Self { tokenizer, read_offset: window.len(), window, context_len: None }
    }

    /// Adds a token and returns the text it completes; empty while a character is still partial.
    pub fn push(&mut self, token: u32) -> Result<String, DetokenizeError> {
        self.window.push(token);
        let context_len = match self.context_len {
            Some(len) => len,
            None => self.decode(&self.window[..self.read_offset])?.len(),
        };
        self.context_len = Some(context_len);
        let text = self.decode(&self.window)?;
        let Some(new_text) = text.get(context_len..) else {
            // The window no longer decodes to context + more (a decoder that rewrites its
            // boundary); wait for more tokens, and `flush` settles whatever remains.
            return Ok(String::new());
        };
        if new_text.is_empty() || new_text.ends_with(REPLACEMENT_CHAR) {
            return Ok(String::new());
        }
        let new_text = new_text.to_owned();
        self.advance();
        Ok(new_text)
    }

    /// Everything not yet emitted, partial characters included (as U+FFFD). Call once, when the
    /// sequence ends. A decode failure here has nothing left to report to, so it is logged and
    /// yields no text.
    pub fn flush(&mut self) -> String {
        let pending = self.decode(&self.window[..self.read_offset]).and_then(|context| {
            let text = self.decode(&self.window)?;
            Ok(text_after(&context, &text).to_owned())
        });
        self.advance();
        pending.unwrap_or_else(|err| {
            tracing::warn!(%err, "dropping undecodable text at the end of a sequence");
            String::new()
        })
    }

    /// Everything in the window has been emitted: it becomes the context for the next token,
    /// and the old context is dropped.
    fn advance(&mut self) {
        self.window.drain(..self.read_offset);
        self.read_offset = self.window.len();
        self.context_len = None;
    }

    fn decode(&self, ids: &[u32]) -> Result<String, DetokenizeError> {
        self.tokenizer.decode(ids, true).map_err(DetokenizeError)
    }
}

/// The part of `text` past its common prefix with `context`, cut on a character boundary.
fn text_after<'a>(context: &str, text: &'a str) -> &'a str {
    let common = context
        .char_indices()
        .zip(text.chars())
        .find(|((_, a), b)| a != b)
        .map_or(context.len().min(text.len()), |((at, _), _)| at);
    text.get(common..).unwrap_or_default()
}

/// Text released by [`StopMatcher::push`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopOutcome {
    /// Safe to send: contains no part of a stop sequence.
    pub emit: String,
    /// A stop sequence matched; generation should end and later pushes emit nothing.
    pub stopped: bool,
}

/// Finds stop sequences in streamed text.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text that may be the start of a stop sequence, not yet released.
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// Empty stop strings are ignored: they would match before any text.
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|stop| !stop.is_empty()).collect();
        Self { stops, held: String::new(), stopped: false }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Adds text; returns what can be released now and whether a stop sequence matched.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stopped {
            return StopOutcome { emit: String::new(), stopped: true };
        }
        if self.stops.is_empty() {
            return StopOutcome { emit: text.to_owned(), stopped: false };
        }
        self.held.push_str(text);
        if let Some(at) = self.first_match() {
            self.held.truncate(at);
            self.stopped = true;
            return StopOutcome { emit: std::mem::take(&mut self.held), stopped: true };
        }
        let release = self.held.len() - self.partial_match_len();
        let emit = self.held[..release].to_owned();
        self.held.drain(..release);
        StopOutcome { emit, stopped: false }
    }

    /// Releases held-back text when generation ends without a match.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Byte offset of the earliest stop sequence in the held text. A match cannot start in text
    /// already released: that text would have been the start of a stop sequence, and held.
    fn first_match(&self) -> Option<usize> {
        self.stops.iter().filter_map(|stop| self.held.find(stop.as_str())).min()
    }

    /// Length of the longest tail of the held text that is a proper prefix of a stop sequence.
    fn partial_match_len(&self) -> usize {
        let longest_stop = self.stops.iter().map(String::len).max().unwrap_or(0);
        let earliest = self.held.len().saturating_sub(longest_stop.saturating_sub(1));
        let tail_starts =
            self.held.char_indices().map(|(at, _)| at).skip_while(|&at| at < earliest);
        for at in tail_starts {
            let tail = &self.held[at..];
            if self.stops.iter().any(|stop| stop.starts_with(tail)) {
                return tail.len();
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
    use tokenizers::models::bpe::{Vocab, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;

    use super::*;

    /// GPT-2's map from bytes to printable characters, which byte-level BPE vocabularies use.
    fn byte_char(byte: u8) -> char {
        let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        if printable(byte) {
            return char::from(byte);
        }
        let rank = (0..byte).filter(|&b| !printable(b)).count() as u32;
        char::from_u32(256 + rank).expect("a valid code point")
    }

    /// A byte-level BPE tokenizer with one token per byte (token id = byte) and no merges, so a
    /// multi-byte character always spans several tokens.
    fn byte_tokenizer() -> Arc<Tokenizer> {
        let vocab: Vocab =
            (0..=255u8).map(|byte| (byte_char(byte).to_string(), u32::from(byte))).collect();
        let model =
            BPE::builder().vocab_and_merges(vocab, vec![]).build().expect("a valid BPE model");
        let mut tokenizer = Tokenizer::new(model);
        tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, false, false)));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
        Arc::new(tokenizer)
    }

    fn encode(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
        tokenizer.encode(text, false).expect("encodes").get_ids().to_vec()
    }

    #[test]
    fn byte_tokens_are_one_per_byte() {
        let tokenizer = byte_tokenizer();
        assert_eq!(encode(&tokenizer, "a é"), [b'a', b' ', 0xC3, 0xA9].map(u32::from));
    }

    #[test]
    fn split_characters_are_never_emitted_half() {
        let tokenizer = byte_tokenizer();
        let prompt = encode(&tokenizer, "Say: ");
        let output = "héllo, 世界! €5 😀 ok";
        let ids = encode(&tokenizer, output);
        let mut detokenizer = IncrementalDetokenizer::new(tokenizer.clone(), &prompt);
        let mut pieces = Vec::new();
        for &id in &ids {
            pieces.push(detokenizer.push(id).expect("decodes"));
        }
        pieces.push(detokenizer.flush());
        assert!(pieces.iter().all(|piece| !piece.contains(REPLACEMENT_CHAR)), "{pieces:?}");
        assert!(pieces.iter().any(String::is_empty), "multi-byte characters wait for their end");
        assert_eq!(pieces.concat(), output);
        assert_eq!(pieces.concat(), tokenizer.decode(&ids, true).expect("decodes"));
    }

    #[test]
    fn flush_releases_an_unfinished_character() {
        let tokenizer = byte_tokenizer();
        let mut detokenizer = IncrementalDetokenizer::new(tokenizer, &[]);
        assert_eq!(detokenizer.push(u32::from(b'a')).expect("decodes"), "a");
        // The first two bytes of "€" (E2 82 AC) only.
        assert_eq!(detokenizer.push(0xE2).expect("decodes"), "");
        assert_eq!(detokenizer.push(0x82).expect("decodes"), "");
        assert_eq!(detokenizer.flush(), REPLACEMENT_CHAR.to_string());
    }

    #[test]
    fn text_after_skips_the_common_prefix_only() {
        assert_eq!(text_after("ab", "abcd"), "cd");
        assert_eq!(text_after("aé", "aèz"), "èz");
        assert_eq!(text_after("abc", "ab"), "");
    }

    fn run_stops(stops: &[&str], pushes: &[&str]) -> (String, bool) {
        let mut matcher = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut emitted = String::new();
        for text in pushes {
            let outcome = matcher.push(text);
            emitted.push_str(&outcome.emit);
            if outcome.stopped {
                return (emitted, true);
            }
        }
        emitted.push_str(&matcher.flush());
        (emitted, false)
    }

    #[test]
    fn stop_sequence_spanning_several_pushes_is_cut() {
        assert_eq!(run_stops(&["</end>"], &["Hello </", "en", "d> more"]), ("Hello ".into(), true));
    }

    #[test]
    fn held_text_is_released_as_soon_as_it_cannot_match() {
        let mut matcher = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(matcher.push("go ST").emit, "go ");
        assert_eq!(matcher.push("ay").emit, "STay");
        assert!(!matcher.is_stopped());
    }

    #[test]
    fn overlapping_prefixes_still_match() {
        assert_eq!(run_stops(&["abc"], &["ab", "ab", "c"]), ("ab".into(), true));
        assert_eq!(run_stops(&["aab"], &["a", "a", "a", "b"]), ("a".into(), true));
        // The earliest match wins across several stop sequences.
        assert_eq!(run_stops(&["xyz", "yz"], &["wxy", "z"]), ("w".into(), true));
        assert_eq!(run_stops(&["yz", "xyz"], &["wxy", "z"]), ("w".into(), true));
    }

    #[test]
    fn match_at_the_very_start_emits_nothing() {
        assert_eq!(run_stops(&["Hello"], &["Hello world"]), (String::new(), true));
        assert_eq!(run_stops(&["Hi"], &["H", "i there"]), (String::new(), true));
    }

    #[test]
    fn no_match_releases_everything_on_flush() {
        assert_eq!(run_stops(&["STOP"], &["all ", "good ST"]), ("all good ST".into(), false));
        assert_eq!(run_stops(&[], &["plain ", "text"]), ("plain text".into(), false));
    }

    #[test]
    fn multi_byte_text_is_held_on_character_boundaries() {
        assert_eq!(run_stops(&["é!"], &["caf", "é", "!"]), ("caf".into(), true));
        assert_eq!(run_stops(&["ü"], &["日本", "語"]), ("日本語".into(), false));
    }

    #[test]
    fn pushes_after_a_stop_emit_nothing() {
        let mut matcher = StopMatcher::new(vec!["x".into()]);
        assert!(matcher.push("ax").stopped);
        assert_eq!(matcher.push("more"), StopOutcome { emit: String::new(), stopped: true });
        assert_eq!(matcher.flush(), "");
    }
}
