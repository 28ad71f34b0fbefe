"""The WhatsApp sender against the Graph API fake over real HTTP (provider-apis.md §2.3-2.5,
§5), media uploaded from a real file:// object store."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from ingest.objectstore import ObjectStore
from ingest.transports.sending import (
    OutboundMessage,
    SendOutcomeUnknown,
    SendRejected,
    SendTransient,
    WhatsAppTemplate,
)
from tests.fakes.fixtures import logged, senders, stored_attachment
from tests.fakes.harness import Scripted
from tests.fakes.whatsapp import VERSION, WhatsAppFake
from tests.unit.test_whatsapp import one_status

TOKEN = "EAAG-fake-access-token-0123456789"
NUMBER = "106540352242922"
WA_ID = "16505551234"
CONFIG = {"access_token": TOKEN, "phone_number_id": NUMBER}


def message(**fields: Any) -> OutboundMessage:
    values: dict[str, Any] = {"command_id": uuid.uuid4(), "to": WA_ID, "text": "Hello"}
    return OutboundMessage(**(values | fields))


@pytest.fixture
def graph(whatsapp_api: WhatsAppFake) -> WhatsAppFake:
    whatsapp_api.add_token(TOKEN)
    whatsapp_api.phone_numbers.add(NUMBER)
    return whatsapp_api


async def send(
    provider_settings: dict[str, str],
    store: ObjectStore,
    outbound: OutboundMessage,
    config: dict[str, Any] | None = None,
) -> Any:
    async with senders(provider_settings, store) as by_transport:
        return await by_transport["whatsapp"].send(outbound, CONFIG if config is None else config)


async def test_text_reply_is_the_documented_request(
    graph: WhatsAppFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    result = await send(
        provider_settings, file_store, message(text="Shipped today", reply_to="wamid.IN1")
    )
    (call,) = graph.graph.calls("send")
    assert call.path == f"/{VERSION}/{NUMBER}/messages"
    assert call.headers["authorization"] == f"Bearer {TOKEN}"
    assert json.loads(call.body) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": f"+{WA_ID}",
        "type": "text",
        "text": {"preview_url": False, "body": "Shipped today"},
        "context": {"message_id": "wamid.IN1"},
    }
    assert result.provider_message_ids == (graph.sent[0].wamid,)
    assert result.provider_message_ids[0].startswith("wamid.")


async def test_template_with_body_parameters(
    graph: WhatsAppFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    graph.templates[("order_update", "en_US")] = 2
    template = WhatsAppTemplate("order_update", "en_US", ("Ada", "#1042"))
    result = await send(
        provider_settings,
        file_store,
        message(text=None, whatsapp_template=template, reply_to="wamid.X"),
    )
    (sent,) = graph.sent
    assert sent.body["template"] == {
        "name": "order_update",
        "language": {"code": "en_US", "policy": "deterministic"},
        "components": [
            {
                "type": "body",
                "parameters": [{"type": "text", "text": "Ada"}, {"type": "text", "text": "#1042"}],
            }
        ],
    }
    assert "context" not in sent.body  # not shown for templates
    assert result.provider_message_ids == (sent.wamid,)


@pytest.mark.parametrize(
    ("template", "code"),
    [
        (WhatsAppTemplate("no_such", "en_US", ()), "132001"),
        (WhatsAppTemplate("order_update", "de_DE", ("a", "b")), "132001"),
        (WhatsAppTemplate("order_update", "en_US", ("only one",)), "132000"),
    ],
)
async def test_bad_templates_are_rejected(
    template: WhatsAppTemplate,
    code: str,
    graph: WhatsAppFake,
    provider_settings: dict[str, str],
    file_store: ObjectStore,
) -> None:
    graph.templates[("order_update", "en_US")] = 2
    with pytest.raises(SendRejected) as caught:
        await send(provider_settings, file_store, message(text=None, whatsapp_template=template))
    assert caught.value.code == code
    assert graph.sent == []


async def test_media_is_uploaded_then_sent_by_id(
    graph: WhatsAppFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    photo = await stored_attachment(file_store, 1, b"\x89PNG" * 500, "chart.png", "image/png")
    pdf = await stored_attachment(file_store, 2, b"%PDF" * 50_000, "order.pdf", "application/pdf")
    result = await send(
        provider_settings, file_store, message(text="Your invoice", attachments=(photo, pdf))
    )
    uploads = graph.graph.calls("upload")
    assert [u.path for u in uploads] == [f"/{VERSION}/{NUMBER}/media"] * 2
    assert all(u.headers["authorization"] == f"Bearer {TOKEN}" for u in uploads)
    first, second = graph.uploads.values()
    assert (first.data, first.mime_type, first.filename) == (
        b"\x89PNG" * 500,
        "image/png",
        "chart.png",
    )
    assert (second.data, second.mime_type) == (b"%PDF" * 50_000, "application/pdf")
    image, document = (s.body for s in graph.sent)
    assert image["type"] == "image"
    assert image["image"] == {"id": first.media_id, "caption": "Your invoice"}
    assert document["type"] == "document"
    assert document["document"] == {"id": second.media_id, "filename": "order.pdf"}
    assert result.provider_message_ids == tuple(s.wamid for s in graph.sent)


async def test_outside_the_window_meta_accepts_then_fails_asynchronously(
    graph: WhatsAppFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    # The core gates on the window; if it is wrong, the failure comes later as a status.
    graph.window_closed.add(WA_ID)
    result = await send(provider_settings, file_store, message())
    assert graph.statuses[-1]["id"] == result.provider_message_ids[0]
    assert graph.statuses[-1]["errors"][0]["code"] == 131047


async def test_synchronous_window_error_is_rejected(
    graph: WhatsAppFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    graph.window_closed.add(WA_ID)
    graph.sync_window_errors = True
    with pytest.raises(SendRejected) as caught:
        await send(provider_settings, file_store, message())
    assert caught.value.code == "131047"


async def test_throughput_limit_is_transient(
    graph: WhatsAppFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    graph.throughput = 1
    await send(provider_settings, file_store, message(to="111"))
    with pytest.raises(SendTransient) as caught:
        await send(provider_settings, file_store, message(to="222"))
    assert caught.value.code == "130429"
    assert "throughput" in caught.value.message


async def test_pair_rate_is_transient_with_a_wait(
    graph: WhatsAppFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    graph.pair_burst = 1
    await send(provider_settings, file_store, message())
    with pytest.raises(SendTransient) as caught:
        await send(provider_settings, file_store, message())
    assert caught.value.code == "131056"
    assert caught.value.retry_after == 6.0
    graph.clock.advance(6)
    assert (await send(provider_settings, file_store, message())).provider_message_ids


async def test_bad_token_is_rejected_and_never_shown(
    graph: WhatsAppFake,
    provider_settings: dict[str, str],
    file_store: ObjectStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "EAAG-not-the-token-9876543210"
    with logged(caplog) as logs, pytest.raises(SendRejected) as caught:
        await send(provider_settings, file_store, message(), CONFIG | {"access_token": wrong})
    assert caught.value.code == "190"
    assert "access_token" in caught.value.message
    assert wrong not in str(caught.value)
    assert any("provider refused" in line for line in logs)
    assert wrong not in "".join(logs)


async def test_server_error_without_an_envelope_is_transient(
    graph: WhatsAppFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    graph.graph.script("send", Scripted(503, body=b"<html>unavailable</html>"))
    with pytest.raises(SendTransient):
        await send(provider_settings, file_store, message())


async def test_accepted_without_an_id_is_an_unknown_outcome(
    graph: WhatsAppFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    graph.graph.script("send", Scripted(200, json={"messaging_product": "whatsapp"}))
    with pytest.raises(SendOutcomeUnknown):
        await send(provider_settings, file_store, message())


async def test_check_names_missing_keys_and_rules(
    graph: WhatsAppFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    template = WhatsAppTemplate("t", "en_US", ())
    async with senders(provider_settings, file_store) as by_transport:
        sender = by_transport["whatsapp"]
        with pytest.raises(SendRejected, match="--config phone_number_id="):
            sender.check(message(), {"access_token": TOKEN})
        with pytest.raises(SendRejected, match="--config access_token="):
            sender.check(message(), {"phone_number_id": NUMBER})
        with pytest.raises(SendRejected, match="template goes out alone"):
            sender.check(message(whatsapp_template=template), CONFIG)
    assert graph.graph.requests == []


async def test_a_failed_later_message_reports_those_already_accepted(
    graph: WhatsAppFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    graph.pair_burst = 1  # the second message to the same user hits the pair rate
    photo = await stored_attachment(file_store, 9, b"\xff\xd8", "a.jpg", "image/jpeg")
    with pytest.raises(SendTransient) as caught:
        await send(provider_settings, file_store, message(text="t" * 2000, attachments=(photo,)))
    (first,) = graph.sent
    assert first.body["type"] == "text"  # too long for a caption: it went first, alone
    assert caught.value.accepted_ids == (first.wamid,)


async def test_status_webhooks_refer_to_the_returned_wamid(
    graph: WhatsAppFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    result = await send(provider_settings, file_store, message())
    (wamid,) = result.provider_message_ids
    webhook = graph.status_webhook(wamid, "read")
    value = webhook["entry"][0]["changes"][0]["value"]
    assert value["metadata"]["phone_number_id"] == NUMBER
    assert [(s["id"], s["status"], s["recipient_id"]) for s in value["statuses"]] == [
        (wamid, "read", WA_ID)
    ]
    assert [s["status"] for s in graph.statuses] == ["sent", "read"]
    # Our own webhook adapter reads it as the status of that message.
    status = one_status(webhook)
    assert (status.external_message_id, status.status) == (wamid, "read")
