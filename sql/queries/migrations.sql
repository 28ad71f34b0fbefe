-- create_migrations_table --
-- Bookkeeping of applied migrations (created before the first migration runs)
CREATE TABLE IF NOT EXISTS ingest_schema_migrations (
    version VARCHAR(16) PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    checksum CHAR(64) NOT NULL,
    applied_at TIMESTAMP NOT NULL DEFAULT NOW()
);

-- applied_migrations --
-- Versions already applied, with the checksum of the file as it was applied
SELECT version, checksum FROM ingest_schema_migrations;

-- record_migration --
-- Mark a migration applied (same transaction as the migration itself)
INSERT INTO ingest_schema_migrations (version, name, checksum) VALUES ($1, $2, $3);

-- lock_migrations --
-- Serialise concurrent migrators (session-level advisory lock)
SELECT pg_advisory_lock($1);

-- unlock_migrations --
-- Release the migrators' lock
SELECT pg_advisory_unlock($1);
