//! What each surface fills in when a caller leaves a sampling option out, decided here once (the
//! README lists them). Anthropic's surface fills in nothing: the current `anthropic` client
//! cannot send a temperature at all, so its requests take the route's own default (greedy on a
//! local model, deterministic for a client that has no way to ask for it). A `max_tokens` left out is left out: every route then generates up to
//! the end of the model's context (a local engine stops there with `length`), except Anthropic's
//! surface, whose `max_tokens` is required, and Cog's, whose schema has its own defaults
//! (`cog/fields.rs`: the predictor's schema is the contract there).

use hearth_protocol::CanonicalRequest;

/// OpenAI's documented default temperature, for chat completions and completions.
pub(crate) const OPENAI_TEMPERATURE: f32 = 1.0;
/// OpenAI's documented default nucleus mass.
pub(crate) const OPENAI_TOP_P: f32 = 1.0;

/// OpenAI's defaults, on a chat request parsed from OpenAI's wire format.
pub(crate) fn openai(request: &mut CanonicalRequest) {
    request.sampling.temperature.get_or_insert(OPENAI_TEMPERATURE);
    request.sampling.top_p.get_or_insert(OPENAI_TOP_P);
}
