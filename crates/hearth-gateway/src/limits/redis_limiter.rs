//! Counters in Redis, exact across replicas: one script checks every counter a request touches
//! and charges them all, or none, atomically on the server.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use redis::Script;

use super::{settlement, Charge, LimitError, Limiter, Measure, Reservation, Usage, WINDOW_SECS};

/// KEYS: one counter per charge. ARGV: the caller's clock (s, unused: Redis's own clock is
/// the one every replica shares), window length (s), then per charge: `w` (window hash of
/// second → amount) or `p` (period total), limit, amount, period seconds left.
/// Returns `{0, now}` when admitted and charged (`now`: the second charged, for settling),
/// else `{i, wait}` for the first refusing counter (`wait` = -1 when the amount alone exceeds
/// the limit).
static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local now = tonumber(redis.call('TIME')[1])
local span = tonumber(ARGV[2])
for i = 1, #KEYS do
    local kind, limit, amount = ARGV[i * 4 - 1], tonumber(ARGV[i * 4]), tonumber(ARGV[i * 4 + 1])
    if amount > limit then return {i, -1} end
    if kind == 'w' then
        local all = redis.call('HGETALL', KEYS[i])
        local sum, buckets = 0, {}
        for j = 1, #all, 2 do
            local second, value = tonumber(all[j]), tonumber(all[j + 1])
            if second <= now - span then
                redis.call('HDEL', KEYS[i], all[j])
            else
                sum = sum + value
                table.insert(buckets, {second, value})
            end
        end
        if sum + amount > limit then
            table.sort(buckets, function(a, b) return a[1] < b[1] end)
            local excess = sum + amount - limit
            for _, bucket in ipairs(buckets) do
                excess = excess - bucket[2]
                if excess <= 0 then return {i, math.max(1, bucket[1] + span - now)} end
            end
            return {i, span}
        end
    else
        local used = tonumber(redis.call('GET', KEYS[i]) or '0')
        if used + amount > limit then return {i, math.max(1, tonumber(ARGV[i * 4 + 2]))} end
    end
end
for i = 1, #KEYS do
    local kind, amount = ARGV[i * 4 - 1], ARGV[i * 4 + 1]
    if kind == 'w' then
        redis.call('HINCRBY', KEYS[i], now, amount)
        redis.call('EXPIRE', KEYS[i], span * 2)
    else
        redis.call('INCRBY', KEYS[i], amount)
        redis.call('EXPIRE', KEYS[i], tonumber(ARGV[i * 4 + 2]) + 3600)
    end
end
return {0, now}",
    )
});

/// KEYS: counters. ARGV: second of admission, then per counter: `w` or `p`, change.
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
for i = 1, #KEYS do
    local kind, change = ARGV[i * 2], ARGV[i * 2 + 1]
    if redis.call('EXISTS', KEYS[i]) == 1 then
        if kind == 'w' then
            redis.call('HINCRBY', KEYS[i], ARGV[1], change)
        else
            redis.call('INCRBY', KEYS[i], change)
        end
    end
end
return 0",
    )
});

pub struct RedisLimiter {
    conn: ConnectionManager,
    prefix: String,
    fail_open: bool,
}

fn kind(charge: &Charge) -> &'static str {
    match charge.measure {
        Measure::Requests | Measure::Tokens => "w",
        Measure::SpendDay | Measure::SpendMonth => "p",
    }
}

impl RedisLimiter {
    /// Counters under `prefix` (`{prefix}limit:…`); `fail_open` admits requests while Redis
    /// cannot be reached, else they are refused.
    pub fn new(conn: ConnectionManager, prefix: &str, fail_open: bool) -> Self {
        Self { conn, prefix: format!("{prefix}limit:"), fail_open }
    }
}

#[async_trait::async_trait]
impl Limiter for RedisLimiter {
    async fn admit(
        &self,
        charges: Vec<Charge>,
        now: DateTime<Utc>,
    ) -> Result<Reservation, LimitError> {
        let now = now.timestamp();
        if charges.is_empty() {
            return Ok(Reservation { charges, at_sec: now });
        }
        let mut invocation = ADMIT.prepare_invoke();
        invocation.arg(now).arg(WINDOW_SECS);
        for charge in &charges {
            invocation.key(format!("{}{}", self.prefix, charge.key));
            invocation
                .arg(kind(charge))
                .arg(charge.limit)
                .arg(charge.amount)
                .arg(charge.period_left_secs);
        }
        let answer: redis::RedisResult<Vec<i64>> =
            invocation.invoke_async(&mut self.conn.clone()).await;
        match answer.as_deref() {
            Ok([0, charged_at]) => Ok(Reservation { charges, at_sec: *charged_at }),
            Ok([i, wait]) => {
                let charge = &charges[(*i as usize).saturating_sub(1).min(charges.len() - 1)];
                if *wait < 0 {
                    Err(LimitError::TooLarge {
                        limit: charge.describe.clone(),
                        amount: charge.amount,
                    })
                } else {
                    Err(LimitError::Exceeded {
                        limit: charge.describe.clone(),
                        retry_after_secs: *wait as u64,
                    })
                }
            }
            Ok(other) => Err(LimitError::Unavailable(format!("unexpected answer {other:?}"))),
            Err(error) if self.fail_open => {
                tracing::warn!(%error, "limits unchecked: Redis is unreachable and limits fail open");
                Ok(Reservation::default())
            }
            Err(error) => Err(LimitError::Unavailable(error.to_string())),
        }
    }

    async fn settle(&self, reservation: &Reservation, used: Usage) {
        let changes: Vec<(&Charge, i64)> = reservation
            .charges
            .iter()
            .map(|c| (c, settlement(c, used)))
            .filter(|(_, change)| *change != 0)
            .collect();
        if changes.is_empty() {
            return;
        }
        let mut invocation = SETTLE.prepare_invoke();
        invocation.arg(reservation.at_sec);
        for (charge, change) in changes {
            invocation.key(format!("{}{}", self.prefix, charge.key));
            invocation.arg(kind(charge)).arg(change);
        }
        let done: redis::RedisResult<i64> = invocation.invoke_async(&mut self.conn.clone()).await;
        if let Err(error) = done {
            tracing::warn!(%error, "could not settle a run's reservation in Redis");
        }
    }

    fn failure_mode(&self) -> &'static str {
        if self.fail_open {
            "open"
        } else {
            "closed"
        }
    }
}
