"""crm-ingest provider edge: webhook gateway, transport adapters, event publishing."""
