"""The email sender against a real SMTP server (aiosmtpd, tests/fakes/smtp.py) over TCP
(provider-apis.md §4.1, §5), attachments read from a real file:// object store."""

from __future__ import annotations

import uuid
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from typing import Any

import pytest

from ingest.objectstore import ObjectStore
from ingest.transports.sending import (
    EmailThread,
    OutboundMessage,
    SendOutcomeUnknown,
    SendRejected,
    SendTransient,
)
from tests.fakes.fixtures import logged, senders, stored_attachment
from tests.fakes.smtp import SmtpFake

CLIENT = "ada@client.example"
FROM = "Acme Support <support@acme.example>"
MESSAGE_ID = "<reply-1@acme.example>"
THREAD = EmailThread(
    subject="Where is my order?",
    in_reply_to="<in-2@client.example>",
    references=("<out-1@acme.example>", "<in-2@client.example>"),
)


def message(**fields: Any) -> OutboundMessage:
    values: dict[str, Any] = {
        "command_id": uuid.uuid4(),
        "to": CLIENT,
        "text": "It ships today.",
        "email_message_id": MESSAGE_ID,
        "email_thread": THREAD,
    }
    return OutboundMessage(**(values | fields))


async def send(
    smtp: SmtpFake,
    store: ObjectStore,
    outbound: OutboundMessage,
    config: dict[str, Any] | None = None,
    **settings: Any,
) -> Any:
    config = {"smtp_url": smtp.url(), "from_address": FROM} if config is None else config
    async with senders({}, store, **settings) as by_transport:
        return await by_transport["email"].send(outbound, config)


def parsed(raw: bytes) -> EmailMessage:
    result = message_from_bytes(raw, policy=default)
    assert isinstance(result, EmailMessage)
    return result


async def test_reply_threads_into_the_conversation(
    smtp_server: SmtpFake, file_store: ObjectStore
) -> None:
    result = await send(smtp_server, file_store, message())
    (received,) = smtp_server.received
    assert received.mail_from == "support@acme.example"
    assert received.rcpt_tos == [CLIENT]
    email = parsed(received.data)
    assert email["From"] == FROM
    assert email["To"] == CLIENT
    assert email["Subject"] == "Re: Where is my order?"
    assert email["Message-ID"] == MESSAGE_ID
    assert email["In-Reply-To"] == "<in-2@client.example>"
    assert email["References"] == "<out-1@acme.example> <in-2@client.example>"
    body = email.get_body(("plain",))
    assert body is not None
    assert body.get_content().strip() == "It ships today."
    assert result.provider_message_ids == (MESSAGE_ID,)
    assert result.detail["smtp_reply"] == f"2.0.0 Ok: queued as {received.queue_id}"


async def test_parent_is_appended_to_references_once(
    smtp_server: SmtpFake, file_store: ObjectStore
) -> None:
    thread = EmailThread("Re: Order", "<in-9@client.example>", ("<out-8@acme.example>",))
    await send(smtp_server, file_store, message(email_thread=thread))
    email = parsed(smtp_server.received[0].data)
    assert email["Subject"] == "Re: Order"  # not "Re: Re:"
    assert email["References"] == "<out-8@acme.example> <in-9@client.example>"


async def test_attachments_come_from_the_store(
    smtp_server: SmtpFake, file_store: ObjectStore
) -> None:
    pdf = await stored_attachment(file_store, 1, b"%PDF" * 10_000, "invoice.pdf", "application/pdf")
    await send(smtp_server, file_store, message(attachments=(pdf,)))
    email = parsed(smtp_server.received[0].data)
    (part,) = list(email.iter_attachments())
    assert part.get_filename() == "invoice.pdf"
    assert part.get_content_type() == "application/pdf"
    assert part.get_content() == b"%PDF" * 10_000


async def test_login_from_the_url(smtp_server: SmtpFake, file_store: ObjectStore) -> None:
    smtp_server.users["crm"] = "p@ss word"
    config = {"smtp_url": smtp_server.url("crm", "p%40ss%20word"), "from_address": FROM}
    await send(smtp_server, file_store, message(), config)
    assert smtp_server.received[0].login == "crm"


async def test_wrong_password_is_rejected_naming_credentials_never_showing_them(
    smtp_server: SmtpFake, file_store: ObjectStore, caplog: pytest.LogCaptureFixture
) -> None:
    smtp_server.users["crm"] = "right"
    config = {"smtp_url": smtp_server.url("crm", "wrong-secret"), "from_address": FROM}
    with logged(caplog) as logs, pytest.raises(SendRejected) as caught:
        await send(smtp_server, file_store, message(), config)
    assert caught.value.code == "535"
    assert "credentials" in caught.value.message
    assert "crm-ingest channel set" in caught.value.message
    assert "wrong-secret" not in str(caught.value)
    assert any("smtp refused" in line for line in logs)
    assert "wrong-secret" not in "".join(logs)
    assert smtp_server.received == []


async def test_recipient_refused_is_permanent_deferred_is_transient(
    smtp_server: SmtpFake, file_store: ObjectStore
) -> None:
    smtp_server.refuse_rcpt.add(CLIENT)
    with pytest.raises(SendRejected) as refused:
        await send(smtp_server, file_store, message())
    assert refused.value.code == "550"
    smtp_server.refuse_rcpt.clear()
    smtp_server.defer_rcpt.add(CLIENT)
    with pytest.raises(SendTransient) as deferred:
        await send(smtp_server, file_store, message())
    assert deferred.value.code == "450"
    assert smtp_server.received == []


async def test_relay_rewriting_the_message_id_is_reported(
    smtp_server: SmtpFake, file_store: ObjectStore
) -> None:
    smtp_server.rewrite_message_id = True
    result = await send(smtp_server, file_store, message())
    relay_id = parsed(smtp_server.received[0].data)["Message-ID"]
    assert relay_id != MESSAGE_ID
    assert result.provider_message_ids == (MESSAGE_ID,)  # ours, recorded before sending
    assert relay_id in result.detail["smtp_reply"]  # and the relay's, to settle by either


async def test_no_answer_to_data_is_an_unknown_outcome(
    smtp_server: SmtpFake, file_store: ObjectStore
) -> None:
    smtp_server.data_delay_s = 1.0
    with pytest.raises(SendOutcomeUnknown):
        await send(smtp_server, file_store, message(), outbound_timeout_s=0.3)


async def test_server_down_is_transient(file_store: ObjectStore) -> None:
    config = {"smtp_url": "smtp://127.0.0.1:9", "from_address": FROM}
    async with senders({}, file_store) as by_transport:
        with pytest.raises(SendTransient) as caught:
            await by_transport["email"].send(message(), config)
    assert caught.value.code == "network"


async def test_check_names_missing_and_bad_keys(file_store: ObjectStore) -> None:
    async with senders({}, file_store) as by_transport:
        sender = by_transport["email"]
        with pytest.raises(SendRejected, match="--config smtp_url="):
            sender.check(message(), {"from_address": FROM})
        with pytest.raises(SendRejected, match="--config from_address="):
            sender.check(message(), {"smtp_url": "smtp://h"})
        with pytest.raises(SendRejected, match="smtp:// or smtps://"):
            sender.check(message(), {"smtp_url": "http://h", "from_address": FROM})


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_tls_starttls_when_offered_and_smtps(
    mode: str, smtp_tls_servers: dict[str, SmtpFake], file_store: ObjectStore
) -> None:
    server = smtp_tls_servers[mode]
    server.users["crm"] = "secret"  # the STARTTLS server takes AUTH only once TLS is up
    config = {"smtp_url": server.url("crm", "secret"), "from_address": FROM}
    result = await send(server, file_store, message(), config)
    assert server.url().startswith("smtps://" if mode == "implicit" else "smtp://")
    assert server.tls_sessions == 1
    assert server.received[0].login == "crm"
    assert result.provider_message_ids == (MESSAGE_ID,)


async def test_an_untrusted_certificate_is_refused(
    smtp_tls_servers: dict[str, SmtpFake], file_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE")
    server = smtp_tls_servers["implicit"]
    with pytest.raises(SendRejected) as caught:
        await send(server, file_store, message())
    assert caught.value.code == "tls_certificate"
    assert server.received == []


async def test_headers_cannot_be_injected(smtp_server: SmtpFake, file_store: ObjectStore) -> None:
    forged = EmailThread("Order\r\nBcc: victim@example.com", None, ())
    await send(smtp_server, file_store, message(email_thread=forged))
    email = parsed(smtp_server.received[0].data)
    assert email["Subject"] == "Re: Order Bcc: victim@example.com"
    assert email["Bcc"] is None
    with pytest.raises(SendRejected) as caught:
        await send(smtp_server, file_store, message(to="a@b.example\r\nBcc: victim@example.com"))
    assert caught.value.code == "bad_header"
    assert len(smtp_server.received) == 1
