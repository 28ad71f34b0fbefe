-- The member upsert bumps each sender identity's meta_version found by (contact_id, tenant_id).
-- With only contact_id indexed, a generic plan made before the table had column statistics (a
-- new or restored database, before autovacuum's first ANALYZE) ANDed that index with the
-- primary key's tenant_id prefix, reading the tenant's whole identity range once per message:
-- cost per event grew with the tenant. One index on both columns makes the probe exact whatever
-- the statistics. contact_id still leads, so it also serves the ON DELETE CASCADE from
-- crm_client_contacts, and the single-column index goes.
CREATE INDEX idx_ingest_identities_contact_tenant ON ingest_identities (contact_id, tenant_id);
DROP INDEX idx_ingest_identities_contact_id;

-- A new sender with an email address is matched case-insensitively against the tenant's clients
-- and all email contacts (find_identities). lower(email) could use no index: each such sender
-- read the tenant's whole client range and every email contact of every tenant. Two expression
-- indexes make both probes exact; they extend seed tables the way 0004's member index does.
CREATE INDEX idx_crm_clients_tenant_lower_email ON crm_clients (tenant_id, lower(email));
CREATE INDEX idx_crm_client_contacts_lower_email ON crm_client_contacts (lower(contact_value))
    WHERE contact_type = 'email';
