-- lock_media_claims --
-- Claims take turns (transaction-scoped), so the per-channel bound holds across workers
SELECT pg_advisory_xact_lock($1);

-- claim_media_jobs --
-- Lease up to $1 due jobs, at most $2 leased per channel at once, scanning the $3 oldest due jobs not locked by another claim
WITH held AS (
    SELECT channel_id, count(*) AS leased
    FROM ingest_media_jobs
    WHERE status = 'pending' AND lease IS NOT NULL AND leased_until > now()
    GROUP BY channel_id
),
due AS (
    SELECT j.upload_id, j.channel_id, j.next_attempt_at
    FROM ingest_media_jobs AS j
    WHERE j.status = 'pending' AND j.next_attempt_at <= now()
      AND (j.lease IS NULL OR j.leased_until <= now())
      AND j.channel_id NOT IN (SELECT channel_id FROM held WHERE leased >= $2)
    ORDER BY j.next_attempt_at, j.upload_id
    LIMIT $3
    FOR UPDATE OF j SKIP LOCKED
),
ranked AS (
    SELECT d.upload_id, d.next_attempt_at,
           row_number() OVER (PARTITION BY d.channel_id ORDER BY d.next_attempt_at, d.upload_id)
               + coalesce(h.leased, 0) AS slot
    FROM due AS d
    LEFT JOIN held AS h ON h.channel_id = d.channel_id
),
chosen AS (
    SELECT upload_id FROM ranked WHERE slot <= $2 ORDER BY next_attempt_at, upload_id LIMIT $1
)
UPDATE ingest_media_jobs AS j
SET lease = gen_random_uuid(),
    leased_until = now() + make_interval(secs => $4),
    attempts = j.attempts + 1,
    updated_at = now()
FROM chosen, core_uploads AS u
WHERE j.upload_id = chosen.upload_id AND u.id = j.upload_id
RETURNING j.upload_id, j.message_id, j.channel_id, j.tenant_id, j.transport, j.attempts,
          j.lease, j.queued_at, u.path, u.size, u.mimetype, u.hash;

-- renew_media_lease --
-- Extend a lease still held; no row means another worker has the job now
UPDATE ingest_media_jobs
SET leased_until = now() + make_interval(secs => $3)
WHERE upload_id = $1 AND lease = $2 AND status = 'pending'
RETURNING upload_id;

-- store_media_job --
-- A held job's bytes are stored: the upload points at the object, the job is done; returns what its chat event needs
WITH job AS (
    UPDATE ingest_media_jobs
    SET status = 'stored', lease = NULL, leased_until = NULL, last_error = NULL,
        updated_at = now()
    WHERE upload_id = $1 AND lease = $2 AND status = 'pending'
    RETURNING upload_id, message_id, attempts
),
upload AS (
    UPDATE core_uploads AS u
    SET path = $3, size = $4, hash = $5, mimetype = $6, updated_at = now()
    FROM job
    WHERE u.id = job.upload_id
    RETURNING u.id
)
SELECT job.upload_id, job.message_id, job.attempts, c.tenant_id, c.client_id, c.id AS chat_id
FROM job
JOIN upload ON upload.id = job.upload_id
JOIN crm_chat_messages AS m ON m.id = job.message_id
JOIN crm_chats AS c ON c.id = m.chat_id;

-- fail_media_job --
-- A held job cannot succeed: failed with its short reason; returns what its chat event needs
WITH job AS (
    UPDATE ingest_media_jobs
    SET status = 'failed', lease = NULL, leased_until = NULL, last_error = $3,
        updated_at = now()
    WHERE upload_id = $1 AND lease = $2 AND status = 'pending'
    RETURNING upload_id, message_id, attempts
)
SELECT job.upload_id, job.message_id, job.attempts, c.tenant_id, c.client_id, c.id AS chat_id,
       u.mimetype
FROM job
JOIN core_uploads AS u ON u.id = job.upload_id
JOIN crm_chat_messages AS m ON m.id = job.message_id
JOIN crm_chats AS c ON c.id = m.chat_id;

-- postpone_media_job --
-- A held job failed for now: released, due again after $3 seconds, with its short reason
UPDATE ingest_media_jobs
SET lease = NULL, leased_until = NULL, last_error = $4,
    next_attempt_at = now() + make_interval(secs => $3), updated_at = now()
WHERE upload_id = $1 AND lease = $2 AND status = 'pending'
RETURNING upload_id;

-- requeue_media_jobs --
-- The named jobs that failed, or wait for a retry, due now with a new retry window
UPDATE ingest_media_jobs
SET status = 'pending', next_attempt_at = now(), queued_at = now(), updated_at = now()
WHERE upload_id = ANY($1::int[])
  AND (status = 'failed' OR (status = 'pending' AND lease IS NULL))
RETURNING upload_id;

-- requeue_failed_media_jobs --
-- Every failed job due now with a new retry window (found through the partial index of failed jobs)
UPDATE ingest_media_jobs
SET status = 'pending', next_attempt_at = now(), queued_at = now(), updated_at = now()
WHERE status = 'failed'
RETURNING upload_id;

-- list_media_jobs --
-- Fetch jobs, newest first
SELECT j.upload_id, j.message_id, j.channel_id, j.status, j.attempts, j.last_error AS error,
       u.path
FROM ingest_media_jobs AS j
JOIN core_uploads AS u ON u.id = j.upload_id
ORDER BY j.upload_id DESC
LIMIT $1;

-- list_media_jobs_in_status --
-- Fetch jobs of one status, newest first
SELECT j.upload_id, j.message_id, j.channel_id, j.status, j.attempts, j.last_error AS error,
       u.path
FROM ingest_media_jobs AS j
JOIN core_uploads AS u ON u.id = j.upload_id
WHERE j.status = $1
ORDER BY j.upload_id DESC
LIMIT $2;

-- media_queue_stats --
-- Pending jobs and the age in seconds of the oldest (since queued)
SELECT count(*) AS pending,
       coalesce(extract(epoch FROM now() - min(queued_at)), 0)::float8 AS oldest_age_s
FROM ingest_media_jobs
WHERE status = 'pending';

-- prune_stored_media_jobs --
-- Forget up to $2 jobs whose bytes were stored longer than $1 hours ago, oldest first (their uploads keep where the bytes are)
DELETE FROM ingest_media_jobs
WHERE upload_id IN (
    SELECT upload_id FROM ingest_media_jobs
    WHERE status = 'stored' AND updated_at < now() - make_interval(hours => $1)
    ORDER BY updated_at
    LIMIT $2
);
