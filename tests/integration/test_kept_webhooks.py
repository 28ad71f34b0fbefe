"""Authenticated webhooks that cannot become events, end to end on real services: answered 200,
published to the dead-letter topic as raw webhook records, recorded by the running consumer in
`ingest_dead_letters` (what `dlq list` shows), and parsed again by `dlq replay` with the current
code: still unprocessable, they stay with the same reason and nothing is duplicated; processable
(a channel fixed, a parser fixed), they are ingested exactly once.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from handlers.replay import list_dead_letters, replay_dead_letters
from ingest.channels import ChannelDirectory
from ingest.config import Settings
from ingest.errors import UnprocessablePayload
from ingest.events import decode_raw_webhook
from ingest.gateway import create_app
from ingest.intake import Reparser, StoreClaimCheck
from ingest.objectstore import open_store
from ingest.transports import load_adapters
from ingest.transports.base import ParseContext, RawRequest, WebhookResult
from ingest.transports.email import EmailAdapter
from ingest.transports.telegram import TelegramAdapter
from tests.integration.pipeline import Gateway, RecordingPublisher, TenantChannel
from tests.integration.rows import tenant_rows, wait_messages
from tests.integration.signing import (
    eml,
    post_email,
    post_mailgun,
    post_sms,
    post_telegram,
    post_whatsapp,
    signed_channel,
    sms_fields,
    tg_payload,
    wa_payload,
    wa_raw,
    wa_text,
)
from tests.support import eventually

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("consumer")]

DEAD_LETTERS = """
SELECT id, reason_kind, transport, error_message, payload, replayed_at
FROM ingest_dead_letters WHERE channel_id = $1 ORDER BY id"""


async def letters(pool: asyncpg.Pool, channel: TenantChannel, count: int) -> list[Any]:
    """The channel's kept webhooks once the consumer has recorded `count` of them."""
    rows: list[Any] = await eventually(
        lambda: pool.fetch(DEAD_LETTERS, channel.channel_id), lambda r: len(r) >= count
    )
    assert len(rows) == count, rows
    return rows


async def replay(settings: Settings, pool: asyncpg.Pool, *ids: int) -> dict[str, Any]:
    reparse = Reparser(ChannelDirectory(settings, pool), load_adapters())
    return await replay_dead_letters(settings, list(ids), reparse=reparse)


async def message_count(pool: asyncpg.Pool, channel: TenantChannel) -> int:
    return len((await tenant_rows(pool, channel.tenant_id))["messages"])


Post = Callable[[Gateway, TenantChannel], Awaitable[httpx.Response]]
MALFORMED: dict[str, tuple[str, Post, str, str]] = {
    "telegram": (
        "telegram",
        lambda g, c: post_telegram(g, c, b"{not json"),
        "malformed",
        "malformed JSON: *",
    ),
    "whatsapp": (
        "whatsapp",
        lambda g, c: post_whatsapp(g, c, b"[]"),
        "malformed",
        "expected a JSON object",
    ),
    "sms": (
        "sms",
        lambda g, c: post_sms(g, c, [(k, v) for k, v in sms_fields("basic_text") if k != "From"]),
        "unprocessable",
        "missing From",
    ),
    "email": (
        "email",
        lambda g, c: post_email(g, c, b"Subject: nobody\r\n\r\nwho sent this?\r\n"),
        "no_sender",
        "email has no sender address (From, Reply-To, Sender)",
    ),
    "mailgun": (
        "email",
        lambda g, c: post_mailgun(g, c, {"body-plain": "who sent this", "message-headers": "[]"}),
        "no_sender",
        "email has no sender address (From, Reply-To, Sender)",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_signed_malformed_body_is_200_kept_listed_and_stays_on_replay(
    settings: Settings, pool: asyncpg.Pool, gateway: Gateway, case: str
) -> None:
    transport, post, kind, reason = MALFORMED[case]
    channel = await signed_channel(pool, transport)  # type: ignore[arg-type]
    response = await post(gateway, channel)
    assert response.status_code == 200, response.text

    [row] = await letters(pool, channel, 1)
    assert (row["reason_kind"], row["transport"], row["replayed_at"]) == (kind, transport, None)
    kept = decode_raw_webhook(row["payload"])
    assert kept.inline_bytes() == response.request.content  # the verified bytes, exactly
    assert kept.reason == row["error_message"]
    if reason.endswith("*"):
        assert kept.reason.startswith(reason[:-1])
    else:
        assert kept.reason == reason
    listed = [r for r in await list_dead_letters(settings) if r["id"] == row["id"]]
    assert [(r["reason_kind"], r["error_message"], r["transport"]) for r in listed] == [
        (kind, kept.reason, transport)
    ]
    assert listed[0]["channel_id"] == channel.channel_id

    summary = await replay(settings, pool, row["id"])
    print(f"\n[kept {case}] reason={kept.reason!r} replay={summary}")
    assert (summary["selected"], summary["replayed"], summary["still_failing"]) == (1, 0, 1)
    assert summary["created"] == 0
    [again] = await pool.fetch(DEAD_LETTERS, channel.channel_id)  # still one, not a copy
    assert (again["id"], again["reason_kind"], again["error_message"]) == (
        row["id"],
        kind,
        kept.reason,
    )
    assert again["replayed_at"] is None
    assert await message_count(pool, channel) == 0


async def test_whatsapp_batch_stores_the_valid_elements_and_keeps_each_malformed_one(
    settings: Settings, pool: asyncpg.Pool, gateway: Gateway
) -> None:
    channel = await signed_channel(pool, "whatsapp")
    doc = wa_payload("image_url.json")
    value = doc["entry"][0]["changes"][0]["value"]
    bad_timestamp = {**wa_text("two", wamid="wamid.k2", timestamp=1700000002), "timestamp": "x"}
    value["messages"] = [
        wa_text("one", wamid="wamid.k1", timestamp=1700000001),
        bad_timestamp,
        wa_text("three", wamid="wamid.k3", timestamp=1700000003),
    ]
    value["statuses"] = [{"id": 5, "status": "read", "timestamp": "1700000004"}]
    response = await post_whatsapp(gateway, channel, doc)
    assert response.status_code == 200

    rows = await wait_messages(pool, channel, 2)
    assert sorted(m["message"] for m in rows["messages"]) == ["one", "three"]
    kept = await letters(pool, channel, 2)
    records = [decode_raw_webhook(r["payload"]) for r in kept]
    assert sorted((r.element or "", r.reason_kind) for r in records) == [
        ("entry.0.changes.0.value.messages.1", "unprocessable"),
        ("entry.0.changes.0.value.statuses.0", "unprocessable"),
    ]
    by_element = {r.element: r for r in records}
    alone = json.loads(by_element["entry.0.changes.0.value.messages.1"].inline_bytes() or b"")
    assert alone["entry"][0]["changes"][0]["value"]["messages"] == [bad_timestamp]

    summary = await replay(settings, pool, *(r["id"] for r in kept))
    assert (summary["replayed"], summary["still_failing"], summary["created"]) == (0, 2, 0)
    after = await pool.fetch(DEAD_LETTERS, channel.channel_id)
    assert [(r["id"], r["error_message"]) for r in after] == [
        (r["id"], r["error_message"]) for r in kept
    ]  # the same reasons, recorded at receipt
    assert await message_count(pool, channel) == 2


async def test_kept_while_the_channel_was_misconfigured_is_ingested_once_after_the_fix(
    settings: Settings, pool: asyncpg.Pool, gateway: Gateway
) -> None:
    channel = await signed_channel(pool, "whatsapp", phone_number_id="999000111")
    body = wa_raw("text_official.json")
    assert (await post_whatsapp(gateway, channel, body)).status_code == 200
    [row] = await letters(pool, channel, 1)
    assert row["reason_kind"] == "channel_mismatch"
    assert (await replay(settings, pool, row["id"]))["still_failing"] == 1  # not fixed yet

    number = wa_payload("text_official.json")["entry"][0]["changes"][0]["value"]["metadata"]
    await pool.execute(
        "UPDATE ingest_channels"
        " SET config = config || jsonb_build_object('phone_number_id', $2::text) WHERE id = $1",
        channel.channel_id,
        number["phone_number_id"],
    )
    summary = await replay(settings, pool, row["id"])
    assert (summary["replayed"], summary["still_failing"], summary["created"]) == (1, 0, 1)
    [fixed] = await pool.fetch(DEAD_LETTERS, channel.channel_id)
    assert fixed["replayed_at"] is not None

    # Exactly once: replayed again, and the provider's own retry of the same bytes.
    await pool.execute("UPDATE ingest_dead_letters SET replayed_at = NULL WHERE id = $1", row["id"])
    again = await replay(settings, pool, row["id"])
    assert (again["created"], again["already_present"]) == (0, 1)
    assert (await post_whatsapp(gateway, channel, body)).status_code == 200
    await eventually(lambda: message_count(pool, channel), lambda n: n > 1, within=3)
    assert await message_count(pool, channel) == 1
    assert len(await pool.fetch(DEAD_LETTERS, channel.channel_id)) == 1


async def test_kept_by_a_parser_since_fixed_is_ingested_once(
    settings: Settings, pool: asyncpg.Pool, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = await signed_channel(pool, "telegram")
    update = tg_payload("text_official.json")

    def not_yet_understood(
        self: TelegramAdapter, request: RawRequest, ctx: ParseContext, verified: Any = None
    ) -> WebhookResult:
        raise UnprocessablePayload("message: a shape this parser does not know yet")

    monkeypatch.setattr(TelegramAdapter, "parse", not_yet_understood)
    assert (await post_telegram(gateway, channel, update)).status_code == 200
    [row] = await letters(pool, channel, 1)
    assert row["error_message"] == "message: a shape this parser does not know yet"
    assert (await replay(settings, pool, row["id"]))["still_failing"] == 1  # same code: stays
    monkeypatch.undo()  # the fix ships

    summary = await replay(settings, pool, row["id"])
    assert (summary["replayed"], summary["created"]) == (1, 1)
    rows = await wait_messages(pool, channel, 1)
    assert [m["message"] for m in rows["messages"]] == ["/start"]
    assert (await post_telegram(gateway, channel, update)).status_code == 200  # redelivered
    await eventually(lambda: message_count(pool, channel), lambda n: n > 1, within=3)
    assert await message_count(pool, channel) == 1


async def test_telegram_malformed_update_is_200_and_the_next_update_flows(
    pool: asyncpg.Pool, gateway: Gateway
) -> None:
    channel = await signed_channel(pool, "telegram")
    broken = copy.deepcopy(tg_payload("text_official.json"))
    broken["update_id"] = 20000
    broken["message"]["date"] = "yesterday"  # a shape Telegram might introduce
    following = copy.deepcopy(tg_payload("text_official.json"))
    following["update_id"] = 20001
    following["message"]["message_id"] = 1366
    following["message"]["text"] = "next"
    assert (await post_telegram(gateway, channel, broken)).status_code == 200
    assert (await post_telegram(gateway, channel, following)).status_code == 200
    rows = await wait_messages(pool, channel, 1)
    assert [m["message"] for m in rows["messages"]] == ["next"]
    [row] = await letters(pool, channel, 1)
    assert row["reason_kind"] == "unprocessable"
    assert decode_raw_webhook(row["payload"]).inline_bytes() == json.dumps(broken).encode()


async def test_raw_email_kept_whole_keeps_its_bytes_and_content_type(
    pool: asyncpg.Pool, gateway: Gateway
) -> None:
    channel = await signed_channel(pool, "email")
    body = eml("plain").replace(b"From:", b"X-Was-From:")
    assert (await post_email(gateway, channel, body)).status_code == 200
    [row] = await letters(pool, channel, 1)
    kept = decode_raw_webhook(row["payload"])
    assert kept.inline_bytes() == body
    assert kept.content_type == "message/rfc822"
    assert "authorization" not in kept.headers  # the bearer token is never kept
    assert kept.record_id != uuid.UUID(int=0)


async def test_large_kept_body_goes_through_the_claim_check_and_replays_from_it(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(tmp_path.as_uri())
    publisher = RecordingPublisher(settings)
    await publisher.start()
    app = create_app(
        settings,
        publisher=publisher,
        channels=ChannelDirectory(settings, pool),
        adapters=load_adapters(),
        media_store=store,
        inline_max_bytes=1024,
    )
    channel = await signed_channel(pool, "email")
    head, _, text = eml("plain").partition(b"\n\n")
    body = head + b"\n\n" + b"long text " * 300 + b"\n" + text

    def not_yet_understood(
        self: EmailAdapter, request: RawRequest, ctx: ParseContext, verified: Any = None
    ) -> WebhookResult:
        raise UnprocessablePayload("email: a structure this parser does not know yet")

    monkeypatch.setattr(EmailAdapter, "parse", not_yet_understood)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="https://gateway.test"
        ) as client:
            assert (await post_email(client, channel, body)).status_code == 200
    finally:
        await publisher.stop()
    monkeypatch.undo()

    [row] = await letters(pool, channel, 1)
    kept = decode_raw_webhook(row["payload"])
    assert (kept.body, kept.size_bytes) == (None, len(body))
    assert kept.body_ref is not None
    assert await StoreClaimCheck(store).get(kept.body_ref) == body
    assert len(row["payload"]) < len(body)  # the record carries the reference, not the bytes

    without_reader = await replay(settings, pool, row["id"])
    assert (without_reader["still_failing"], without_reader["created"]) == (1, 0)
    [pending] = await pool.fetch(DEAD_LETTERS, channel.channel_id)
    assert pending["error_message"] == "its body is in the media store and no reader is set"

    reparse = Reparser(ChannelDirectory(settings, pool), load_adapters(), store)
    summary = await replay_dead_letters(settings, [row["id"]], reparse=reparse)
    assert (summary["replayed"], summary["created"]) == (1, 1)
    rows = await wait_messages(pool, channel, 1)
    assert rows["messages"][0]["message"].count("long text") == 300
