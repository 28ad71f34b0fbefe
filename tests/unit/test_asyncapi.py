"""The AsyncAPI document covers every topic the service uses and ships as generated."""

from __future__ import annotations

from ingest.asyncapi import generate, shipped
from ingest.config import load_settings
from ingest.topics import service_topics

DEFAULTS = load_settings(DATABASE_URL="", KAFKA_BOOTSTRAP_SERVERS="")


def test_shipped_document_is_the_generated_one() -> None:
    # Regenerate with: crm-ingest asyncapi | python -m json.tool --sort-keys > ingest/asyncapi.json
    assert shipped() == generate(DEFAULTS)


def test_every_service_topic_is_documented() -> None:
    channels = generate(DEFAULTS)["channels"]
    addresses = {channel["address"] for channel in channels.values()}
    assert addresses == set(service_topics(DEFAULTS))


def test_payload_schemas_are_the_contract_models() -> None:
    schemas = generate(DEFAULTS)["components"]["schemas"]
    for model in (
        "MessageEvent",
        "StatusEvent",
        "MessageCreated",
        "MessageUpdated",
        "ClientCreated",
        "ChatCreated",
        "RawWebhook",
        "ClientUpdated",
        "ClientIdentityConflict",
        "AttachmentOutcome",
        "SendCommand",
    ):
        assert model in schemas
    assert "schema_version" in schemas["MessageEvent"]["properties"]
    assert {"command_id", "whatsapp_template", "template_params"} <= set(
        schemas["SendCommand"]["properties"]
    )


def test_kept_webhooks_are_documented_on_the_dead_letter_topic() -> None:
    document = generate(DEFAULTS)
    kept = document["components"]["schemas"]["RawWebhook"]
    assert {"body", "body_ref", "reason", "reason_kind", "channel_id"} <= set(kept["properties"])
    assert {"crm.inbound.dlq:publish-kept", "crm.inbound.dlq:consume"} <= set(document["channels"])
