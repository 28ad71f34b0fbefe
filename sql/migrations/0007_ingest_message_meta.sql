-- Per-message provider facts with no crm_* column (email subject and threading, reply context,
-- location, shared contact cards, reaction targets, ...), kept beside the message's ref.
-- A newer version of the message (an edit) replaces them, like its text.
ALTER TABLE ingest_message_refs ADD COLUMN meta JSONB NOT NULL DEFAULT '{}'::jsonb;
