//! What Hearth keeps of a request beyond its billing record.
//!
//! By default: the ledger record (what billing and `/v1/usage` need) and the run's events for
//! the resume window (`[gateway] run_ttl_secs`), never the request or the answer themselves.
//! `[logging] payloads = true`, or a request's `x-hearth-collect-log-payload: true`, also
//! stores the request and its answer beside the ledger record, until retention deletes them
//! (by age and by count, oldest first). `x-hearth-collect-log: false` keeps nothing beyond
//! the ledger record: no payload, no response-cache entry, and the run's events go as soon as
//! its caller has read them.
//!
//! What a payload holds is Hearth's canonical form of the request and of the answer, the same
//! for every wire format: never a provider key (those live in the daemon's environment, not in
//! requests), and a Python predictor's `Secret` inputs are replaced by `**********`
//! ([`hearth_python::protocol::REDACTED`]).

use std::time::Duration;

use serde::Deserialize;

/// What the caller asked to be kept of one request (`x-hearth-collect-log`,
/// `x-hearth-collect-log-payload`); `None` leaves it to `[logging]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// `Some(false)`: keep nothing beyond the request's ledger record.
    pub collect: Option<bool>,
    /// Store (or not) the request and its answer, whatever `[logging] payloads` says.
    pub payload: Option<bool>,
}

/// `[logging]` in `hearth.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSettings {
    /// Store every request's payloads unless the request says otherwise (off by default).
    pub payloads: bool,
    /// Payloads older than this many seconds are deleted (0: no age limit). Default 7 days.
    pub payload_max_age_secs: u64,
    /// At most this many payloads are kept; the oldest go first (0: no limit).
    pub max_payloads: u64,
}

impl Default for LoggingSettings {
    fn default() -> Self {
        Self { payloads: false, payload_max_age_secs: 7 * 24 * 3600, max_payloads: 10_000 }
    }
}

impl LoggingSettings {
    pub(crate) fn retention(&self) -> PayloadRetention {
        PayloadRetention {
            max_age: (self.payload_max_age_secs > 0)
                .then(|| Duration::from_secs(self.payload_max_age_secs)),
            max_count: (self.max_payloads > 0).then_some(self.max_payloads),
        }
    }

    /// What a run keeps, from the caller's options and these settings.
    pub(crate) fn keep(&self, asked: LogOptions) -> Keep {
        let collect = asked.collect.unwrap_or(true);
        Keep { collect, payload: collect && asked.payload.unwrap_or(self.payloads) }
    }
}

/// How long stored payloads last.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PayloadRetention {
    pub max_age: Option<Duration>,
    pub max_count: Option<u64>,
}

/// What one run keeps, decided when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Keep {
    /// `false`: nothing beyond the ledger record.
    pub collect: bool,
    pub payload: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_kept_only_when_asked_and_never_when_logging_is_off() {
        let off = LoggingSettings::default();
        let on = LoggingSettings { payloads: true, ..LoggingSettings::default() };
        let ask = |collect, payload| LogOptions { collect, payload };
        assert_eq!(off.keep(ask(None, None)), Keep { collect: true, payload: false });
        assert_eq!(off.keep(ask(None, Some(true))), Keep { collect: true, payload: true });
        assert_eq!(on.keep(ask(None, None)), Keep { collect: true, payload: true });
        assert_eq!(on.keep(ask(None, Some(false))), Keep { collect: true, payload: false });
        assert_eq!(on.keep(ask(Some(false), Some(true))), Keep { collect: false, payload: false });
    }

    #[test]
    fn retention_zero_means_no_limit() {
        let none = LoggingSettings { payload_max_age_secs: 0, max_payloads: 0, payloads: true };
        assert_eq!(none.retention(), PayloadRetention::default());
    }
}
