//! The Lua scripts that change a run in Redis. Each runs atomically on the server, so a check and
//! the write it guards (an append only while the run is running; ending an orphan only while its
//! producer's lease is gone) can never interleave with another replica's.

use std::sync::LazyLock;

use redis::Script;

/// KEYS: run hash, running hash (run id → owner). ARGV: run id, model, owner replica, created
/// (ms), ledger record, safety expiry (ms). Returns 0 when the run already exists.
pub(super) static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'model', ARGV[2], 'owner', ARGV[3], 'status', 'running',
    'created_ms', ARGV[4], 'len', 0, 'subs', 0, 'delivered', 0, 'record', ARGV[5])
-- A safety net: a run whose end never reached Redis still goes, a day later.
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1",
    )
});

/// KEYS: run hash, events stream. ARGV: the event's JSON, safety expiry (ms). Returns
/// `{seq, cancel}`: the event's sequence number and whether a cancel was asked for (so a
/// cancel whose message was lost still arrives), or `{-1}` when the run does not exist, `{-2}`
/// when it has ended (another replica ended it).
pub(super) static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {-1} end
if status ~= 'running' then return {-2} end
local n = redis.call('HINCRBY', KEYS[1], 'len', 1)
redis.call('XADD', KEYS[2], '0-' .. n, 'e', ARGV[1])
if n == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
local cancel = redis.call('HGET', KEYS[1], 'cancel') and 1 or 0
return {n - 1, cancel}",
    )
});

/// KEYS: run hash, events stream, running hash. ARGV: run id, status, finished (ms), ttl (ms),
/// owner. Returns the run's hash after the change; empty when the run does not exist, or when
/// it is no longer this owner's running run (another replica ended it: its end stands).
pub(super) static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return {} end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[5] then return {} end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_ms', ARGV[3])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return redis.call('HGETALL', KEYS[1])",
    )
});

/// Ends a run whose producer has disappeared: appends `ARGV[2]` (an error event) after its last
/// event and marks it failed, only if it is still running, still owned by `ARGV[5]`, and that
/// owner's lease (`KEYS[4]`) is gone. KEYS: run hash, events stream, running hash, owner lease.
/// ARGV: run id, error event JSON, finished (ms), ttl (ms), owner. Returns the run's hash when
/// it ended the run (exactly one replica ever does), else an empty array.
pub(super) static REAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then
    redis.call('HDEL', KEYS[3], ARGV[1])
    return {}
end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[5] then return {} end
if redis.call('EXISTS', KEYS[4]) == 1 then return {} end
local n = redis.call('HINCRBY', KEYS[1], 'len', 1)
redis.call('XADD', KEYS[2], '0-' .. n, 'e', ARGV[2])
redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_ms', ARGV[3])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return redis.call('HGETALL', KEYS[1])",
    )
});

/// Changes one field of a run's hash only while the run exists, so that a late reader never
/// recreates an expired run. KEYS: run hash. ARGV: field, `incr` or `set`, value.
pub(super) static UPDATE_FIELD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[2] == 'incr' then
    redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[3])
else
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
return 1",
    )
});
