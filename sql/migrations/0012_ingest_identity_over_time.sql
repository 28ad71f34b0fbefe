-- Identity over time (issue 15): names crm-ingest wrote, and identities it could not link.

-- The name crm-ingest last wrote into each client it named. A later real name replaces it only
-- while crm_clients still holds exactly this name: a name the host app set or edited differs
-- and is never touched. `placeholder` marks a name made up from an identifier (a phone number,
-- an email address, a username); `source` (the contact type of the event that gave the name) and
-- `version` (that event's provider version, ms) let a newer name from the same transport win
-- while a replay of older events never brings an older name back. Clients the host created
-- have no row and are never renamed.
CREATE TABLE ingest_client_names (
    client_id INTEGER PRIMARY KEY
        REFERENCES crm_clients(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    first_name VARCHAR(255) NOT NULL,
    last_name VARCHAR(255),
    placeholder BOOLEAN NOT NULL,
    source VARCHAR(50) NOT NULL,
    version BIGINT NOT NULL,
    updated_at TIMESTAMP NOT NULL DEFAULT NOW()
);

-- Clients crm-ingest created before this migration: only those still named by one of their
-- identifiers are known to carry our placeholder (a real name might be the host's edit).
INSERT INTO ingest_client_names (client_id, first_name, last_name, placeholder, source, version)
SELECT DISTINCT ON (c.id) c.id, c.first_name, c.last_name, TRUE, i.contact_type, 0
FROM crm_clients AS c
JOIN ingest_identities AS i ON i.client_id = c.id
WHERE c.last_name IS NULL
  AND c.first_name IN (i.contact_value, c.phone_number, c.email)
ORDER BY c.id, i.created_at;

-- One sender identity (a WhatsApp phone) whose other identity (its business-scoped user id)
-- already belongs to another client. crm-ingest files the messages under `client_id` and never
-- merges clients itself: the host decides (merge, or move an identity in ingest_identities),
-- then deletes the row. While the two still differ, the next message records it again.
CREATE TABLE ingest_identity_conflicts (
    tenant_id UUID NOT NULL REFERENCES public.tenants(id) ON DELETE CASCADE,
    contact_type VARCHAR(50) NOT NULL,
    contact_value VARCHAR(255) NOT NULL,
    linked_value VARCHAR(255) NOT NULL,
    client_id INTEGER NOT NULL REFERENCES crm_clients(id) ON DELETE CASCADE,
    linked_client_id INTEGER NOT NULL REFERENCES crm_clients(id) ON DELETE CASCADE,
    source_event_id UUID NOT NULL,
    detected_at TIMESTAMP NOT NULL DEFAULT NOW(),
    PRIMARY KEY (tenant_id, contact_type, contact_value, linked_value)
);
CREATE INDEX idx_ingest_identity_conflicts_client_id ON ingest_identity_conflicts(client_id);
CREATE INDEX idx_ingest_identity_conflicts_linked_client_id
    ON ingest_identity_conflicts(linked_client_id);
