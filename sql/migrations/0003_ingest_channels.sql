-- Provider channels: which tenant a webhook URL belongs to, and its secrets.
CREATE TABLE ingest_channels (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL REFERENCES public.tenants(id) ON DELETE CASCADE,
    transport VARCHAR(50) NOT NULL CHECK (transport IN ('telegram', 'whatsapp', 'sms', 'email')),
    name VARCHAR(255) NOT NULL DEFAULT '',
    config JSONB NOT NULL DEFAULT '{}'::jsonb,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    created_at TIMESTAMP NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_ingest_channels_tenant_id ON ingest_channels(tenant_id);
