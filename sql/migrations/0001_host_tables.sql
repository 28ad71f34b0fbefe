-- Host tables the crm_* tables reference, in minimal form, created only where absent.
-- gen_random_uuid() is built in since PostgreSQL 13, the oldest version supported.
-- In a real installation the host application owns these; crm-ingest never alters them.

CREATE TABLE IF NOT EXISTS public.tenants (
    id UUID PRIMARY KEY,
    name VARCHAR(255) NOT NULL DEFAULT '',
    created_at TIMESTAMP NOT NULL DEFAULT NOW()
);

CREATE TABLE IF NOT EXISTS core_users (
    id SERIAL PRIMARY KEY,
    tenant_id UUID REFERENCES public.tenants(id) ON DELETE CASCADE,
    created_at TIMESTAMP NOT NULL DEFAULT NOW()
);

CREATE TABLE IF NOT EXISTS core_passports (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at TIMESTAMP NOT NULL DEFAULT NOW()
);

-- Shaped like the host's uploads table: `path` holds where the bytes are (for provider-hosted
-- files not fetched yet, a provider reference URI), `hash` identifies the file.
CREATE TABLE IF NOT EXISTS core_uploads (
    id SERIAL PRIMARY KEY,
    tenant_id UUID REFERENCES public.tenants(id) ON DELETE CASCADE,
    hash VARCHAR(255) NOT NULL DEFAULT '',
    path TEXT NOT NULL DEFAULT '',
    name VARCHAR(255) NOT NULL DEFAULT '',
    size INTEGER NOT NULL DEFAULT 0,
    mimetype VARCHAR(255) NOT NULL DEFAULT '',
    created_at TIMESTAMP NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP NOT NULL DEFAULT NOW()
);
