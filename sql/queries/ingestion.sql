-- find_identities --
-- Known senders: claimed identities, else host contacts, else a client with the same phone/email
SELECT k.tenant_id, k.contact_type, k.contact_value,
       coalesce(i.client_id, hc.client_id, xc.client_id) AS client_id,
       coalesce(i.contact_id, hc.contact_id) AS contact_id,
       i.contact_id IS NOT NULL AS claimed
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[])
     AS k(tenant_id, contact_type, contact_value, phone, email)
LEFT JOIN ingest_identities AS i
       ON i.tenant_id = k.tenant_id AND i.contact_type = k.contact_type
      AND i.contact_value = k.contact_value
LEFT JOIN LATERAL (
    SELECT cc.client_id, cc.id AS contact_id
    FROM crm_client_contacts AS cc
    JOIN crm_clients AS c ON c.id = cc.client_id AND c.tenant_id = k.tenant_id
    WHERE i.contact_id IS NULL
      AND cc.contact_type = k.contact_type AND cc.contact_value = k.contact_value
    ORDER BY cc.id
    LIMIT 1
) AS hc ON TRUE
LEFT JOIN LATERAL (
    -- Cross-channel: the same person reached us (or the host app) on another transport.
    SELECT client_id FROM (
        SELECT c.id AS client_id, 0 AS preference FROM crm_clients AS c
        WHERE c.tenant_id = k.tenant_id AND k.phone IS NOT NULL AND c.phone_number = k.phone
        UNION ALL
        SELECT c.id, 1 FROM crm_clients AS c
        WHERE c.tenant_id = k.tenant_id AND k.email IS NOT NULL AND lower(c.email) = k.email
        UNION ALL
        SELECT cc.client_id, 2 FROM crm_client_contacts AS cc
        JOIN crm_clients AS c ON c.id = cc.client_id AND c.tenant_id = k.tenant_id
        WHERE k.phone IS NOT NULL AND cc.contact_type IN ('phone', 'whatsapp')
          AND cc.contact_value = k.phone
        UNION ALL
        SELECT cc.client_id, 3 FROM crm_client_contacts AS cc
        JOIN crm_clients AS c ON c.id = cc.client_id AND c.tenant_id = k.tenant_id
        WHERE k.email IS NOT NULL AND cc.contact_type = 'email' AND lower(cc.contact_value) = k.email
    ) AS matches
    WHERE i.contact_id IS NULL AND hc.contact_id IS NULL
    ORDER BY preference, client_id
    LIMIT 1
) AS xc ON TRUE
WHERE i.contact_id IS NOT NULL OR hc.contact_id IS NOT NULL OR xc.client_id IS NOT NULL;

-- claim_identities --
-- Claim new sender identities; ids for new contacts come from their sequence
INSERT INTO ingest_identities (tenant_id, contact_type, contact_value, client_id, contact_id)
SELECT k.tenant_id, k.contact_type, k.contact_value,
       k.client_id,
       coalesce(k.contact_id, nextval('crm_client_contacts_id_seq')::int)
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::int[])
     AS k(tenant_id, contact_type, contact_value, client_id, contact_id)
ORDER BY k.tenant_id, k.contact_type, k.contact_value
ON CONFLICT (tenant_id, contact_type, contact_value) DO NOTHING
RETURNING tenant_id, contact_type, contact_value, client_id, contact_id;

-- allocate_client_ids --
-- Reserve ids for the clients a batch is about to create (one per person)
SELECT nextval('crm_clients_id_seq')::int AS id FROM generate_series(1, $1);

-- insert_clients --
-- Create the clients of newly claimed identities with their pre-allocated ids, recording the names given
WITH k AS (
    SELECT * FROM unnest($1::int[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::bool[], $8::text[], $9::bigint[])
         AS k(id, tenant_id, first_name, last_name, phone_number, email, placeholder, source, version)
),
clients AS (
    INSERT INTO crm_clients (id, tenant_id, first_name, last_name, phone_number, email)
    SELECT id, tenant_id, first_name, last_name, phone_number, email FROM k
)
INSERT INTO ingest_client_names (client_id, first_name, last_name, placeholder, source, version)
SELECT id, first_name, last_name, placeholder, source, version FROM k;

-- rename_clients --
-- Give clients crm-ingest named a newer real name, unless the host has renamed them since
WITH k AS (
    SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::bigint[])
         AS k(client_id, source, first_name, last_name, version)
),
chosen AS (
    -- A placeholder yields to the earliest real name (the same transport's first); a real name
    -- only to a newer one from the transport that gave it, so two transports never alternate.
    SELECT DISTINCT ON (k.client_id) k.*, n.first_name AS old_first_name,
           n.last_name AS old_last_name
    FROM k
    JOIN ingest_client_names AS n ON n.client_id = k.client_id
    WHERE (n.placeholder OR (n.source = k.source AND n.version < k.version))
      AND (n.first_name, n.last_name) IS DISTINCT FROM (k.first_name, k.last_name)
    ORDER BY k.client_id, k.source = n.source DESC, k.version
),
renamed AS (
    -- Only while the client still bears the name crm-ingest wrote: otherwise the host set it.
    -- A concurrent writer's change is seen here (the row is re-read once its lock is free).
    UPDATE crm_clients AS c
    SET first_name = ch.first_name, last_name = ch.last_name, updated_at = NOW()
    FROM chosen AS ch
    WHERE c.id = ch.client_id
      AND c.first_name = ch.old_first_name AND c.last_name IS NOT DISTINCT FROM ch.old_last_name
    RETURNING c.id, c.tenant_id, ch.old_first_name, ch.old_last_name, c.first_name, c.last_name,
              ch.source, ch.version
)
UPDATE ingest_client_names AS n
SET first_name = r.first_name, last_name = r.last_name, placeholder = FALSE, source = r.source,
    version = r.version, updated_at = NOW()
FROM renamed AS r
WHERE n.client_id = r.id
RETURNING r.id AS client_id, r.tenant_id, r.old_first_name, r.old_last_name, r.first_name,
          r.last_name, r.source, r.version;

-- fill_client_phones --
-- Give clients without a phone number the one their newly linked identity brought
UPDATE crm_clients AS c SET phone_number = k.phone, updated_at = NOW()
FROM unnest($1::int[], $2::text[]) AS k(id, phone)
WHERE c.id = k.id AND c.phone_number IS NULL
RETURNING c.id AS client_id, c.tenant_id, k.phone;

-- record_identity_conflicts --
-- Keep each identity pair found on two clients once; returns the pairs not recorded before
INSERT INTO ingest_identity_conflicts
    (tenant_id, contact_type, contact_value, linked_value, client_id, linked_client_id,
     source_event_id)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], $6::int[],
                     $7::uuid[])
ORDER BY 1, 2, 3, 4
ON CONFLICT (tenant_id, contact_type, contact_value, linked_value) DO NOTHING
RETURNING tenant_id, contact_type, contact_value, linked_value, client_id, linked_client_id,
          source_event_id;

-- insert_contacts --
-- Create the contacts of newly claimed identities with their pre-allocated ids
INSERT INTO crm_client_contacts (id, client_id, contact_type, contact_value)
SELECT * FROM unnest($1::int[], $2::int[], $3::text[], $4::text[]);

-- find_chats --
-- The one chat of each (tenant, client)
SELECT c.tenant_id, c.client_id, c.id
FROM unnest($1::uuid[], $2::int[]) AS k(tenant_id, client_id)
JOIN crm_chats AS c ON c.tenant_id = k.tenant_id AND c.client_id = k.client_id;

-- insert_chats --
-- Create missing chats; a concurrent creator wins silently and is read back with find_chats
INSERT INTO crm_chats (tenant_id, client_id)
SELECT * FROM unnest($1::uuid[], $2::int[]) AS k(tenant_id, client_id)
ORDER BY k.tenant_id, k.client_id
ON CONFLICT (tenant_id, client_id) DO NOTHING
RETURNING tenant_id, client_id, id;

-- upsert_members --
-- Get or create the member of each (chat, contact, transport), merging newer transport_meta
WITH k AS (
    SELECT * FROM unnest($1::uuid[], $2::int[], $3::int[], $4::int[], $5::text[], $6::jsonb[], $7::bigint[])
         AS k(tenant_id, chat_id, client_id, contact_id, transport, meta, version)
),
newer AS (
    -- Sub-statements share one snapshot, so the version bump and the merge decision below
    -- both read the identity as it was before this statement.
    UPDATE ingest_identities AS i SET meta_version = k.version
    FROM k
    WHERE i.contact_id = k.contact_id AND i.tenant_id = k.tenant_id AND i.meta_version < k.version
    RETURNING i.contact_id
)
INSERT INTO crm_chat_members AS m
    (id, tenant_id, chat_id, client_id, client_contact_id, transport, transport_meta)
SELECT gen_random_uuid(), k.tenant_id, k.chat_id, k.client_id, k.contact_id, k.transport, k.meta
FROM k
ORDER BY k.chat_id, k.contact_id, k.transport
ON CONFLICT (chat_id, client_contact_id, transport) WHERE client_contact_id IS NOT NULL
DO UPDATE SET transport_meta = coalesce(m.transport_meta, '{}'::jsonb) || EXCLUDED.transport_meta,
              updated_at = NOW()
    WHERE EXCLUDED.client_contact_id IN (SELECT contact_id FROM newer)
      AND m.transport_meta IS DISTINCT FROM coalesce(m.transport_meta, '{}'::jsonb) || EXCLUDED.transport_meta
RETURNING chat_id, client_contact_id, transport, id;

-- find_members --
-- Members of (chat, contact, transport) that upsert_members left untouched
SELECT m.chat_id, m.client_contact_id, m.transport, m.id
FROM unnest($1::int[], $2::int[], $3::text[]) AS k(chat_id, contact_id, transport)
JOIN crm_chat_members AS m
  ON m.chat_id = k.chat_id AND m.client_contact_id = k.contact_id AND m.transport = k.transport;

-- upsert_message_refs --
-- Record provider message ids; new ones get a message id, newer versions win, the rest are no-ops
INSERT INTO ingest_message_refs AS r (channel_id, external_id, message_id, version, meta)
SELECT k.channel_id, k.external_id, nextval('crm_chat_messages_id_seq')::int, k.version, k.meta
FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::jsonb[])
     AS k(channel_id, external_id, version, meta)
ORDER BY k.channel_id, k.external_id
ON CONFLICT (channel_id, external_id) DO UPDATE SET version = EXCLUDED.version, meta = EXCLUDED.meta
    WHERE r.version < EXCLUDED.version
RETURNING r.channel_id, r.external_id, r.message_id, (r.xmax = 0) AS inserted;

-- insert_messages --
-- Store new messages under the ids their refs allocated
INSERT INTO crm_chat_messages (id, chat_id, sender_id, message, sent_at)
SELECT * FROM unnest($1::int[], $2::int[], $3::uuid[], $4::text[], $5::timestamp[]);

-- update_message_texts --
-- Apply edits that are newer than what is stored
UPDATE crm_chat_messages AS m SET message = k.message
FROM unnest($1::int[], $2::text[]) AS k(id, message)
WHERE m.id = k.id
RETURNING m.id, m.sent_at, m.read_at;

-- advance_last_message_at --
-- Move each chat's last_message_at forward, never backwards
UPDATE crm_chats AS c SET last_message_at = k.at
FROM unnest($1::int[], $2::timestamp[]) AS k(id, at)
WHERE c.id = k.id AND (c.last_message_at IS NULL OR c.last_message_at < k.at);

-- insert_attachments --
-- Store attachment metadata as uploads linked to their messages, each with its fetch job when its bytes are still at the provider; returns each row's upload id
WITH k AS MATERIALIZED (
    SELECT k.*, nextval('core_uploads_id_seq')::int AS upload_id
    FROM unnest($1::int[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::int[], $7::text[],
                $8::uuid[], $9::text[], $10::bool[])
         WITH ORDINALITY
         AS k(message_id, tenant_id, hash, path, name, size, mimetype, channel_id, transport,
              needs_fetch, ord)
),
uploads AS (
    INSERT INTO core_uploads (id, tenant_id, hash, path, name, size, mimetype)
    SELECT upload_id, tenant_id, hash, path, name, size, mimetype FROM k
),
links AS (
    INSERT INTO crm_chat_message_attachments (message_id, upload_id)
    SELECT message_id, upload_id FROM k
),
jobs AS (
    INSERT INTO ingest_media_jobs (upload_id, message_id, channel_id, tenant_id, transport)
    SELECT upload_id, message_id, channel_id, tenant_id, transport FROM k WHERE needs_fetch
)
SELECT ord, upload_id FROM k ORDER BY ord;

-- log_statuses --
-- Record delivery/read statuses once each (a redelivered status is a no-op)
INSERT INTO ingest_message_statuses (channel_id, external_id, status, rank, status_at, meta)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::smallint[], $5::timestamp[], $6::jsonb[])
ORDER BY 1, 2, 3
ON CONFLICT (channel_id, external_id, status) DO NOTHING;

-- settle_statuses --
-- Move messages forward by their logged statuses: sent -> sent_at, read -> read_at
WITH k AS (
    SELECT * FROM unnest($1::uuid[], $2::text[]) AS k(channel_id, external_id)
),
eligible AS (
    -- Statuses above the message's current rank and not older than its last status; all of
    -- them apply together, so statuses logged before the message settle as if they had come
    -- after it in time order.
    SELECT s.channel_id, s.external_id, s.status, s.rank, s.status_at
    FROM k
    JOIN ingest_message_refs AS r
      ON r.channel_id = k.channel_id AND r.external_id = k.external_id
    JOIN ingest_message_statuses AS s
      ON s.channel_id = r.channel_id AND s.external_id = r.external_id
    WHERE s.rank > r.status_rank AND (r.status_at IS NULL OR s.status_at >= r.status_at)
),
best AS (
    SELECT channel_id, external_id,
           max(rank) AS rank,
           max(status_at) AS last_at,
           (array_agg(status ORDER BY rank DESC))[1] AS status,
           max(status_at) FILTER (WHERE status = 'sent') AS sent_at,
           max(status_at) FILTER (WHERE status = 'read') AS read_at
    FROM eligible
    GROUP BY channel_id, external_id
),
moved AS (
    UPDATE ingest_message_refs AS r SET status_rank = b.rank, status_at = b.last_at
    FROM best AS b
    WHERE r.channel_id = b.channel_id AND r.external_id = b.external_id
    RETURNING r.message_id, r.channel_id, r.external_id, b.status, b.last_at AS status_at,
              b.sent_at, b.read_at
)
UPDATE crm_chat_messages AS m
SET sent_at = coalesce(moved.sent_at, m.sent_at),
    read_at = coalesce(moved.read_at, m.read_at)
FROM moved, crm_chats AS c
WHERE m.id = moved.message_id AND c.id = m.chat_id
RETURNING c.tenant_id, c.client_id, m.chat_id, m.id AS message_id, moved.channel_id,
          moved.external_id, moved.status, moved.status_at, m.sent_at, m.read_at,
          -- a reply's status events carry its command (one index probe, replies only match)
          (SELECT oc.command_id FROM ingest_outbound_commands AS oc
           WHERE oc.message_id = m.id) AS command_id;
