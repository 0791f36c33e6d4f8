//! The Lua scripts that change a run in Redis. Each runs atomically on the server, so a check and
//! the write it guards (an append only while the run is running; ending an orphan only while its
//! producer's lease is gone) can never interleave with another replica's.

use std::sync::LazyLock;

use redis::Script;

/// Writes one batch of changes to many runs (see `writer.rs`).
///
/// KEYS: the running hash (run id → owner), then each run's hash and events Stream. ARGV: the
/// owner replica, now (ms), the ttl of an ended run (ms), the safety expiry (ms); then for each
/// run the batch's changes to it, gathered by the writer into eleven arguments:
/// 1. its id;
/// 2. `1` to create the run (it then expires after the safety expiry, in case its end never
///    reaches Redis), else empty;
/// 3. the model and 4. the ledger record to write should the producer disappear (creation;
///    empty when the same batch ends the run, which then never needs it);
/// 5. its route, empty when not set by this batch, and 6. its stream format (creation);
/// 7. the sequence number of its first event in the batch (empty with no events; `-1` when the
///    batch's events do not follow each other) and 8. how many there are: they are written
///    only if the run holds exactly that many events already (an earlier batch that failed
///    leaves a gap no later event may cross);
/// 9. the events, as one JSON array. They go in one Stream entry (field `e`) whose id is
///    `0-{n}` for `n` the run's events after it: reading from event `N` on is `XREAD … 0-N`,
///    and the reader skips the first entry's events before `N`;
/// 10. the status it ends with (failed after a gap), empty while it runs on; an ended run
///     expires after the ttl, or after 11. this many ms when not empty (a run whose caller
///     asked that nothing be kept; stored as `keep` at creation, for whichever replica ends it).
///
/// Each run's share is written with as few commands as it allows (at most one `XADD` and one
/// `HSET`), and its arguments are few and fixed: Redis's time per run is mostly the cost of
/// each command and argument. Events and the end are written only while the run is running and
/// this replica's. Returns, for each run, `{state, cancel, ended}`: state 0 when written, -1
/// when Redis does not hold the run, -2 when it is no longer this replica's running run
/// (another replica ended it: its end stands), -3 when the id was taken, -4 when a command
/// failed (the other runs of the batch are written all the same), -5 when an event would have
/// left a gap; cancel 1 when a cancel was asked for (so a cancel whose message was lost still
/// arrives); ended, when this batch ended the run, `{subs, delivered}` (its readers on other
/// replicas), else empty.
pub(super) static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local running, owner, now, ttl, safety = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]

-- Writes one run's share of the batch, its arguments from ARGV[a] on (listed above).
local function apply(hash, events, a)
    local id, create, route, format = ARGV[a], ARGV[a + 1] == '1', ARGV[a + 4], ARGV[a + 5]
    local first, count, status = tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7]), ARGV[a + 9]
    local keep = ARGV[a + 10] ~= '' and ARGV[a + 10] or ttl
    local fields, len, cancel, readers = {}, 0, 0, {0, 0}
    if route ~= '' then fields[#fields + 1] = 'route'; fields[#fields + 1] = route end
    if format ~= '' then fields[#fields + 1] = 'format'; fields[#fields + 1] = format end
    if create then
        if redis.call('EXISTS', hash) == 1 then return -3, 0, {} end
        for _, v in ipairs({'model', ARGV[a + 2], 'owner', owner, 'status', 'running',
                'created_ms', now, 'subs', 0, 'delivered', 0}) do
            fields[#fields + 1] = v
        end
        if ARGV[a + 3] ~= '' then fields[#fields + 1] = 'record'; fields[#fields + 1] = ARGV[a + 3] end
        if ARGV[a + 10] ~= '' then fields[#fields + 1] = 'keep'; fields[#fields + 1] = ARGV[a + 10] end
    else
        local held = redis.call('HMGET', hash, 'status', 'owner', 'len', 'cancel', 'subs',
            'delivered')
        if not held[1] then
            -- A field alone for a run Redis lacks (its creation's batch failed, or it expired)
            -- is dropped quietly, as before: only events and ends need the run.
            if count == 0 and status == '' then return 0, 0, {} end
            return -1, 0, {}
        end
        if held[1] ~= 'running' or held[2] ~= owner then
            -- Not this replica's running run: its fields may still be set, nothing else.
            if #fields > 0 then redis.call('HSET', hash, unpack(fields)) end
            if count > 0 or status ~= '' then return -2, 0, {} end
            return 0, 0, {}
        end
        len = tonumber(held[3])
        if held[4] then cancel = 1 end
        readers = {tonumber(held[5]) or 0, tonumber(held[6]) or 0}
    end
    local gap, before = false, len
    if count > 0 then
        if first ~= len then
            gap = true
        else
            len = len + count
            redis.call('XADD', events, '0-' .. len, 'e', ARGV[a + 8])
        end
    end
    if len ~= before or create then
        fields[#fields + 1] = 'len'
        fields[#fields + 1] = len
    end
    if status ~= '' then
        fields[#fields + 1] = 'status'
        fields[#fields + 1] = gap and 'failed' or status
        fields[#fields + 1] = 'finished_ms'
        fields[#fields + 1] = now
    end
    if #fields > 0 then redis.call('HSET', hash, unpack(fields)) end
    local ended = {}
    if status ~= '' then
        if not create then redis.call('HDEL', running, id) end
        redis.call('PEXPIRE', hash, keep)
        if len > 0 then redis.call('PEXPIRE', events, keep) end
        ended = readers
    else
        if create then
            redis.call('HSET', running, id, owner)
            redis.call('PEXPIRE', hash, safety)
        end
        if before == 0 and len > 0 then redis.call('PEXPIRE', events, safety) end
    end
    if gap then return -5, cancel, ended end
    return 0, cancel, ended
end

local out, runs, per_run = {}, (#KEYS - 1) / 2, 11
if #ARGV ~= 4 + runs * per_run then
    return redis.error_reply('WRITE: ' .. #ARGV .. ' arguments for ' .. runs .. ' runs')
end
for r = 1, runs do
    local first_arg = 5 + (r - 1) * per_run
    local ok, state, cancel, ended = pcall(apply, KEYS[2 * r], KEYS[2 * r + 1], first_arg)
    if not ok then state, cancel, ended = -4, 0, {} end
    out[r] = {state, cancel, ended}
end
return out",
    )
});

/// Ends a run whose producer has disappeared: appends `ARGV[2]` (an error event) after its last
/// event and marks it failed, only if it is still running, still owned by `ARGV[5]`, and that
/// owner's lease (`KEYS[4]`) is gone. KEYS: run hash, events stream, running hash, owner lease.
/// ARGV: run id, error event JSON, finished (ms), ttl (ms), owner. The run's keys expire after
/// the ttl, or after its own `keep` (a run whose caller asked that nothing be kept). Returns the
/// run's hash when it ended the run (exactly one replica ever does), else an empty array.
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
redis.call('XADD', KEYS[2], '0-' .. n, 'e', '[' .. ARGV[2] .. ']')
redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_ms', ARGV[3])
redis.call('HDEL', KEYS[3], ARGV[1])
local keep = redis.call('HGET', KEYS[1], 'keep') or ARGV[4]
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[2], keep)
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
