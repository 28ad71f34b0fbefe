-- Chat events for other services, written in the same transaction as the change they describe
-- (a transactional outbox): a crash between the database commit and the Kafka publish cannot
-- lose them, and their deterministic ids make a replay add none. A relay publishes pending rows
-- in `seq` order and marks them published; published rows are kept for a retention period so
-- `crm-ingest replay --reemit` can send them again.
CREATE TABLE ingest_outbox (
    seq BIGSERIAL PRIMARY KEY,
    event_id UUID NOT NULL UNIQUE,
    event_type VARCHAR(50) NOT NULL,
    kafka_key VARCHAR(255) NOT NULL,
    payload JSONB NOT NULL,
    source_event_id UUID,
    created_at TIMESTAMP NOT NULL DEFAULT NOW(),
    published_at TIMESTAMP
);
CREATE INDEX idx_ingest_outbox_pending ON ingest_outbox(seq) WHERE published_at IS NULL;
CREATE INDEX idx_ingest_outbox_source_event_id ON ingest_outbox(source_event_id);
CREATE INDEX idx_ingest_outbox_published_at ON ingest_outbox(published_at);

-- Events that can never succeed as they are (invalid, or refused by a constraint retrying
-- cannot fix). The same record is also published to the dead-letter topic; this table is what
-- `crm-ingest dlq list|replay` works from.
CREATE TABLE ingest_dead_letters (
    id BIGSERIAL PRIMARY KEY,
    source_topic VARCHAR(255) NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset BIGINT NOT NULL,
    event_id UUID,
    kafka_key BYTEA,
    payload BYTEA NOT NULL,
    headers JSONB NOT NULL DEFAULT '{}'::jsonb,
    error_class VARCHAR(255) NOT NULL,
    error_message TEXT NOT NULL,
    dead_lettered_at TIMESTAMP NOT NULL DEFAULT NOW(),
    replayed_at TIMESTAMP,
    UNIQUE (source_topic, source_partition, source_offset)
);
CREATE INDEX idx_ingest_dead_letters_pending ON ingest_dead_letters(id) WHERE replayed_at IS NULL;
