-- Client API keys: the SHA-256 of each secret, never the secret. JSON text for the key's
-- metadata, allowed models and limits. A revoked key keeps its row (its runs name it).
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL UNIQUE,
    metadata TEXT NOT NULL,
    models TEXT NOT NULL,
    limits TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);
