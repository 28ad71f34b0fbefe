-- Delivery/read statuses. Every status is logged once (idempotent); the message's state is
-- settled from the log and only moves forward. A status that arrives before its message waits
-- in the log and is settled when the message is stored.
CREATE TABLE ingest_message_statuses (
    channel_id UUID NOT NULL REFERENCES ingest_channels(id) ON DELETE CASCADE,
    external_id VARCHAR(512) NOT NULL,
    status VARCHAR(20) NOT NULL CHECK (status IN ('sent', 'delivered', 'read', 'failed')),
    rank SMALLINT NOT NULL,
    status_at TIMESTAMP NOT NULL,
    meta JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at TIMESTAMP NOT NULL DEFAULT NOW(),
    PRIMARY KEY (channel_id, external_id, status)
);

ALTER TABLE ingest_message_refs
    ADD COLUMN status_rank SMALLINT NOT NULL DEFAULT 0,
    ADD COLUMN status_at TIMESTAMP;
