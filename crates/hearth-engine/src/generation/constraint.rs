//! Constrained decoding (structured outputs). A grammar — a JSON Schema, any JSON object, a
//! regular expression or a Lark grammar — is compiled with llguidance against the model's own
//! tokenizer when a request is submitted; per sequence, its matcher says which tokens may come
//! next, the sampler never draws another, and the matcher then takes the drawn token.
//!
//! The masks of a step are computed on a helper thread while the forward pass runs (see
//! `Worker::run_scheduled`): they depend only on the tokens already drawn. A matcher lives with
//! its request, so a sequence that is preempted and recomputed, or that starts on a prefix-cache
//! hit, keeps its place in the grammar (preemption never takes a drawn token back).

use std::sync::Arc;

use hearth_protocol::OutputConstraint;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::SimpleVob;
use llguidance::{JsonCompileOptions, Matcher, ParserFactory};
use tokenizers::Tokenizer;

/// Compiles grammars for one model's tokenizer. Built once per engine; compiling a request's
/// grammar against it is cheap (milliseconds for a typical tool schema).
pub(crate) struct GrammarCompiler {
    factory: Arc<ParserFactory>,
}

impl GrammarCompiler {
    /// `vocab_size` is the width of the model's logits, which may exceed the tokenizer's
    /// vocabulary (padded embeddings): the extra ids are never allowed.
    pub fn new(
        tokenizer: &Tokenizer,
        eos_token_ids: &[u32],
        vocab_size: usize,
    ) -> Result<Self, String> {
        let json = tokenizer.to_string(false).map_err(|e| e.to_string())?;
        let mut bytes = toktrie_hf_tokenizers::ByteTokenizer::from_json_bytes(json.as_bytes())
            .map_err(|e| e.to_string())?;
        // The model's end-of-sequence ids, not the adapter's guess from token names: a finished
        // grammar allows exactly these.
        let known = bytes.tokrx_info().vocab_size;
        let eos: Vec<u32> = eos_token_ids.iter().copied().filter(|&id| id < known).collect();
        if !eos.is_empty() {
            bytes.set_eos_tokens(&eos);
        }
        let env = bytes.into_tok_env(Some(vocab_size)).map_err(|e| e.to_string())?;
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        Ok(Self { factory: Arc::new(factory) })
    }

    /// A fresh matcher for `constraint`, or why the grammar is not acceptable (a 400 at the
    /// edge, naming the problem).
    pub fn compile(&self, constraint: &OutputConstraint) -> Result<TokenConstraint, String> {
        let grammar = match constraint {
            OutputConstraint::JsonSchema { .. } | OutputConstraint::JsonObject => {
                TopLevelGrammar::from_json_schema(with_layout(constraint.json_schema()))
            }
            OutputConstraint::Regex { pattern } => TopLevelGrammar::from_regex(pattern),
            OutputConstraint::Lark { grammar } => TopLevelGrammar::from_lark(grammar.clone()),
        };
        let parser = self.factory.create_parser(grammar).map_err(|e| e.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(error) = matcher.get_error() {
            return Err(error);
        }
        Ok(TokenConstraint { matcher: Box::new(matcher) })
    }
}

/// The schema with the JSON layout Hearth asks for: compact, no whitespace between tokens.
/// Free whitespace would let a model pad its answer until `max_tokens` cuts it short (a greedy
/// model can loop on newlines). A schema that sets its own `x-guidance` options keeps them.
fn with_layout(schema: Option<serde_json::Value>) -> serde_json::Value {
    let mut schema = match schema {
        Some(serde_json::Value::Bool(true)) | None => serde_json::json!({}),
        Some(schema) => schema,
    };
    if schema.is_object() && schema.get("x-guidance").is_none() {
        let compact =
            JsonCompileOptions { whitespace_flexible: false, ..JsonCompileOptions::default() };
        compact.apply_to(&mut schema);
    }
    schema
}

/// One request's place in its grammar.
pub(crate) struct TokenConstraint {
    /// Boxed: a matcher is large, and it travels in the engine's command channel.
    matcher: Box<Matcher>,
}

/// The tokens a sequence may draw next.
pub(crate) type TokenMask = SimpleVob;

impl TokenConstraint {
    /// The tokens allowed next (end-of-sequence once the grammar is complete).
    pub fn mask(&mut self) -> Result<TokenMask, String> {
        let mask = self.matcher.compute_mask().map_err(|e| e.to_string())?;
        if mask.is_zero() {
            return Err(self
                .matcher
                .get_error()
                .unwrap_or_else(|| "the grammar allows no token here".to_owned()));
        }
        Ok(mask)
    }

    /// Takes the drawn token.
    pub fn consume(&mut self, token: u32) -> Result<(), String> {
        self.matcher.consume_token(token).map_err(|e| e.to_string())
    }

    /// True once the grammar can take nothing more.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}

/// Rules out, in `logits`, every token `mask` does not allow (and any id past its end).
pub(crate) fn apply(mask: &TokenMask, logits: &mut [f32]) {
    mask.iter_unset_entries(|token| {
        if let Some(logit) = logits.get_mut(token) {
            *logit = f32::NEG_INFINITY;
        }
    });
    if let Some(beyond) = logits.get_mut(mask.len()..) {
        beyond.fill(f32::NEG_INFINITY);
    }
}

#[cfg(test)]
mod tests {
    use hearth_protocol::reasoning::after_thinking;
    use hearth_protocol::tools::{forced_call_grammar, ToolFormat};
    use hearth_protocol::{ToolChoice, ToolDefinition};
    use rand::{Rng, SeedableRng};
    use serde_json::{json, Value};

    use super::*;

    fn tokenizer() -> Tokenizer {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-llama");
        Tokenizer::from_file(dir.join("tokenizer.json")).expect("the example model's tokenizer")
    }

    const EOS: u32 = 2;

    fn auto_grammar(tokenizer: &Tokenizer) -> TokenConstraint {
        tool_grammar(tokenizer, ToolChoice::Auto, None)
    }

    fn weather_tool() -> ToolDefinition {
        ToolDefinition {
            name: "get_weather".into(),
            description: None,
            parameters: json!({"type": "object", "properties": {"city": {"type": "string",
                "maxLength": 8}}, "required": ["city"], "additionalProperties": false}),
        }
    }

    fn compile(tokenizer: &Tokenizer, grammar: &OutputConstraint) -> TokenConstraint {
        let vocab = tokenizer.get_vocab_size(true);
        let compiler = GrammarCompiler::new(tokenizer, &[EOS], vocab).expect("tokenizer loads");
        compiler.compile(grammar).expect("compiles")
    }

    /// The weather tool's grammar; `thinking` wraps it for a model that reasons first.
    fn tool_grammar(
        tokenizer: &Tokenizer,
        choice: ToolChoice,
        thinking: Option<bool>,
    ) -> TokenConstraint {
        let grammar =
            forced_call_grammar(ToolFormat::Hermes, &[weather_tool()], &choice, false, None)
                .expect("a grammar");
        let grammar = match thinking {
            Some(opened) => after_thinking(grammar, opened),
            None => grammar,
        };
        compile(tokenizer, &grammar)
    }

    /// Feeds `text` as the model's own tokens; each must be allowed.
    fn feed(constraint: &mut TokenConstraint, tokenizer: &Tokenizer, text: &str) {
        for &token in tokenizer.encode(text, false).unwrap().get_ids() {
            let mask = constraint.mask().unwrap();
            assert!(mask.is_allowed(token), "{text:?}: token {token} refused");
            constraint.consume(token).unwrap();
        }
    }

    #[test]
    fn with_auto_the_model_may_answer_in_plain_text() {
        let tokenizer = tokenizer();
        let mut constraint = auto_grammar(&tokenizer);
        feed(&mut constraint, &tokenizer, "It is sunny {in} Paris, I think.");
        assert!(constraint.mask().unwrap().is_allowed(EOS), "plain text may end");
    }

    #[test]
    fn with_auto_a_call_the_model_starts_is_held_to_its_schema() {
        let tokenizer = tokenizer();
        for seed in 0..20 {
            let mut constraint = auto_grammar(&tokenizer);
            feed(&mut constraint, &tokenizer, "Let me look.<tool_call>\n");
            assert_call_follows(&mut constraint, &tokenizer, seed);
        }
    }

    #[test]
    fn a_forced_call_waits_for_the_end_of_the_thinking() {
        let tokenizer = tokenizer();
        for seed in 0..5 {
            // The prompt opened the thinking: free text, then the call.
            let mut constraint = tool_grammar(&tokenizer, ToolChoice::Required, Some(true));
            feed(
                &mut constraint,
                &tokenizer,
                "Weather, so {call} get_weather. <tool_call>?</think>\n\n<tool_call>\n",
            );
            assert_call_follows(&mut constraint, &tokenizer, seed);
            // The model may also skip thinking it was not prompted into.
            let mut constraint = tool_grammar(&tokenizer, ToolChoice::Required, Some(false));
            feed(&mut constraint, &tokenizer, "<tool_call>\n");
            assert_call_follows(&mut constraint, &tokenizer, seed);
        }
    }

    /// Mistral's marker is one special token; the example tokenizer has none, so its BOS token
    /// stands in for it.
    const MARKER: u32 = 1;

    #[test]
    fn mistral_auto_takes_text_or_the_marker_token_then_calls_held_to_their_schema() {
        let tokenizer = tokenizer();
        let tools = [weather_tool()];
        let auto = || {
            let grammar = forced_call_grammar(
                ToolFormat::Mistral,
                &tools,
                &ToolChoice::Auto,
                false,
                Some(MARKER),
            );
            compile(&tokenizer, &grammar.expect("a grammar"))
        };
        let mut constraint = auto();
        assert!(constraint.mask().unwrap().is_allowed(MARKER));
        feed(&mut constraint, &tokenizer, "It is sunny {in} Paris.");
        assert!(!constraint.mask().unwrap().is_allowed(MARKER), "the marker opens the answer");
        assert!(constraint.mask().unwrap().is_allowed(EOS), "plain text may end");
        for seed in 0..10 {
            let mut constraint = auto();
            constraint.consume(MARKER).unwrap();
            let text = complete(&mut constraint, &tokenizer, seed);
            let calls: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
            let calls = calls.as_array().unwrap_or_else(|| panic!("{text:?}"));
            assert_eq!(calls.len(), 1, "not parallel: {text}");
            check_weather_call(&calls[0]);
        }
    }

    /// From inside a started call, random allowed tokens always complete a valid call.
    fn assert_call_follows(constraint: &mut TokenConstraint, tokenizer: &Tokenizer, seed: u64) {
        let text = complete(constraint, tokenizer, seed);
        let body = text.strip_suffix("\n</tool_call>").unwrap_or_else(|| panic!("{text:?}"));
        let call: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
        check_weather_call(&call);
    }

    fn check_weather_call(call: &Value) {
        assert_eq!(call["name"], "get_weather", "{call}");
        let city = call["arguments"]["city"].as_str().unwrap_or_else(|| panic!("{call}"));
        assert!(city.chars().count() <= 8, "{call}");
    }

    /// Random allowed tokens until the grammar ends, as text.
    fn complete(constraint: &mut TokenConstraint, tokenizer: &Tokenizer, seed: u64) -> String {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut drawn = Vec::new();
        while !constraint.is_finished() && drawn.len() < 200 {
            let mask = constraint.mask().unwrap();
            let allowed: Vec<u32> =
                (0..mask.len() as u32).filter(|&t| mask.is_allowed(t)).collect();
            let token = allowed[rng.random_range(0..allowed.len())];
            if token == EOS {
                break;
            }
            constraint.consume(token).unwrap();
            drawn.push(token);
        }
        tokenizer.decode(&drawn, false).unwrap()
    }
}
