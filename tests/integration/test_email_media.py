"""Email bytes are never dropped: Mailgun `forward()` files and raw messages are stored before
the webhook is answered, and a store that is down gets the provider a 503, so it retries."""

from __future__ import annotations

import uuid
from email.message import EmailMessage

import asyncpg
import httpx
import pytest

from ingest.channels import ChannelDirectory
from ingest.config import Settings
from ingest.embedded import free_port
from ingest.gateway import create_app
from ingest.objectstore import open_store
from ingest.transports import load_adapters
from tests.integration.pipeline import Gateway, RecordingPublisher, TenantChannel
from tests.integration.rows import message_meta, settled_rows, wait_messages
from tests.integration.signing import mailgun_fields, mailgun_signed, post_email
from tests.support import read_object, sha256

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("consumer")]

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
FORWARDED = (
    b"From: a@example.org\r\nSubject: fwd\r\nMessage-ID: <inner@example.org>\r\n\r\nInner.\r\n"
)


def multipart(
    fields: dict[str, str], files: list[tuple[str, str, str, bytes]]
) -> tuple[bytes, str]:
    """A multipart/form-data body as Mailgun posts it: fields, then `attachment-N` files."""
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in fields.items():
        disposition = f'Content-Disposition: form-data; name="{name}"'
        parts.append(f"--{boundary}\r\n{disposition}\r\n\r\n{value}\r\n".encode())
    for field, filename, content_type, data in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


async def test_mailgun_forward_files_are_stored_as_their_own_objects(
    gateway: Gateway, pool: asyncpg.Pool, email: TenantChannel, settings: Settings
) -> None:
    fields = mailgun_signed(
        {**mailgun_fields("mailgun_basics"), "attachment-count": "2", "Message-Id": "<mg-1@x>"}
    )
    files = [
        ("attachment-1", "logo.png", "image/png", PNG),
        ("attachment-2", "forwarded.eml", 'message/rfc822; charset="us-ascii"', FORWARDED),
    ]
    body, content_type = multipart(fields, files)
    response = await gateway.client.post(
        email.path, content=body, headers={"content-type": content_type}
    )
    assert response.status_code == 200, response.text

    rows = await wait_messages(pool, email, 1)
    store = open_store(settings.media_store)
    attachments = rows["attachments"]
    assert [(a["name"], a["size"], a["hash"]) for a in attachments] == [
        ("logo.png", len(PNG), sha256(PNG)),
        ("forwarded.eml", len(FORWARDED), sha256(FORWARDED)),
    ]
    assert [await read_object(store, a["path"]) for a in attachments] == [PNG, FORWARDED]
    assert len({a["path"] for a in attachments}) == 2  # each file its own object


async def test_a_store_that_is_down_gets_a_503_and_the_retry_stores_once(
    gateway: Gateway,
    pool: asyncpg.Pool,
    email: TenantChannel,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = EmailMessage()
    message["From"] = "Ann <ann@example.org>"
    message["Subject"] = "photo"
    message["Message-ID"] = "<down-then-up@example.org>"
    message.set_content("Here it is.")
    message.add_attachment(PNG, maintype="image", subtype="png", filename="p.png")
    raw = message.as_bytes()

    # An S3 store nobody listens on: what a provider sees while the store is down.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    down = open_store("s3://down/media")
    publisher = RecordingPublisher(settings)
    await publisher.start()
    app = create_app(
        settings,
        publisher=publisher,
        channels=ChannelDirectory(settings, pool),
        adapters=load_adapters(),
        media_store=down,
    )
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="https://gateway.test"
        ) as client:
            refused = await post_email(client, email, raw)
    finally:
        await publisher.stop()
        await down.close()
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == str(settings.retry_after_s)
    assert publisher.published == []  # nothing published without its bytes

    # The provider retries once the store is back (the gateway with the working store).
    assert (await post_email(gateway, email, raw)).status_code == 200
    assert (await post_email(gateway, email, raw)).status_code == 200  # and once more
    rows = await settled_rows(pool, email, 1)
    assert len(rows["messages"]) == 1
    [attachment] = rows["attachments"]
    assert attachment["hash"] == sha256(PNG)
    assert await read_object(open_store(settings.media_store), attachment["path"]) == PNG
    meta = await message_meta(pool, rows["messages"][0]["id"])
    assert await read_object(open_store(settings.media_store), meta["raw_mime"]) == raw
