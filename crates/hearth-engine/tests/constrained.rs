//! Structured outputs on the tiny random-weight model: whatever its weights would say, a
//! constrained request's text matches its grammar, at temperature 1, in a shared batch, under
//! preemption.

mod common;

use common::{collect, start, tokens, Output};
use hearth_engine::{Engine, GenerateRequest, Prompt, SubmitError};
use hearth_protocol::{FinishReason, OutputConstraint, SamplingParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

/// Room for every generated schema's longest answer; a constrained request that hits it has
/// failed the test (its text would be cut short).
const MAX_TOKENS: usize = 768;

fn sampled(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        seed: Some(seed),
        max_tokens: MAX_TOKENS,
        ..SamplingParams::default()
    }
}

fn greedy() -> SamplingParams {
    SamplingParams { temperature: 0.0, max_tokens: 96, ..SamplingParams::default() }
}

fn submit(
    engine: &Engine,
    prompt: Vec<u32>,
    sampling: SamplingParams,
    constraint: Option<OutputConstraint>,
) -> Result<hearth_engine::GenerationStream, SubmitError> {
    let sampling = sampling.validated().expect("valid sampling");
    engine.submit(GenerateRequest {
        prompt: Prompt::Tokens(prompt),
        sampling,
        constraint,
        adapter: None,
    })
}

async fn generate(
    engine: &Engine,
    prompt: Vec<u32>,
    sampling: SamplingParams,
    constraint: Option<OutputConstraint>,
) -> Output {
    collect(submit(engine, prompt, sampling, constraint).expect("accepted")).await
}

/// A random JSON Schema: nested objects (some properties required), arrays with bounds, enums,
/// `anyOf`, strings with lengths, patterns and formats, bounded integers, numbers, booleans.
/// Strings are bounded: a random model closes a free string with odds of one in the vocabulary.
fn random_schema(rng: &mut StdRng, depth: u32) -> Value {
    let composite = depth > 0 && rng.random_bool(0.6);
    if !composite {
        return random_leaf(rng);
    }
    match rng.random_range(0..3) {
        0 => {
            let names = ["id", "name", "kind", "count", "tags", "score", "ok", "when"];
            let n = rng.random_range(1..=4);
            let mut properties = Map::new();
            let mut required = Vec::new();
            for name in names.iter().take(n) {
                properties.insert((*name).into(), random_schema(rng, depth - 1));
                if rng.random_bool(0.6) {
                    required.push(json!(name));
                }
            }
            json!({ "type": "object", "properties": properties, "required": required,
                    "additionalProperties": false })
        }
        1 => {
            let min = rng.random_range(0..=2);
            let max = min + rng.random_range(0..=2);
            json!({ "type": "array", "items": random_schema(rng, depth - 1),
                    "minItems": min, "maxItems": max })
        }
        _ => json!({ "anyOf": [random_schema(rng, depth - 1), random_leaf(rng)] }),
    }
}

fn random_leaf(rng: &mut StdRng) -> Value {
    match rng.random_range(0..9) {
        0 => {
            let min = rng.random_range(0..=2);
            json!({ "type": "string", "minLength": min, "maxLength": min + rng.random_range(1..=6) })
        }
        1 => json!({ "type": "string", "pattern": "^[a-z]{1,6}(-[0-9]{1,3})?$" }),
        2 => {
            // Not `time`: llguidance allows `23:59:60z` (RFC 3339 does), the validator does not.
            let format = ["date", "uuid", "ipv4"][rng.random_range(0..3)];
            json!({ "type": "string", "format": format })
        }
        3 => json!({ "enum": ["red", "green", "blue", 7, null] }),
        4 => {
            let low = rng.random_range(-50..50);
            json!({ "type": "integer", "minimum": low, "maximum": low + rng.random_range(0..1000) })
        }
        // Bounded: an unbounded number may take an exponent past f64 (`96e813` is JSON, but
        // serde_json will not read it).
        5 => json!({ "type": "number", "minimum": -1000, "maximum": 1000 }),
        6 => json!({ "type": "boolean" }),
        7 => json!({ "type": "null" }),
        _ => json!({ "const": "fixed" }),
    }
}

fn validates(schema: &Value, value: &Value) -> Result<(), String> {
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| format!("the test's own schema is invalid: {e}"))?;
    let errors: Vec<String> = validator.iter_errors(value).map(|e| e.to_string()).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_json_schemas_always_parse_and_validate_at_temperature_one() {
    let engine = start(4096, true);
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let schemas: Vec<Value> = (0..200).map(|_| random_schema(&mut rng, 3)).collect();
    // All at once: constrained sequences batch together, as a busy server runs them.
    let streams: Vec<_> = schemas
        .iter()
        .enumerate()
        .map(|(i, schema)| {
            let constraint = OutputConstraint::schema(schema.clone());
            let prompt = tokens(i as u64 + 1, 8);
            submit(&engine, prompt, sampled(i as u64), Some(constraint)).expect("accepted")
        })
        .collect();
    for (i, (stream, schema)) in streams.into_iter().zip(&schemas).enumerate() {
        let output = collect(stream).await;
        assert_eq!(output.reason, FinishReason::Stop, "schema {i} {schema}: {output:?}");
        let value: Value = serde_json::from_str(&output.text)
            .unwrap_or_else(|e| panic!("schema {i} {schema}: {e}: {:?}", output.text));
        if let Err(why) = validates(schema, &value) {
            panic!("schema {i} {schema}: {value} does not validate: {why}");
        }
    }
}

#[tokio::test]
async fn a_regular_expression_holds_the_whole_text() {
    let engine = start(1024, true);
    let pattern = "[a-z]{2,6}( [a-z]{2,6}){1,3}[.!?]";
    let whole = regex::Regex::new(&format!("^(?:{pattern})$")).expect("a valid pattern");
    for seed in 0..8 {
        let constraint = OutputConstraint::Regex { pattern: pattern.into() };
        let output = generate(&engine, tokens(seed + 20, 6), sampled(seed), Some(constraint)).await;
        assert!(whole.is_match(&output.text), "seed {seed}: {:?}", output.text);
        assert_eq!(output.reason, FinishReason::Stop, "seed {seed}");
    }
}

#[tokio::test]
async fn a_lark_grammar_and_any_json_object_hold_too() {
    let engine = start(1024, true);
    let lark = r#"start: "yes" | "no" | "maybe " NUMBER
NUMBER: /[0-9]{1,3}/"#;
    let output = generate(
        &engine,
        tokens(3, 5),
        sampled(3),
        Some(OutputConstraint::Lark { grammar: lark.into() }),
    )
    .await;
    let text = output.text.as_str();
    let fits = text == "yes"
        || text == "no"
        || text
            .strip_prefix("maybe ")
            .is_some_and(|n| (1..=3).contains(&n.len()) && n.chars().all(|c| c.is_ascii_digit()));
    assert!(fits, "{text:?}");

    // Any object: its keys are free strings, which a random model rarely closes (one token in
    // the vocabulary does it), so only an answer that ended is asked to parse.
    for seed in 0..4 {
        let any_object = Some(OutputConstraint::JsonObject);
        let output = generate(&engine, tokens(4 + seed, 5), sampled(seed), any_object).await;
        assert!(output.text.starts_with('{'), "{:?}", output.text);
        if output.reason == FinishReason::Stop {
            let value: Value = serde_json::from_str(&output.text).expect("parses");
            assert!(value.is_object(), "{value}");
        }
    }
}

#[tokio::test]
async fn constrained_and_free_requests_share_a_batch_and_each_gets_what_it_gets_alone() {
    let schema = json!({ "type": "object", "properties": {
        "a": { "type": "integer", "minimum": 0, "maximum": 99 },
        "b": { "type": "array", "items": { "type": "boolean" }, "maxItems": 3 } },
        "required": ["a", "b"], "additionalProperties": false });
    let requests: Vec<(Vec<u32>, Option<OutputConstraint>)> = (0..6u64)
        .map(|i| {
            let constraint = (i % 2 == 0).then(|| OutputConstraint::schema(schema.clone()));
            (tokens(i + 50, 10 + i as usize), constraint)
        })
        .collect();
    let engine = start(1024, false);
    let mut alone = Vec::new();
    for (prompt, constraint) in &requests {
        alone.push(generate(&engine, prompt.clone(), greedy(), constraint.clone()).await);
    }
    // Together, and on a cache small enough that some are preempted and recomputed.
    for num_blocks in [1024, 32] {
        let engine = start(num_blocks, true);
        let streams: Vec<_> = requests
            .iter()
            .map(|(prompt, c)| {
                submit(&engine, prompt.clone(), greedy(), c.clone()).expect("accepted")
            })
            .collect();
        for (i, stream) in streams.into_iter().enumerate() {
            assert_eq!(collect(stream).await, alone[i], "request {i}, {num_blocks} blocks");
        }
        if num_blocks == 32 {
            assert!(engine.stats().num_preemptions > 0, "the small cache preempted nothing");
        }
    }
    for (i, output) in alone.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        let value: Value = serde_json::from_str(&output.text).expect("parses");
        validates(&schema, &value).unwrap_or_else(|why| panic!("request {i}: {why}"));
    }
}

#[test]
fn a_grammar_that_cannot_be_used_is_refused_with_its_problem() {
    let engine = start(64, true);
    let refused = |constraint: OutputConstraint| match submit(
        &engine,
        tokens(1, 4),
        greedy(),
        Some(constraint),
    ) {
        Err(SubmitError::Grammar(why)) => why,
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("accepted"),
    };
    let why = refused(OutputConstraint::Regex { pattern: "(unclosed".into() });
    assert!(!why.is_empty());
    let why = refused(OutputConstraint::schema(json!({ "type": "no-such-type" })));
    assert!(why.contains("no-such-type"), "{why}");
}
