"""The Twilio sender against the REST fake over real HTTP (provider-apis.md §3.3-3.5, §5)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import pytest
from starlette.requests import Request
from starlette.responses import Response

from ingest.objectstore import ObjectStore
from ingest.transports.base import Channel, ParseContext, RawRequest
from ingest.transports.sending import (
    OutboundAttachment,
    OutboundMessage,
    SendRejected,
    SendTransient,
    WhatsAppTemplate,
)
from ingest.transports.sms import TwilioSmsAdapter
from tests.fakes.fixtures import logged, senders, serving, stored_attachment
from tests.fakes.harness import FakeServer, Scripted
from tests.fakes.twilio import TwilioFake

ACCOUNT = "AC" + "a" * 32
AUTH_TOKEN = "f" * 32
KEY_SID = "SK" + "b" * 32
KEY_SECRET = "key-secret-0123456789"
TO = "+15558675310"
TOKEN_CONFIG = {"account_sid": ACCOUNT, "auth_token": AUTH_TOKEN, "from": "+15557122661"}


def message(**fields: Any) -> OutboundMessage:
    values: dict[str, Any] = {"command_id": uuid.uuid4(), "to": TO, "text": "Hi there"}
    return OutboundMessage(**(values | fields))


@pytest.fixture
def twilio(twilio_api: TwilioFake) -> TwilioFake:
    twilio_api.add_account(ACCOUNT, AUTH_TOKEN)
    twilio_api.add_api_key(KEY_SID, KEY_SECRET, ACCOUNT)
    return twilio_api


async def send(
    provider_settings: dict[str, str],
    store: ObjectStore,
    outbound: OutboundMessage,
    config: dict[str, Any] | None = None,
) -> Any:
    async with senders(provider_settings, store) as by_transport:
        return await by_transport["sms"].send(outbound, TOKEN_CONFIG if config is None else config)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_message_is_the_documented_form_post(
    twilio: TwilioFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    config = TOKEN_CONFIG | {"public_url": "https://crm.example.com/webhooks/sms/7"}
    result = await send(provider_settings, file_store, message(), config)
    (call,) = twilio.api.calls("messages")
    assert call.path == f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
    assert call.headers["authorization"] == basic(ACCOUNT, AUTH_TOKEN)
    assert call.headers["content-type"] == "application/x-www-form-urlencoded"
    assert dict(parse_qsl(call.body.decode())) == {
        "To": TO,
        "From": "+15557122661",
        "Body": "Hi there",
        "StatusCallback": "https://crm.example.com/webhooks/sms/7",
    }
    assert result.provider_message_ids == (twilio.sent[0].sid,)
    assert result.provider_message_ids[0].startswith("SM")
    assert result.detail["status"] == "queued"


async def test_api_key_and_messaging_service(
    twilio: TwilioFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    config = {
        "account_sid": ACCOUNT,
        "auth_token": AUTH_TOKEN,  # the API key wins: Twilio's recommended way
        "api_key_sid": KEY_SID,
        "api_key_secret": KEY_SECRET,
        "messaging_service_sid": "MG" + "c" * 32,
    }
    await send(provider_settings, file_store, message(), config)
    (call,) = twilio.api.calls("messages")
    assert call.headers["authorization"] == basic(KEY_SID, KEY_SECRET)
    form = dict(parse_qsl(call.body.decode()))
    assert form["MessagingServiceSid"] == "MG" + "c" * 32
    assert "From" not in form
    assert "StatusCallback" not in form  # no public_url on the channel


async def test_over_1600_characters_is_refused_never_cut(
    twilio: TwilioFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    with pytest.raises(SendRejected) as caught:
        await send(provider_settings, file_store, message(text="x" * 1601))
    assert caught.value.code == "too_long"
    assert "1601" in caught.value.message
    assert twilio.api.requests == []
    await send(provider_settings, file_store, message(text="x" * 1600))
    assert twilio.sent[0].form["Body"] == ["x" * 1600]


async def test_public_media_urls_go_as_media_url_others_are_refused(
    twilio: TwilioFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    public = [
        OutboundAttachment(n, f"https://media.example.com/u/{n}.jpg", None, "image/jpeg", 10)
        for n in (1, 2)
    ]
    await send(provider_settings, file_store, message(attachments=tuple(public)))
    assert twilio.sent[0].form["MediaUrl"] == [a.url for a in public]
    local = await stored_attachment(file_store, 3, b"jpeg", "a.jpg", "image/jpeg")
    with pytest.raises(SendRejected) as caught:
        await send(provider_settings, file_store, message(attachments=(local,)))
    assert caught.value.code == "attachment_not_public"
    assert len(twilio.sent) == 1


@pytest.mark.parametrize("code", [21211, 21408, 21610, 21611, 21606])
async def test_sync_errors_are_permanent(
    code: int, twilio: TwilioFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    twilio.refusing[TO] = code
    with pytest.raises(SendRejected) as caught:
        await send(provider_settings, file_store, message())
    assert caught.value.code == str(code)
    assert twilio.sent == []


async def test_too_many_requests_is_transient_with_retry_after(
    twilio: TwilioFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    twilio.refusing[TO] = 20429
    with pytest.raises(SendTransient) as caught:
        await send(provider_settings, file_store, message())
    assert (caught.value.code, caught.value.retry_after) == ("20429", 2.0)


async def test_server_error_is_transient(
    twilio: TwilioFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    twilio.api.script("messages", Scripted(500, json={"code": 20500, "status": 500}))
    with pytest.raises(SendTransient):
        await send(provider_settings, file_store, message())


async def test_bad_credentials_are_rejected_and_never_shown(
    twilio: TwilioFake,
    provider_settings: dict[str, str],
    file_store: ObjectStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "e" * 32
    with logged(caplog) as logs, pytest.raises(SendRejected) as caught:
        await send(provider_settings, file_store, message(), TOKEN_CONFIG | {"auth_token": wrong})
    assert caught.value.code == "20003"
    assert "--config" in caught.value.message
    assert wrong not in str(caught.value)
    assert any("provider refused" in line for line in logs)
    assert wrong not in "".join(logs)


async def test_check_names_missing_keys(
    twilio: TwilioFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    async with senders(provider_settings, file_store) as by_transport:
        sender = by_transport["sms"]
        with pytest.raises(SendRejected, match="--config account_sid="):
            sender.check(message(), {"auth_token": AUTH_TOKEN, "from": "+1"})
        with pytest.raises(SendRejected, match="api_key_secret"):
            sender.check(message(), {"account_sid": ACCOUNT, "from": "+1"})
        with pytest.raises(SendRejected, match="--config from="):
            sender.check(message(), {"account_sid": ACCOUNT, "auth_token": AUTH_TOKEN})
        with pytest.raises(SendRejected, match="WhatsApp template"):
            sender.check(message(whatsapp_template=WhatsAppTemplate("t", "en", ())), TOKEN_CONFIG)
    assert twilio.api.requests == []


@pytest.fixture
def status_receiver() -> Iterator[tuple[FakeServer, list[tuple[dict[str, str], bytes]]]]:
    received: list[tuple[dict[str, str], bytes]] = []
    server = FakeServer("status-receiver")

    async def record(request: Request) -> Response:
        received.append((dict(request.headers), await request.body()))
        return Response(b"", 200)

    server.route("/webhooks/sms/7", "status", record, ["POST"])
    with serving(server):
        yield server, received


async def test_status_callbacks_are_posted_signed_to_the_public_url(
    twilio: TwilioFake,
    provider_settings: dict[str, str],
    file_store: ObjectStore,
    status_receiver: tuple[FakeServer, list[tuple[dict[str, str], bytes]]],
) -> None:
    server, received = status_receiver
    callback = f"{server.url}/webhooks/sms/7"
    config = TOKEN_CONFIG | {"public_url": callback}
    result = await send(provider_settings, file_store, message(), config)
    (sid,) = result.provider_message_ids
    assert twilio.status_callback(sid, "delivered").status_code == 200
    assert twilio.status_callback(sid, "undelivered", 30007).status_code == 200
    # Our own webhook adapter verifies each against the channel's public_url and reads it as
    # the status of the message just sent.
    adapter = TwilioSmsAdapter(default_region="US")
    channel = Channel(uuid.uuid4(), uuid.uuid4(), "sms", config)
    events = [
        adapter.handle(
            RawRequest("POST", callback, headers, body),
            ParseContext(channel=channel, received_at=datetime.now(UTC), correlation_id=None),
        ).events
        for headers, body in received
    ]
    assert [(e.external_message_id, e.status) for (e,) in events] == [
        (sid, "delivered"),
        (sid, "failed"),
    ]
