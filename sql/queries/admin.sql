-- insert_tenant --
-- Create a tenant (standalone installs) or keep the existing one with that id
INSERT INTO public.tenants (id, name) VALUES ($1, $2)
ON CONFLICT (id) DO UPDATE SET name = CASE WHEN EXCLUDED.name = '' THEN tenants.name ELSE EXCLUDED.name END
RETURNING id, name;

-- tenant_exists --
-- Whether a tenant id is known
SELECT EXISTS (SELECT 1 FROM public.tenants WHERE id = $1);

-- insert_channel --
-- Register a provider channel of a tenant (its id is chosen first: secrets are sealed to it)
INSERT INTO ingest_channels (id, tenant_id, transport, name, config)
VALUES ($1, $2, $3, $4, $5::jsonb)
RETURNING id, tenant_id, transport, name, config, enabled;

-- lock_channel --
-- One channel, locked until the transaction ends (channel set/rotate, secrets rekey/migration)
SELECT id, tenant_id, transport, name, config, enabled FROM ingest_channels WHERE id = $1
FOR UPDATE;

-- update_channel_config --
-- Store a channel's new config (secrets already sealed)
UPDATE ingest_channels SET config = $2::jsonb, updated_at = NOW() WHERE id = $1
RETURNING id, tenant_id, transport, name, config, enabled;

-- channel_ids --
-- Every channel id (secrets rekey, migration and the key check walk them one by one)
SELECT id FROM ingest_channels ORDER BY id;

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

-- channel_configs --
-- Every channel's stored config (the start-up check that CRM_INGEST_SECRETS_KEY opens them)
SELECT id, transport, config FROM ingest_channels;

-- demo_user --
-- The demo tenant's first CRM user (crm-ingest dev's replies are written as it), made once
WITH found AS (SELECT id FROM core_users WHERE tenant_id = $1 ORDER BY id LIMIT 1),
made AS (
    INSERT INTO core_users (tenant_id) SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM found)
    RETURNING id
)
SELECT id FROM found UNION ALL SELECT id FROM made;

-- demo_chat --
-- The demo tenant's latest chat, if a webhook made one already
SELECT id FROM crm_chats WHERE tenant_id = $1 ORDER BY id DESC LIMIT 1;
