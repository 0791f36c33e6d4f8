-- The spend ledger: one row per run, and its caller metadata as rows of their own so that
-- grouping by a metadata key is an indexed join. Costs are integer nano-units of currency.
CREATE TABLE usage_records (
    run_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    route TEXT,
    status TEXT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cached_input_tokens BIGINT NOT NULL,
    cost_nanos BIGINT,
    ttft_ms BIGINT,
    latency_ms BIGINT NOT NULL,
    metadata TEXT NOT NULL,
    api_key_id TEXT,
    started_at_ms BIGINT NOT NULL,
    ended_at_ms BIGINT NOT NULL,
    error TEXT
);
CREATE INDEX usage_records_started ON usage_records (started_at_ms);
CREATE TABLE usage_metadata (
    run_id TEXT NOT NULL REFERENCES usage_records (run_id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX usage_metadata_key ON usage_metadata (key, value);
