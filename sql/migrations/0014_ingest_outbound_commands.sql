-- Replies: one row per message.send command. The primary key decides "executed once": a
-- redelivered or replayed command finds its row and does nothing more. `state` only moves
-- forward: pending -> sending -> accepted | failed | unknown (or pending -> failed when a rule
-- refuses it before any provider call). `sending` is committed before the provider is called,
-- so a process that dies mid-send leaves the evidence, and the redelivered command becomes
-- `unknown` instead of being sent a second time.
CREATE TABLE ingest_outbound_commands (
    command_id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES public.tenants(id) ON DELETE CASCADE,
    chat_id INTEGER NOT NULL REFERENCES crm_chats(id) ON DELETE CASCADE,
    channel_id UUID NOT NULL REFERENCES ingest_channels(id) ON DELETE CASCADE,
    message_id INTEGER NOT NULL UNIQUE
        REFERENCES crm_chat_messages(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    user_id INTEGER,
    state VARCHAR(10) NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'sending', 'accepted', 'failed', 'unknown')),
    recipient VARCHAR(512) NOT NULL,
    -- Email: the Message-ID generated and recorded before the send, so a resend (never
    -- automatic) or the client's reply can be matched to it.
    email_message_id VARCHAR(512),
    provider_message_ids TEXT[] NOT NULL DEFAULT '{}',
    error_code VARCHAR(100),
    error_message TEXT,
    error_retryable BOOLEAN,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at TIMESTAMP NOT NULL DEFAULT NOW(),
    sending_at TIMESTAMP,
    finished_at TIMESTAMP,
    CHECK ((state IN ('failed', 'unknown')) = (error_code IS NOT NULL))
);
CREATE INDEX idx_ingest_outbound_commands_chat ON ingest_outbound_commands(chat_id);
CREATE INDEX idx_ingest_outbound_commands_channel ON ingest_outbound_commands(channel_id);
CREATE INDEX idx_ingest_outbound_commands_unfinished ON ingest_outbound_commands(created_at)
    WHERE state IN ('pending', 'sending');

-- A CRM user's member in a chat, one per (chat, user, transport), so concurrent replies of the
-- same user get-or-create it with ON CONFLICT; and the one member an automated message (no
-- user) is sent as, marked in transport_meta. Partial, like 0004's contact index: members the
-- host created otherwise are not constrained, and a user's member whose user was deleted
-- (user_id set NULL) leaves both indexes.
CREATE UNIQUE INDEX idx_crm_chat_members_user_transport_unique
    ON crm_chat_members(chat_id, user_id, transport)
    WHERE user_id IS NOT NULL AND client_contact_id IS NULL;
CREATE UNIQUE INDEX idx_crm_chat_members_automated_unique
    ON crm_chat_members(chat_id, transport)
    WHERE user_id IS NULL AND client_contact_id IS NULL AND (transport_meta ->> 'role') = 'automated';
