"""Publishing `message.send` commands: what `crm-ingest outbound send` does for ops and demos
(other services publish the same JSON with their own producers)."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ingest.config import Settings
from ingest.errors import PublishUnavailable
from ingest.events import SendCommand, command_headers, command_key, encode_command
from ingest.partitioning import CachedKeyPartitioner


async def publish_commands(settings: Settings, commands: Sequence[SendCommand]) -> None:
    """Publish commands to the commands topic and wait for every acknowledgement (acks=all);
    keyed by chat, so one chat's commands keep their order."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id="crm-ingest-commands",
        acks="all",
        enable_idempotence=settings.producer_idempotence,
        partitioner=CachedKeyPartitioner(),
    )
    try:
        await producer.start()
        for command in commands:
            await producer.send_and_wait(
                settings.outbound_commands_topic,
                encode_command(command),
                key=command_key(command).encode(),
                headers=command_headers(command),
            )
    except KafkaError as exc:
        raise PublishUnavailable(f"the broker did not take the command: {exc}") from exc
    finally:
        await producer.stop()
