//! Budgets and rate limits (`[[limits]]`): requests and tokens per minute, spend per day and
//! per month, each counted per scope value (an API key, a metadata value, or everything).
//!
//! Admission reserves a request's most: one request, its prompt's bytes plus `max_tokens` as
//! tokens (a token is at least one byte of text), and what those would cost. When the run
//! ends, the reservation is settled to what it used. So however many replicas admit at once,
//! they never together admit past a limit beyond what is reserved in flight, and a finished
//! run's reservation never exceeds what it used. Every counter of a request is checked and
//! charged at once (in one Redis script when replicas share them), so a refused request
//! charges nothing.
//!
//! Counters: a per-minute limit is a sliding window of one-second buckets (the last 60 s); a
//! spend limit is a counter per calendar day or month (UTC), in nano-units of currency.

mod memory;
mod redis_limiter;

use chrono::{DateTime, Datelike, Duration as Days, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;

pub use memory::MemoryLimiter;
pub use redis_limiter::RedisLimiter;

use hearth_protocol::{CanonicalRequest, TokenUsage};

use crate::config::ConfigError;
use crate::gateway::Caller;
use crate::keys::ApiKey;
use crate::ledger::{CallerMetadata, LedgerRecord};
use crate::pricing::{to_nanos, Prices};
use crate::shared::Inner;

/// Length of the sliding window of per-minute limits, in one-second buckets.
pub(crate) const WINDOW_SECS: i64 = 60;

/// One `[[limits]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// How refusals and counters name the limit; defaults to `limits[i]`.
    #[serde(default)]
    pub name: Option<String>,
    /// `all`, `api_key` (each key apart), `metadata.<key>` (each value of the key apart) or
    /// `metadata.<key>=<value>` (that value only). Requests without the key are not limited.
    pub scope: String,
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// In the ledger's currency, as prices are.
    #[serde(default)]
    pub spend_per_day: Option<Decimal>,
    #[serde(default)]
    pub spend_per_month: Option<Decimal>,
}

#[derive(Debug, Clone, PartialEq)]
enum Scope {
    All,
    ApiKey,
    Metadata { key: String, value: Option<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    Requests,
    Tokens,
    SpendDay,
    SpendMonth,
}

impl Measure {
    fn name(self) -> &'static str {
        match self {
            Self::Requests => "requests_per_minute",
            Self::Tokens => "tokens_per_minute",
            Self::SpendDay => "spend_per_day",
            Self::SpendMonth => "spend_per_month",
        }
    }
}

#[derive(Debug, Clone)]
struct Limit {
    name: String,
    scope: Scope,
    rules: Vec<(Measure, i64)>,
}

/// Every configured limit, ready to charge requests.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    limits: Vec<Limit>,
}

/// What a request is charged with, once it is admitted or when it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub tokens: i64,
    /// Nano-units of currency.
    pub spend_nanos: i64,
}

/// One counter a request touches.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    /// The counter's identity: limit, scope value, measure (and period for spend).
    pub key: String,
    pub measure: Measure,
    pub limit: i64,
    pub amount: i64,
    /// `limit 'team-rpm' (requests_per_minute = 100, metadata.team = red)`.
    pub describe: String,
    /// Seconds from admission to the end of a spend counter's period.
    pub period_left_secs: i64,
}

/// A request's admitted charges, to settle when its run ends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reservation {
    pub(crate) charges: Vec<Charge>,
    /// The second of admission: the window bucket the charges went to.
    pub(crate) at_sec: i64,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("{limit} is reached; retry in {retry_after_secs} s")]
    Exceeded { limit: String, retry_after_secs: u64 },
    #[error("{limit} is smaller than this request's reservation ({amount}); lower max_tokens")]
    TooLarge { limit: String, amount: i64 },
    /// The shared counters cannot be reached and limits fail closed.
    #[error("limits cannot be checked (the shared store is unreachable: {0}); refusing requests")]
    Unavailable(String),
}

impl LimitError {
    /// Seconds a caller should wait before trying again.
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Self::Exceeded { retry_after_secs, .. } => *retry_after_secs,
            Self::TooLarge { .. } | Self::Unavailable(_) => 1,
        }
    }
}

/// Checks and charges counters; in memory for one daemon, or in Redis for replicas.
#[async_trait::async_trait]
pub trait Limiter: Send + Sync {
    /// Checks every charge and applies them all, or none and says which limit refused.
    async fn admit(
        &self,
        charges: Vec<Charge>,
        now: DateTime<Utc>,
    ) -> Result<Reservation, LimitError>;
    /// Replaces what `reservation` reserved with what the run used.
    async fn settle(&self, reservation: &Reservation, used: Usage);
    /// `open` or `closed`: what happens when the counters cannot be reached.
    fn failure_mode(&self) -> &'static str {
        "closed"
    }
}

impl Limits {
    pub fn new(configs: &[LimitConfig]) -> Result<Self, ConfigError> {
        let limits =
            configs.iter().enumerate().map(|(i, c)| compile(i, c)).collect::<Result<_, _>>()?;
        Ok(Self { limits })
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    pub fn len(&self) -> usize {
        self.limits.len()
    }

    /// An API key's own limits, counted for that key alone (`None` when it has none).
    fn of_key(key: &ApiKey) -> Option<Self> {
        let l = &key.limits;
        let config = LimitConfig {
            // A name a `[[limits]]` entry cannot take (`:` is refused there), so a key's own
            // counters are never shared with one.
            name: Some("own".into()),
            scope: "api_key".into(),
            requests_per_minute: l.requests_per_minute,
            tokens_per_minute: l.tokens_per_minute,
            spend_per_day: l.spend_per_day,
            spend_per_month: l.spend_per_month,
        };
        let mut own = Limits::new(&[config]).ok()?;
        own.limits[0].name = OWN_KEY_LIMIT.into();
        Some(own)
    }

    /// The charges a request makes: for each limit whose scope it falls in, each measure.
    pub(crate) fn charges(
        &self,
        api_key_id: Option<&str>,
        metadata: &CallerMetadata,
        reserve: Usage,
        now: DateTime<Utc>,
    ) -> Vec<Charge> {
        let mut charges = Vec::new();
        for limit in &self.limits {
            let Some(scope_value) = scope_value(&limit.scope, api_key_id, metadata) else {
                continue;
            };
            for &(measure, max) in &limit.rules {
                let (period, left) = period(measure, now);
                let amount = match measure {
                    Measure::Requests => 1,
                    Measure::Tokens => reserve.tokens,
                    Measure::SpendDay | Measure::SpendMonth => reserve.spend_nanos,
                };
                charges.push(Charge {
                    key: format!("{}:{scope_value}:{}{period}", limit.name, measure.name()),
                    measure,
                    limit: max,
                    amount,
                    describe: format!(
                        "limit `{}` ({} = {}, {scope_value})",
                        limit.name,
                        measure.name(),
                        shown(measure, max)
                    ),
                    period_left_secs: left,
                });
            }
        }
        charges
    }
}

fn shown(measure: Measure, max: i64) -> String {
    match measure {
        Measure::SpendDay | Measure::SpendMonth => crate::pricing::from_nanos(max).to_string(),
        _ => max.to_string(),
    }
}

/// The counter suffix of a spend limit's period (`:d20261207`, `:m202612`) and the seconds
/// left in it.
fn period(measure: Measure, now: DateTime<Utc>) -> (String, i64) {
    let day = now.date_naive();
    let end = match measure {
        Measure::SpendDay => day.succ_opt().unwrap_or(day),
        Measure::SpendMonth => {
            let (y, m) =
                if day.month() == 12 { (day.year() + 1, 1) } else { (day.year(), day.month() + 1) };
            chrono::NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(day + Days::days(31))
        }
        _ => return (String::new(), WINDOW_SECS),
    };
    let end = Utc.from_utc_datetime(&end.and_hms_opt(0, 0, 0).unwrap_or_default());
    let left = (end - now).num_seconds().max(1);
    let name = match measure {
        Measure::SpendDay => format!(":d{}", day.format("%Y%m%d")),
        _ => format!(":m{}", day.format("%Y%m")),
    };
    (name, left)
}

fn scope_value(
    scope: &Scope,
    api_key_id: Option<&str>,
    metadata: &CallerMetadata,
) -> Option<String> {
    match scope {
        Scope::All => Some("all".into()),
        Scope::ApiKey => api_key_id.map(|id| format!("api_key={id}")),
        Scope::Metadata { key, value } => {
            let (_, found) = metadata.labels().find(|(k, _)| k == key)?;
            match value {
                Some(wanted) if *wanted != found => None,
                _ => Some(format!("metadata.{key}={found}")),
            }
        }
    }
}

fn compile(index: usize, config: &LimitConfig) -> Result<Limit, ConfigError> {
    let path = format!("limits[{index}]");
    let name = config.name.clone().unwrap_or_else(|| path.clone());
    if name.is_empty() || name.contains(':') {
        return Err(ConfigError::new(format!("{path}.name"), "must be non-empty, without `:`"));
    }
    let scope = match config.scope.as_str() {
        "all" => Scope::All,
        "api_key" => Scope::ApiKey,
        other => match other.strip_prefix("metadata.") {
            Some(rest) if !rest.is_empty() => match rest.split_once('=') {
                Some((key, value)) if !key.is_empty() => {
                    Scope::Metadata { key: key.into(), value: Some(value.into()) }
                }
                Some(_) => return Err(bad_scope(&path, other)),
                None => Scope::Metadata { key: rest.into(), value: None },
            },
            _ => return Err(bad_scope(&path, other)),
        },
    };
    let nanos = crate::pricing::to_nanos;
    let rules: Vec<(Measure, i64)> = [
        (Measure::Requests, config.requests_per_minute.map(|v| v as i64)),
        (Measure::Tokens, config.tokens_per_minute.map(|v| v as i64)),
        (Measure::SpendDay, config.spend_per_day.map(nanos)),
        (Measure::SpendMonth, config.spend_per_month.map(nanos)),
    ]
    .into_iter()
    .filter_map(|(measure, max)| Some((measure, max?)))
    .collect();
    if rules.is_empty() {
        return Err(ConfigError::new(
            path,
            "sets no limit: give requests_per_minute, tokens_per_minute, spend_per_day or spend_per_month",
        ));
    }
    if let Some((measure, _)) = rules.iter().find(|(_, max)| *max <= 0) {
        return Err(ConfigError::new(format!("{path}.{}", measure.name()), "must be positive"));
    }
    Ok(Limit { name, scope, rules })
}

fn bad_scope(path: &str, scope: &str) -> ConfigError {
    ConfigError::new(
        format!("{path}.scope"),
        format!("`{scope}` is not `all`, `api_key`, `metadata.<key>` or `metadata.<key>=<value>`"),
    )
}

/// The name of an API key's own limits in counters and refusals.
const OWN_KEY_LIMIT: &str = "key:own";

/// Output tokens reserved for a request that sets no `max_tokens`.
const DEFAULT_RESERVED_OUTPUT: u64 = 4_096;

/// Admits `request` under every limit whose scope it falls in, reserving its most (see the
/// module's notes); an empty reservation when no limit applies.
pub(crate) async fn admit(
    inner: &Inner,
    request: &CanonicalRequest,
    caller: &Caller,
    metadata: &CallerMetadata,
    prices: &Prices,
) -> Result<Reservation, LimitError> {
    if inner.limits.is_empty() && caller.key.is_none() {
        return Ok(Reservation::default());
    }
    // Each token is at least one byte of the request's text, so its JSON bounds the prompt.
    let input = serde_json::to_vec(request).map_or(0, |json| json.len()) as u64;
    let output = request.max_tokens.map_or(DEFAULT_RESERVED_OUTPUT, u64::from);
    let most = TokenUsage { input_tokens: input, output_tokens: output, cached_input_tokens: 0 };
    let reserve = Usage {
        tokens: i64::try_from(most.total_tokens()).unwrap_or(i64::MAX),
        spend_nanos: prices.cost(&most).map_or(0, to_nanos),
    };
    admit_usage(inner, caller, metadata, reserve).await
}

/// Admits a request reserving `reserve` (nothing but the request itself for embeddings and
/// Python predictions, whose use is not known up front: they count against request limits,
/// and an exhausted token or spend limit refuses them too).
pub(crate) async fn admit_usage(
    inner: &Inner,
    caller: &Caller,
    metadata: &CallerMetadata,
    reserve: Usage,
) -> Result<Reservation, LimitError> {
    let key = caller.key.as_deref();
    let key_limits = key.and_then(Limits::of_key);
    if inner.limits.is_empty() && key_limits.is_none() {
        return Ok(Reservation::default());
    }
    let now = Utc::now();
    let key_id = key.map(|key| key.id.as_str()).or(caller.api_key_id.as_deref());
    let mut charges = inner.limits.charges(key_id, metadata, reserve, now);
    if let Some(own) = key_limits {
        charges.extend(own.charges(key_id, metadata, reserve, now));
    }
    if charges.is_empty() {
        return Ok(Reservation::default());
    }
    inner.limiter.admit(charges, now).await
}

impl Usage {
    /// What a run used, from its ledger record (a run without prices costs nothing here).
    pub fn of(record: &LedgerRecord) -> Self {
        let tokens = record.input_tokens.saturating_add(record.output_tokens);
        Self {
            tokens: i64::try_from(tokens).unwrap_or(i64::MAX),
            spend_nanos: record.cost.map_or(0, to_nanos),
        }
    }
}

/// What settling changes on each counter: the difference between use and reservation.
pub(crate) fn settlement(charge: &Charge, used: Usage) -> i64 {
    match charge.measure {
        Measure::Requests => 0,
        Measure::Tokens => used.tokens - charge.amount,
        Measure::SpendDay | Measure::SpendMonth => used.spend_nanos - charge.amount,
    }
}

/// Seconds until a window whose buckets (second, amount) hold `sum` can take `amount` more
/// under `limit`: when enough of its oldest buckets have left the window.
pub(crate) fn window_wait(
    mut buckets: Vec<(i64, i64)>,
    sum: i64,
    amount: i64,
    limit: i64,
    now: i64,
) -> i64 {
    buckets.sort_unstable();
    let mut excess = sum + amount - limit;
    for (second, value) in buckets {
        excess -= value;
        if excess <= 0 {
            return (second + WINDOW_SECS - now).max(1);
        }
    }
    WINDOW_SECS
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(scope: &str) -> LimitConfig {
        LimitConfig {
            name: Some("l".into()),
            scope: scope.into(),
            requests_per_minute: Some(10),
            tokens_per_minute: None,
            spend_per_day: Some("1.5".parse().unwrap()),
            spend_per_month: None,
        }
    }

    #[test]
    fn scopes_pick_the_requests_they_limit() {
        let now = Utc.with_ymd_and_hms(2026, 12, 31, 23, 0, 0).unwrap();
        let red = CallerMetadata::from_json(&json!({"team": "red"})).unwrap();
        let none = CallerMetadata::default();
        let reserve = Usage { tokens: 5, spend_nanos: 7 };
        let each_team = Limits::new(&[config("metadata.team")]).unwrap();
        let charges = each_team.charges(None, &red, reserve, now);
        assert_eq!(charges.len(), 2);
        assert_eq!(charges[0].key, "l:metadata.team=red:requests_per_minute");
        assert_eq!(charges[1].key, "l:metadata.team=red:spend_per_day:d20261231");
        assert_eq!(
            (charges[1].amount, charges[1].limit, charges[1].period_left_secs),
            (7, 1_500_000_000, 3_600)
        );
        assert!(each_team.charges(None, &none, reserve, now).is_empty());
        let blue_only = Limits::new(&[config("metadata.team=blue")]).unwrap();
        assert!(blue_only.charges(None, &red, reserve, now).is_empty());
        let keys = Limits::new(&[config("api_key")]).unwrap();
        assert!(keys.charges(None, &red, reserve, now).is_empty());
        assert_eq!(
            keys.charges(Some("k1"), &none, reserve, now)[0].key,
            "l:api_key=k1:requests_per_minute"
        );
        assert_eq!(
            Limits::new(&[config("all")]).unwrap().charges(None, &none, reserve, now).len(),
            2
        );
    }

    #[test]
    fn bad_limits_are_refused_with_their_path() {
        let err = Limits::new(&[config("team")]).unwrap_err();
        assert_eq!(err.path, "limits[0].scope");
        let mut none = config("all");
        none.requests_per_minute = None;
        none.spend_per_day = None;
        assert_eq!(Limits::new(&[none]).unwrap_err().path, "limits[0]");
        let mut zero = config("all");
        zero.requests_per_minute = Some(0);
        assert_eq!(Limits::new(&[zero]).unwrap_err().path, "limits[0].requests_per_minute");
    }

    #[test]
    fn the_wait_is_until_enough_old_buckets_leave_the_window() {
        // 10 at t=100 and 5 at t=130 under a limit of 15: one more needs the first bucket gone.
        assert_eq!(window_wait(vec![(130, 5), (100, 10)], 15, 1, 15, 140), 20);
        assert_eq!(window_wait(vec![(100, 10), (130, 5)], 15, 11, 15, 140), 50);
    }
}
