-- A batch's chat events (about 600 KB of JSON per 500 inbound events) are stored without
-- compression: pglz cost 1.7 ms of PostgreSQL CPU per batch, 40 % of queueing them (measured
-- with the bench's workload). Rows live only for the retention period
-- (CRM_INGEST_OUTBOX_RETENTION_HOURS); where disk matters more than CPU, revert with
-- ALTER TABLE ingest_outbox ALTER COLUMN events SET STORAGE EXTENDED.
ALTER TABLE ingest_outbox ALTER COLUMN events SET STORAGE EXTERNAL;
