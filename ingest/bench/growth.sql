-- growth_tenants --
-- The small tenants and their Telegram channels (the consumer never reads a channel's config)
WITH t AS (
    INSERT INTO tenants (id, name) SELECT unnest($1::uuid[]), 'bench-small'
)
INSERT INTO ingest_channels (id, tenant_id, transport, name)
SELECT id, tenant_id, 'telegram', 'bench-small'
FROM unnest($2::uuid[], $1::uuid[]) AS k(id, tenant_id);

-- growth_prefill --
-- Senders lo..hi as the consumer leaves them (client, name, contact, identity, chat, member, one message and its ref); even senders the large tenant's, odd ones spread over the small tenants
WITH s AS (
    SELECT k, ($5::bigint + k)::text AS contact_value,
           CASE WHEN k % 2 = 0 THEN $3::uuid
                ELSE ($6::uuid[])[1 + (k / 2) % cardinality($6::uuid[])] END AS tenant_id,
           CASE WHEN k % 2 = 0 THEN $4::uuid
                ELSE ($7::uuid[])[1 + (k / 2) % cardinality($7::uuid[])] END AS channel_id,
           nextval('crm_clients_id_seq')::int AS client_id,
           nextval('crm_client_contacts_id_seq')::int AS contact_id,
           nextval('crm_chats_id_seq')::int AS chat_id,
           gen_random_uuid() AS member_id,
           nextval('crm_chat_messages_id_seq')::int AS message_id,
           to_timestamp($8::bigint + k) AT TIME ZONE 'UTC' AS sent_at
    FROM generate_series($1::int, $2::int) AS k
),
clients AS (
    INSERT INTO crm_clients (id, tenant_id, first_name)
    SELECT client_id, tenant_id, 'Anna' FROM s
),
names AS (
    INSERT INTO ingest_client_names (client_id, first_name, last_name, placeholder, source, version)
    SELECT client_id, 'Anna', NULL, FALSE, 'telegram', 0 FROM s
),
contacts AS (
    INSERT INTO crm_client_contacts (id, client_id, contact_type, contact_value)
    SELECT contact_id, client_id, 'telegram', contact_value FROM s
),
identities AS (
    INSERT INTO ingest_identities (tenant_id, contact_type, contact_value, client_id, contact_id)
    SELECT tenant_id, 'telegram', contact_value, client_id, contact_id FROM s
),
chats AS (
    INSERT INTO crm_chats (id, tenant_id, client_id, last_message_at)
    SELECT chat_id, tenant_id, client_id, sent_at FROM s
),
members AS (
    INSERT INTO crm_chat_members
        (id, tenant_id, chat_id, client_id, client_contact_id, transport, transport_meta)
    SELECT member_id, tenant_id, chat_id, client_id, contact_id, 'telegram',
           jsonb_build_object('chat_id', contact_value::bigint)
    FROM s
),
messages AS (
    INSERT INTO crm_chat_messages (id, chat_id, sender_id, message, sent_at)
    SELECT message_id, chat_id, member_id, 'Hello, order ' || k || ' please', sent_at FROM s
)
INSERT INTO ingest_message_refs (channel_id, external_id, message_id, version)
SELECT channel_id, contact_value || ':1', message_id, 0 FROM s;

-- growth_counts --
-- Identities and messages now in the database
SELECT (SELECT count(*) FROM ingest_identities) AS identities,
       (SELECT count(*) FROM crm_chat_messages) AS messages,
       (SELECT count(*) FROM crm_clients) AS clients;

-- growth_buffers --
-- Blocks this database found in shared_buffers and read from outside them, its size, and shared_buffers itself
SELECT d.blks_hit, d.blks_read, pg_database_size(current_database()) AS bytes,
       pg_size_bytes(current_setting('shared_buffers')) AS shared_buffers
FROM pg_stat_database AS d
WHERE d.datname = current_database();
