-- outbound_command --
-- A command already recorded: its state and message (a redelivery or replay finds it here)
SELECT oc.command_id, oc.state, oc.message_id, oc.chat_id, oc.channel_id, c.tenant_id,
       c.client_id, oc.attempts
FROM ingest_outbound_commands AS oc
JOIN crm_chats AS c ON c.id = oc.chat_id
WHERE oc.command_id = $1;

-- outbound_chat --
-- The chat a command writes into, with its tenant (checked against the command's)
SELECT id, tenant_id, client_id FROM crm_chats WHERE id = $1;

-- outbound_user --
-- The CRM user a command writes as: exists, and of which tenant (NULL: any)
SELECT id, tenant_id FROM core_users WHERE id = $1;

-- outbound_template --
-- A message template of the tenant
SELECT template FROM crm_message_templates WHERE id = $1 AND tenant_id = $2;

-- outbound_uploads --
-- The uploads a command attaches, with the tenant that owns each
SELECT id, tenant_id, path, name, size, mimetype FROM core_uploads WHERE id = ANY($1::int[]);

-- last_inbound --
-- The client's latest inbound message in a chat (on one channel, or any): channel, time, recipient
SELECT r.channel_id, m.sent_at,
       coalesce(mem.transport_meta ->> 'chat_id', mem.transport_meta ->> 'wa_id',
                mem.transport_meta ->> 'phone', mem.transport_meta ->> 'email',
                cc.contact_value) AS recipient
FROM crm_chat_messages AS m
JOIN crm_chat_members AS mem ON mem.id = m.sender_id AND mem.client_contact_id IS NOT NULL
JOIN ingest_message_refs AS r ON r.message_id = m.id
LEFT JOIN crm_client_contacts AS cc ON cc.id = mem.client_contact_id
WHERE m.chat_id = $1 AND ($2::uuid IS NULL OR r.channel_id = $2)
ORDER BY m.sent_at DESC NULLS LAST, m.id DESC
LIMIT 1;

-- chat_recipient --
-- Without an inbound message on the channel: the client's member of that transport in the chat
SELECT coalesce(mem.transport_meta ->> 'chat_id', mem.transport_meta ->> 'wa_id',
                mem.transport_meta ->> 'phone', mem.transport_meta ->> 'email',
                cc.contact_value) AS recipient
FROM crm_chat_members AS mem
LEFT JOIN crm_client_contacts AS cc ON cc.id = mem.client_contact_id
WHERE mem.chat_id = $1 AND mem.transport = $2 AND mem.client_contact_id IS NOT NULL
ORDER BY mem.updated_at DESC
LIMIT 1;

-- reply_target --
-- The provider id, on this channel, of the chat's message a reply answers
SELECT r.external_id
FROM ingest_message_refs AS r
JOIN crm_chat_messages AS m ON m.id = r.message_id
WHERE r.message_id = $1 AND r.channel_id = $2 AND m.chat_id = $3
LIMIT 1;

-- last_email --
-- The conversation's latest email (either direction): its Message-ID and threading meta
SELECT r.external_id, r.meta
FROM crm_chat_messages AS m
JOIN ingest_message_refs AS r ON r.message_id = m.id
JOIN ingest_channels AS ch ON ch.id = r.channel_id AND ch.transport = 'email'
WHERE m.chat_id = $1
ORDER BY m.id DESC
LIMIT 1;

-- insert_reply_member --
-- Create the member a reply is sent as (a user's, or the automated one); a concurrent creator wins
INSERT INTO crm_chat_members (id, tenant_id, chat_id, user_id, transport, transport_meta)
VALUES (gen_random_uuid(), $1, $2, $3, $4, $5::jsonb)
ON CONFLICT DO NOTHING
RETURNING id;

-- find_reply_member --
-- The member a reply is sent as, created by this or a concurrent transaction
SELECT id FROM crm_chat_members
WHERE chat_id = $1 AND transport = $2 AND client_contact_id IS NULL
  AND (CASE WHEN $3::int IS NULL
            THEN user_id IS NULL AND (transport_meta ->> 'role') = 'automated'
            ELSE user_id = $3 END)
ORDER BY created_at
LIMIT 1;

-- claim_command --
-- Record a command once (its id decides); allocates the id of the message it writes
INSERT INTO ingest_outbound_commands
    (command_id, tenant_id, chat_id, channel_id, message_id, user_id, recipient, email_message_id)
VALUES ($1, $2, $3, $4, nextval('crm_chat_messages_id_seq')::int, $5, $6, $7)
ON CONFLICT (command_id) DO NOTHING
RETURNING message_id, created_at;

-- insert_reply_message --
-- The reply as a chat message, not yet sent (sent_at comes from the provider's status)
INSERT INTO crm_chat_messages (id, chat_id, sender_id, message, created_at)
VALUES ($1, $2, $3, $4, $5);

-- link_reply_attachments --
-- The stored uploads a reply carries
INSERT INTO crm_chat_message_attachments (message_id, upload_id)
SELECT $1, u FROM unnest($2::int[]) WITH ORDINALITY AS k(u, ord) ORDER BY ord;

-- mark_command_sending --
-- The provider is about to be called (committed first: a crash after this is an unknown outcome)
UPDATE ingest_outbound_commands
SET state = 'sending', attempts = attempts + 1, sending_at = NOW()
WHERE command_id = $1 AND state = 'pending'
RETURNING attempts;

-- unmark_command_sending --
-- A transient failure: certainly not accepted, so the command waits for its retry as pending
UPDATE ingest_outbound_commands SET state = 'pending'
WHERE command_id = $1 AND state = 'sending';

-- mark_command_accepted --
-- The provider took the message: its ids
UPDATE ingest_outbound_commands
SET state = 'accepted', provider_message_ids = $2::text[], finished_at = NOW()
WHERE command_id = $1 AND state = 'sending'
RETURNING finished_at;

-- mark_command_failed --
-- A command that failed (state failed) or whose outcome is unknown (state unknown)
UPDATE ingest_outbound_commands
SET state = $2, error_code = $3, error_message = $4, error_retryable = $5,
    provider_message_ids = $6::text[], finished_at = NOW()
WHERE command_id = $1 AND state IN ('pending', 'sending')
RETURNING finished_at;

-- record_reply_refs --
-- Provider ids of an accepted reply, where delivery statuses look their message up
INSERT INTO ingest_message_refs (channel_id, external_id, message_id, version, meta)
SELECT $1, k.external_id, $2, 0, $3::jsonb
FROM unnest($4::text[]) AS k(external_id)
ORDER BY k.external_id
ON CONFLICT (channel_id, external_id) DO NOTHING;
