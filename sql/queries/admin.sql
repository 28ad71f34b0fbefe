-- insert_tenant --
-- Create a tenant (standalone installs) or keep the existing one with that id
INSERT INTO public.tenants (id, name) VALUES ($1, $2)
ON CONFLICT (id) DO UPDATE SET name = CASE WHEN EXCLUDED.name = '' THEN tenants.name ELSE EXCLUDED.name END
RETURNING id, name;

-- tenant_exists --
-- Whether a tenant id is known
SELECT EXISTS (SELECT 1 FROM public.tenants WHERE id = $1);

-- insert_channel --
-- Register a provider channel of a tenant
INSERT INTO ingest_channels (tenant_id, transport, name, config)
VALUES ($1, $2, $3, $4::jsonb)
RETURNING id, tenant_id, transport, name, config, enabled;

-- get_channel --
-- One channel by id, enabled or not (the gateway answers 404 for disabled ones)
SELECT id, tenant_id, transport, name, config, enabled FROM ingest_channels WHERE id = $1;

-- find_channel_by_name --
-- A tenant's channel of a transport by name (lets `crm-ingest dev` reuse its demo channels)
SELECT id, tenant_id, transport, name, config, enabled
FROM ingest_channels
WHERE tenant_id = $1 AND transport = $2 AND name = $3
ORDER BY created_at
LIMIT 1;

-- channel_tenants --
-- The tenant each channel belongs to (the consumer checks every event against it)
SELECT id, tenant_id FROM ingest_channels WHERE id = ANY($1::uuid[]);
