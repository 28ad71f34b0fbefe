"""crm-ingest core: Kafka consumers that write inbound events into PostgreSQL."""
