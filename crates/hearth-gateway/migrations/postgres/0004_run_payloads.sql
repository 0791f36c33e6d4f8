-- Requests and answers kept when logging asks for them (`[logging] payloads`), beside the
-- run's ledger record; retention deletes the oldest first.
CREATE TABLE run_payloads (
    run_id TEXT PRIMARY KEY,
    stored_at_ms BIGINT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL
);
CREATE INDEX run_payloads_stored ON run_payloads (stored_at_ms, run_id);
