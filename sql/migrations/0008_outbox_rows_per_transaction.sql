-- The outbox keeps one row per transaction instead of one per chat event. A batch of 500
-- inbound events queued about 700 rows, each a JSONB value to parse, three index entries, and a
-- second row version when it was marked published; that was a third of the consumer's
-- PostgreSQL time. Now a batch queues one row: its chat events as one JSON array (json, not
-- jsonb: stored as written, read back as written) with the inbound event that caused each,
-- in the same order. Event ids stay deterministic, so consumers of the chat-events topic
-- deduplicate by `event_id` as before.
CREATE TABLE ingest_outbox_batches (
    seq BIGSERIAL PRIMARY KEY,
    events JSON NOT NULL,
    source_event_ids UUID[] NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT NOW(),
    published_at TIMESTAMP,
    CHECK (json_typeof(events) = 'array')
);

-- Existing chat events, published or not, move over in their order, one row each.
INSERT INTO ingest_outbox_batches (events, source_event_ids, created_at, published_at)
SELECT json_build_array(payload), ARRAY[source_event_id], created_at, published_at
FROM ingest_outbox
ORDER BY seq;

DROP TABLE ingest_outbox;
ALTER TABLE ingest_outbox_batches RENAME TO ingest_outbox;
ALTER SEQUENCE ingest_outbox_batches_seq_seq RENAME TO ingest_outbox_seq_seq;
ALTER INDEX ingest_outbox_batches_pkey RENAME TO ingest_outbox_pkey;
CREATE INDEX idx_ingest_outbox_pending ON ingest_outbox(seq) WHERE published_at IS NULL;
CREATE INDEX idx_ingest_outbox_published_at ON ingest_outbox(published_at);
