-- Arbiters that let the database, not a check-then-insert, decide business outcomes.

-- One row per sender identity within a tenant. crm_client_contacts has no tenant column and no
-- unique key, so two consumers racing on a new sender could each create a client; claiming the
-- identity here (INSERT ... ON CONFLICT DO NOTHING) lets exactly one of them win. Client and
-- contact ids are allocated from their own sequences before those rows exist, hence the
-- deferred foreign keys (checked at commit).
CREATE TABLE ingest_identities (
    tenant_id UUID NOT NULL REFERENCES public.tenants(id) ON DELETE CASCADE,
    contact_type VARCHAR(50) NOT NULL,
    contact_value VARCHAR(255) NOT NULL,
    client_id INTEGER NOT NULL
        REFERENCES crm_clients(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    contact_id INTEGER NOT NULL
        REFERENCES crm_client_contacts(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    -- Provider version (ms) of the newest event whose transport_meta was merged into the member,
    -- so a replay of older events never rolls the member's meta back.
    meta_version BIGINT NOT NULL DEFAULT 0,
    created_at TIMESTAMP NOT NULL DEFAULT NOW(),
    PRIMARY KEY (tenant_id, contact_type, contact_value)
);
CREATE INDEX idx_ingest_identities_contact_id ON ingest_identities(contact_id);
CREATE INDEX idx_ingest_identities_client_id ON ingest_identities(client_id);

-- Provider message id -> crm_chat_messages row. The primary key makes redelivery and replay
-- idempotent; `version` orders edits (a newer edit updates the text, an older one is ignored).
CREATE TABLE ingest_message_refs (
    channel_id UUID NOT NULL REFERENCES ingest_channels(id) ON DELETE CASCADE,
    external_id VARCHAR(512) NOT NULL,
    message_id INTEGER NOT NULL
        REFERENCES crm_chat_messages(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    version BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT NOW(),
    PRIMARY KEY (channel_id, external_id)
);
CREATE INDEX idx_ingest_message_refs_message_id ON ingest_message_refs(message_id);

-- The one seed-table extension: the data model's "one member per contact method per chat" made
-- enforceable, so the member upsert has an ON CONFLICT arbiter. Partial: host-created members
-- for internal users (client_contact_id NULL) are not constrained.
CREATE UNIQUE INDEX idx_crm_chat_members_contact_transport_unique
    ON crm_chat_members(chat_id, client_contact_id, transport)
    WHERE client_contact_id IS NOT NULL;
