-- enqueue_chat_events --
-- Queue a transaction's chat events as one row, each with the inbound event that caused it
INSERT INTO ingest_outbox (events, source_event_ids) VALUES ($1::json, $2::uuid[]);

-- lock_relay --
-- Only one relay publishes at a time, so each chat's events leave in commit order
SELECT pg_try_advisory_xact_lock($1);

-- pending_chat_events --
-- The oldest unpublished rows of chat events, as the JSON text they were written as
SELECT seq, events::text AS events
FROM ingest_outbox
WHERE published_at IS NULL
ORDER BY seq
LIMIT $1;

-- mark_published --
-- Rows whose chat events the broker acknowledged
UPDATE ingest_outbox SET published_at = NOW() WHERE seq = ANY($1::bigint[]);

-- purge_published --
-- Forget published chat events older than the retention period
DELETE FROM ingest_outbox WHERE published_at < NOW() - make_interval(hours => $1);

-- reemit_chat_events --
-- Queue again, as one new row, the published chat events caused by the given inbound events
WITH caused AS (
    SELECT e.event, e.source, o.seq, e.ord
    FROM ingest_outbox AS o
    CROSS JOIN LATERAL ROWS FROM (json_array_elements(o.events), unnest(o.source_event_ids))
         WITH ORDINALITY AS e(event, source, ord)
    WHERE o.published_at IS NOT NULL AND o.source_event_ids && $1::uuid[]
      AND e.source = ANY($1::uuid[])
)
INSERT INTO ingest_outbox (events, source_event_ids)
SELECT json_agg(event ORDER BY seq, ord), array_agg(source ORDER BY seq, ord)
FROM caused
HAVING count(*) > 0
RETURNING cardinality(source_event_ids) AS queued;

-- record_dead_letter --
-- Keep a dead letter (the same source record twice is one dead letter)
INSERT INTO ingest_dead_letters
    (source_topic, source_partition, source_offset, event_id, kafka_key, payload, headers,
     error_class, error_message)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (source_topic, source_partition, source_offset) DO UPDATE
    SET error_class = EXCLUDED.error_class, error_message = EXCLUDED.error_message,
        replayed_at = NULL
RETURNING id;

-- record_kept_webhooks --
-- Keep raw webhook records from the dead-letter topic (a record seen twice, or the same webhook
-- kept twice, is one dead letter)
INSERT INTO ingest_dead_letters
    (source_topic, source_partition, source_offset, event_id, kafka_key, payload, headers,
     error_class, error_message, channel_id, transport, reason_kind)
SELECT $1, r.source_partition, r.source_offset, r.event_id, r.kafka_key, r.payload,
       r.headers::jsonb, 'KeptWebhook', r.reason, r.channel_id, r.transport, r.reason_kind
FROM unnest($2::int[], $3::bigint[], $4::uuid[], $5::bytea[], $6::bytea[], $7::text[],
            $8::text[], $9::uuid[], $10::text[], $11::text[])
     AS r(source_partition, source_offset, event_id, kafka_key, payload, headers, reason,
          channel_id, transport, reason_kind)
ON CONFLICT DO NOTHING;

-- keep_dead_letter_pending --
-- A kept webhook replayed but still not processable: it stays, with the reason of this attempt
UPDATE ingest_dead_letters
SET error_message = $2, reason_kind = $3, replayed_at = NULL
WHERE id = $1;

-- list_dead_letters --
-- Dead letters, newest first, optionally including replayed ones
SELECT id, source_topic, source_partition, source_offset, event_id, error_class,
       error_message, reason_kind, transport, channel_id, dead_lettered_at,
       replayed_at, length(payload) AS size
FROM ingest_dead_letters
WHERE $1 OR replayed_at IS NULL
ORDER BY id DESC
LIMIT $2;

-- dead_letters_for_replay --
-- The dead letters to feed through the pipeline again
SELECT id, source_topic, source_partition, source_offset, kafka_key, payload, headers,
       reason_kind, error_message
FROM ingest_dead_letters
WHERE replayed_at IS NULL AND ($1::bigint[] IS NULL OR id = ANY($1::bigint[]))
ORDER BY id;

-- mark_dead_letters_replayed --
-- Dead letters that went through the pipeline after a fix
UPDATE ingest_dead_letters SET replayed_at = NOW() WHERE id = ANY($1::bigint[]);
