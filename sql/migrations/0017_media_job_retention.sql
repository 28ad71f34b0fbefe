-- A stored job has done its work: the upload row says where the bytes are. The media worker
-- forgets such jobs after CRM_INGEST_MEDIA_JOB_RETENTION_HOURS, finding them here in time
-- order instead of scanning every job; failed and pending jobs stay until an operator or the
-- worker settles them.
CREATE INDEX idx_ingest_media_jobs_stored ON ingest_media_jobs(updated_at) WHERE status = 'stored';
