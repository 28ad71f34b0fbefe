-- Authenticated webhooks the gateway could not turn into events are published to the
-- dead-letter topic as raw webhook records and kept here like any dead letter. What `dlq list`
-- shows and `dlq replay` needs beside the payload: the channel to parse them for, the
-- transport, and the kind of reason. The record id makes a webhook kept twice (a provider's
-- retry after a 503) one dead letter.
ALTER TABLE ingest_dead_letters
    ADD COLUMN channel_id UUID,
    ADD COLUMN transport VARCHAR(20),
    ADD COLUMN reason_kind VARCHAR(50);
CREATE UNIQUE INDEX idx_ingest_dead_letters_kept_webhook
    ON ingest_dead_letters(event_id) WHERE reason_kind IS NOT NULL;
