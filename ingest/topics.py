"""Topic administration: create the service's topics where missing (`crm-ingest topics`)."""

from __future__ import annotations

import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from ingest.config import Settings


def service_topics(settings: Settings) -> list[str]:
    return [
        *settings.inbound_topics,
        settings.dlq_topic,
        settings.chat_events_topic,
        settings.outbound_commands_topic,
    ]


async def ensure_topics(settings: Settings) -> list[str]:
    """Create missing topics; returns the names created (existing ones are left as they are)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers, client_id="crm-ingest-admin"
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in service_topics(settings) if t not in existing]
        if missing:
            # Another process may create them between list and create.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(t, settings.partitions, settings.replication_factor) for t in missing]
                )
        return missing
    finally:
        await admin.close()
