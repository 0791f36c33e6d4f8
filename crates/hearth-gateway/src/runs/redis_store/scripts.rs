//! The Lua scripts that change a run in Redis. Each runs atomically on the server, so a check and
//! the write it guards (an append only while the run is running; ending an orphan only while its
//! producer's lease is gone) can never interleave with another replica's.

use std::sync::LazyLock;

use redis::Script;

/// KEYS: run hash, running hash (run id → owner). ARGV: run id, model, owner replica, created
/// (ms), ledger record. Returns 0 when the run already exists.
pub(super) static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'model', ARGV[2], 'owner', ARGV[3], 'status', 'running',
    'created_ms', ARGV[4], 'len', 0, 'subs', 0, 'delivered', 0, 'record', ARGV[5])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1",
    )
});

/// KEYS: run hash, events stream. ARGV: the event's JSON. Returns the event's sequence number,
/// -1 when the run does not exist, -2 when it has ended.
pub(super) static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status ~= 'running' then return -2 end
local n = redis.call('HINCRBY', KEYS[1], 'len', 1)
redis.call('XADD', KEYS[2], '0-' .. n, 'e', ARGV[1])
return n - 1",
    )
});

/// KEYS: run hash, events stream, running hash. ARGV: run id, status, finished (ms), ttl (ms).
/// Returns the run's hash after the change (empty when the run does not exist).
pub(super) static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
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
/// ARGV: run id, error event JSON, finished (ms), ttl (ms), owner. Returns 1 when it ended the
/// run: exactly one replica ever does.
pub(super) static REAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then
    redis.call('HDEL', KEYS[3], ARGV[1])
    return 0
end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[5] then return 0 end
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
local n = redis.call('HINCRBY', KEYS[1], 'len', 1)
redis.call('XADD', KEYS[2], '0-' .. n, 'e', ARGV[2])
redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_ms', ARGV[3])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1",
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
