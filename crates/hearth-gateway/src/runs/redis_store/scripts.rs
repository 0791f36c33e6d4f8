//! The Lua scripts that change a run in Redis. Each runs atomically on the server, so a check and
//! the write it guards (an append only while the run is running; ending an orphan only while its
//! producer's lease is gone) can never interleave with another replica's.

use std::sync::LazyLock;

use redis::Script;

/// Writes one batch of changes to many runs (see `writer.rs`).
///
/// KEYS: the running hash (run id → owner), then each run's hash and events Stream. ARGV: the
/// owner replica, now (ms), the ttl of an ended run (ms), the safety expiry (ms); then for each
/// run its id, the number of arguments its changes take, and the changes, each a kind and its
/// arguments:
/// - `c model record`: creates the run (with the ledger record to write should the producer
///   disappear) and expires it after the safety expiry, in case its end never reaches Redis;
/// - `h field value`: sets a field of the run's hash (route, format) if the run exists;
/// - `e seq json`: appends event `seq` if the run holds exactly `seq` events (an earlier batch
///   that failed leaves a gap no later event may cross). The batch's events of a run go in one
///   Stream entry, a JSON array in its field `e`, whose id is `0-{n}` for `n` the run's events
///   after it: reading from event `N` on is `XREAD … 0-N`, and the reader skips the first
///   entry's events before `N`;
/// - `x status`: ends the run (as failed after a gap); it then expires after the ttl.
///
/// Events and the end are written only while the run is running and this replica's. Returns,
/// for each run, `{state, cancel, ended}`: state 0 when written, -1 when Redis does not hold
/// the run, -2 when it is no longer this replica's running run (another replica ended it: its
/// end stands), -3 when the id was taken, -4 when a command failed (the other runs of the batch
/// are written all the same), -5 when an event would have left a gap; cancel 1 when a cancel
/// was asked for (so a cancel whose message was lost still arrives); ended, when this batch
/// ended the run, `{subs, delivered}` (its readers on other replicas), else empty.
pub(super) static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local running, owner, now, ttl, safety = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]

-- One run's changes, ARGV[from] to ARGV[to]; returns its state, whether a cancel was asked
-- for and, if it ended, its readers. Each field is read once and `len` written once: the
-- fewer commands, the more runs a Redis serves.
local function apply(hash, events, id, from, to)
    local state, exists, checked, gap, cancel, ended = 0, false, false, false, 0, {}
    local len, written, readers, added = 0, 0, {0, 0}, {}
    local function check()
        if checked or state ~= 0 then return end
        checked = true
        local run = redis.call('HMGET', hash, 'status', 'owner', 'len', 'cancel', 'subs',
            'delivered')
        if not run[1] then
            state = -1
        elseif run[1] ~= 'running' or run[2] ~= owner then
            state = -2
        else
            len, written = tonumber(run[3]), tonumber(run[3])
            if run[4] then cancel = 1 end
            readers = {tonumber(run[5]) or 0, tonumber(run[6]) or 0}
        end
    end
    -- Writes the events gathered so far as one entry, and the run's length.
    local function save_len()
        if len == written then return end
        redis.call('XADD', events, '0-' .. len, 'e', '[' .. table.concat(added, ',') .. ']')
        if written == 0 then redis.call('PEXPIRE', events, safety) end
        redis.call('HSET', hash, 'len', len)
        written, added = len, {}
    end
    local a = from
    while a <= to do
        local kind = ARGV[a]
        if kind == 'c' then
            if redis.call('EXISTS', hash) == 1 then
                state = -3
            else
                redis.call('HSET', hash, 'model', ARGV[a + 1], 'owner', owner,
                    'status', 'running', 'created_ms', now, 'len', 0, 'subs', 0,
                    'delivered', 0, 'record', ARGV[a + 2])
                redis.call('PEXPIRE', hash, safety)
                redis.call('HSET', running, id, owner)
                exists, checked = true, true
            end
            a = a + 3
        elseif kind == 'h' then
            if state == 0 and (exists or redis.call('EXISTS', hash) == 1) then
                redis.call('HSET', hash, ARGV[a + 1], ARGV[a + 2])
                exists = true
            end
            a = a + 3
        elseif kind == 'e' then
            check()
            if state == 0 and not gap then
                if tonumber(ARGV[a + 1]) ~= len then
                    gap = true
                else
                    len = len + 1
                    added[#added + 1] = ARGV[a + 2]
                end
            end
            a = a + 3
        else
            check()
            if state == 0 then
                save_len()
                local status = ARGV[a + 1]
                if gap then status = 'failed' end
                redis.call('HSET', hash, 'status', status, 'finished_ms', now)
                redis.call('HDEL', running, id)
                redis.call('PEXPIRE', hash, ttl)
                redis.call('PEXPIRE', events, ttl)
                ended = readers
            end
            a = a + 2
        end
    end
    if state == 0 then save_len() end
    if state == 0 and gap then state = -5 end
    return state, cancel, ended
end

local out = {}
local a = 5
for r = 1, (#KEYS - 1) / 2 do
    local hash, events = KEYS[2 * r], KEYS[2 * r + 1]
    local id, to = ARGV[a], a + 1 + tonumber(ARGV[a + 1])
    local ok, state, cancel, ended = pcall(apply, hash, events, id, a + 2, to)
    if not ok then state, cancel, ended = -4, 0, {} end
    out[r] = {state, cancel, ended}
    a = to + 1
end
return out",
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
redis.call('XADD', KEYS[2], '0-' .. n, 'e', '[' .. ARGV[2] .. ']')
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
