-- Answers replayed from the response cache: billed at zero cost, told apart from generated ones.
ALTER TABLE usage_records ADD COLUMN cached BIGINT NOT NULL DEFAULT 0;
