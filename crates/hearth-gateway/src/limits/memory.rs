//! Counters in this process, for a daemon serving alone.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use super::{
    settlement, window_wait, Charge, LimitError, Limiter, Measure, Reservation, Usage, WINDOW_SECS,
};

#[derive(Default)]
pub struct MemoryLimiter {
    counters: Mutex<HashMap<String, Counter>>,
}

enum Counter {
    /// Amounts by second, the last [`WINDOW_SECS`] of them.
    Window(HashMap<i64, i64>),
    /// A spend period's total; dropped once its period is over.
    Total { used: i64, ends_at: i64 },
}

impl Counter {
    fn new(charge: &Charge, now: i64) -> Self {
        match charge.measure {
            Measure::Requests | Measure::Tokens => Self::Window(HashMap::new()),
            Measure::SpendDay | Measure::SpendMonth => {
                Self::Total { used: 0, ends_at: now + charge.period_left_secs }
            }
        }
    }

    /// Whether `amount` more fits under `limit`; when not, the seconds to wait (`None`: never).
    fn check(&mut self, amount: i64, limit: i64, now: i64) -> Result<(), Option<i64>> {
        if amount > limit {
            return Err(None);
        }
        match self {
            Self::Window(buckets) => {
                buckets.retain(|second, _| *second > now - WINDOW_SECS);
                let sum: i64 = buckets.values().sum();
                if sum + amount > limit {
                    let buckets = buckets.iter().map(|(s, v)| (*s, *v)).collect();
                    return Err(Some(window_wait(buckets, sum, amount, limit, now)));
                }
            }
            Self::Total { used, ends_at } => {
                if *used + amount > limit {
                    return Err(Some((*ends_at - now).max(1)));
                }
            }
        }
        Ok(())
    }

    fn add(&mut self, second: i64, amount: i64) {
        match self {
            Self::Window(buckets) => *buckets.entry(second).or_default() += amount,
            Self::Total { used, .. } => *used += amount,
        }
    }
}

#[async_trait::async_trait]
impl Limiter for MemoryLimiter {
    async fn admit(
        &self,
        charges: Vec<Charge>,
        now: DateTime<Utc>,
    ) -> Result<Reservation, LimitError> {
        let now = now.timestamp();
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        // Spend totals whose period is over, and windows with nothing left in them: callers
        // choose scope values (metadata), so counters must not pile up.
        counters.retain(|_, counter| match counter {
            Counter::Total { ends_at, .. } => *ends_at > now,
            Counter::Window(buckets) => {
                buckets.retain(|second, _| *second > now - WINDOW_SECS);
                !buckets.is_empty()
            }
        });
        for charge in &charges {
            let counter =
                counters.entry(charge.key.clone()).or_insert_with(|| Counter::new(charge, now));
            match counter.check(charge.amount, charge.limit, now) {
                Ok(()) => {}
                Err(None) => {
                    return Err(LimitError::TooLarge {
                        limit: charge.describe.clone(),
                        amount: charge.amount,
                    })
                }
                Err(Some(wait)) => {
                    return Err(LimitError::Exceeded {
                        limit: charge.describe.clone(),
                        retry_after_secs: wait as u64,
                    })
                }
            }
        }
        for charge in &charges {
            if let Some(counter) = counters.get_mut(&charge.key) {
                counter.add(now, charge.amount);
            }
        }
        Ok(Reservation { charges, at_sec: now })
    }

    async fn settle(&self, reservation: &Reservation, used: Usage) {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        for charge in &reservation.charges {
            let change = settlement(charge, used);
            if let (Some(counter), true) = (counters.get_mut(&charge.key), change != 0) {
                counter.add(reservation.at_sec, change);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn charge(measure: Measure, limit: i64, amount: i64) -> Charge {
        Charge {
            key: format!("k:{measure:?}"),
            measure,
            limit,
            amount,
            describe: "limit `k`".into(),
            period_left_secs: 3_600,
        }
    }

    #[tokio::test]
    async fn a_window_admits_up_to_its_limit_then_frees_as_seconds_pass() {
        let limiter = MemoryLimiter::default();
        let t0 = Utc.timestamp_opt(1_000, 0).unwrap();
        for _ in 0..3 {
            limiter.admit(vec![charge(Measure::Requests, 3, 1)], t0).await.unwrap();
        }
        let refused = limiter.admit(vec![charge(Measure::Requests, 3, 1)], t0).await.unwrap_err();
        assert_eq!(refused.retry_after_secs(), 60);
        let later = Utc.timestamp_opt(1_060, 0).unwrap();
        assert!(limiter.admit(vec![charge(Measure::Requests, 3, 1)], later).await.is_ok());
    }

    #[tokio::test]
    async fn a_refusal_charges_nothing_and_settling_returns_the_unused_reservation() {
        let limiter = MemoryLimiter::default();
        let now = Utc.timestamp_opt(1_000, 0).unwrap();
        let spend = || charge(Measure::SpendDay, 100, 60);
        let tokens = || charge(Measure::Tokens, 1_000, 10);
        let first = limiter.admit(vec![tokens(), spend()], now).await.unwrap();
        // The spend counter refuses, so the tokens counter is not charged either.
        assert!(limiter.admit(vec![tokens(), spend()], now).await.is_err());
        limiter.settle(&first, Usage { tokens: 4, spend_nanos: 20 }).await;
        let second = limiter.admit(vec![tokens(), spend()], now).await.unwrap();
        limiter.settle(&second, Usage { tokens: 4, spend_nanos: 20 }).await;
        let counters = limiter.counters.lock().unwrap();
        match (&counters["k:Tokens"], &counters["k:SpendDay"]) {
            (Counter::Window(b), Counter::Total { used, .. }) => {
                assert_eq!((b[&1_000], *used), (8, 40));
            }
            _ => panic!("wrong counter kinds"),
        }
    }

    #[tokio::test]
    async fn a_request_larger_than_the_limit_is_told_so() {
        let limiter = MemoryLimiter::default();
        let now = Utc.timestamp_opt(1_000, 0).unwrap();
        let err = limiter.admit(vec![charge(Measure::Tokens, 10, 11)], now).await.unwrap_err();
        assert!(matches!(err, LimitError::TooLarge { amount: 11, .. }), "{err:?}");
    }
}
