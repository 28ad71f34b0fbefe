-- One fetch job per upload whose bytes are still at the provider (core_uploads.path holds the
-- provider reference). Created by the consumer in the statement that creates the upload, so
-- there is never an upload without its job nor a job without its upload; the primary key makes
-- a second job for the same upload impossible.
--
-- A worker claims due jobs (pending, next_attempt_at reached) with FOR UPDATE SKIP LOCKED and
-- takes a lease: `lease` identifies the claim, `leased_until` is renewed while the download
-- runs. A worker killed mid-download stops renewing, so its job is due again once the lease
-- runs out; a late finish by the old holder matches no row (its lease id is gone).
CREATE TABLE ingest_media_jobs (
    upload_id INTEGER PRIMARY KEY
        REFERENCES core_uploads(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    message_id INTEGER NOT NULL
        REFERENCES crm_chat_messages(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    channel_id UUID NOT NULL REFERENCES ingest_channels(id) ON DELETE CASCADE,
    tenant_id UUID NOT NULL REFERENCES public.tenants(id) ON DELETE CASCADE,
    transport VARCHAR(20) NOT NULL,
    status VARCHAR(10) NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'stored', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMP NOT NULL DEFAULT NOW(),
    lease UUID,
    leased_until TIMESTAMP,
    last_error VARCHAR(500),
    -- Start of the retry window: creation, or the last `crm-ingest media retry`.
    queued_at TIMESTAMP NOT NULL DEFAULT NOW(),
    created_at TIMESTAMP NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP NOT NULL DEFAULT NOW(),
    CHECK ((lease IS NULL) = (leased_until IS NULL))
);
-- Claiming: due pending jobs in order, and the leases held per channel.
CREATE INDEX idx_ingest_media_jobs_due ON ingest_media_jobs(next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX idx_ingest_media_jobs_leased ON ingest_media_jobs(channel_id)
    WHERE status = 'pending' AND lease IS NOT NULL;
-- `media list --status failed` and `media retry --failed`.
CREATE INDEX idx_ingest_media_jobs_failed ON ingest_media_jobs(upload_id) WHERE status = 'failed';
-- Cascading deletes of messages and channels.
CREATE INDEX idx_ingest_media_jobs_message_id ON ingest_media_jobs(message_id);
CREATE INDEX idx_ingest_media_jobs_channel_id ON ingest_media_jobs(channel_id);
