-- populate_known_senders --
-- $3 known Telegram senders of tenant $1 on channel $2: client, contacts, identity, chat, member, a message
WITH people AS MATERIALIZED (
    SELECT (8000000000 + n)::text AS user_id,
           nextval('crm_clients_id_seq')::int AS client_id,
           nextval('crm_client_contacts_id_seq')::int AS contact_id,
           nextval('crm_chats_id_seq')::int AS chat_id,
           gen_random_uuid() AS member_id,
           nextval('crm_chat_messages_id_seq')::int AS message_id
    FROM generate_series(1, $3::int) AS n
),
clients AS (
    INSERT INTO crm_clients (id, tenant_id, first_name, phone_number, email)
    SELECT client_id, $1::uuid, 'Known ' || user_id, '+1555' || right(user_id, 7), user_id || '@example.org'
    FROM people
),
contacts AS (
    INSERT INTO crm_client_contacts (id, client_id, contact_type, contact_value)
    SELECT contact_id, client_id, 'telegram', user_id FROM people
),
host_contacts AS (
    -- Email contacts the host app added to every other client (no identity of ours).
    INSERT INTO crm_client_contacts (client_id, contact_type, contact_value)
    SELECT client_id, 'email', 'Known' || user_id || '@example.org' FROM people
    WHERE right(user_id, 1) IN ('0', '2', '4', '6', '8')
),
identities AS (
    INSERT INTO ingest_identities (tenant_id, contact_type, contact_value, client_id, contact_id, meta_version)
    SELECT $1::uuid, 'telegram', user_id, client_id, contact_id, 1 FROM people
),
chats AS (
    INSERT INTO crm_chats (id, tenant_id, client_id, last_message_at)
    SELECT chat_id, $1::uuid, client_id, '2025-01-01' FROM people
),
members AS (
    INSERT INTO crm_chat_members (id, tenant_id, chat_id, client_id, client_contact_id, transport, transport_meta)
    SELECT member_id, $1::uuid, chat_id, client_id, contact_id, 'telegram', '{}' FROM people
),
messages AS (
    INSERT INTO crm_chat_messages (id, chat_id, sender_id, message, sent_at)
    SELECT message_id, chat_id, member_id, 'hello', '2025-01-01' FROM people
)
INSERT INTO ingest_message_refs (channel_id, external_id, message_id, version)
SELECT $2::uuid, user_id || ':1', message_id, 1 FROM people;

-- pause_autovacuum --
-- Keep autovacuum from ANALYZEing the test database's tables behind the test's back
DO $$
DECLARE t regclass;
BEGIN
    FOR t IN SELECT c.oid FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind = 'r'
    LOOP
        EXECUTE format('ALTER TABLE %s SET (autovacuum_enabled = false)', t);
    END LOOP;
END
$$;
