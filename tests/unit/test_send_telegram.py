"""The Telegram sender against the Bot API fake over real HTTP (provider-apis.md §1.4-1.6, §5),
attachments streamed from a real file:// object store."""

from __future__ import annotations

import json
import traceback
import uuid
from typing import Any

import pytest

from ingest.objectstore import ObjectStore, StoreUnavailable
from ingest.transports.sending import (
    OutboundMessage,
    SendOutcomeUnknown,
    SendRejected,
    SendTransient,
)
from ingest.transports.textparts import split_text, text_length
from tests.fakes.fixtures import logged, senders, stored_attachment
from tests.fakes.harness import Scripted
from tests.fakes.telegram import TelegramFake

TOKEN = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"
CHAT = 1111111


def message(**fields: Any) -> OutboundMessage:
    values: dict[str, Any] = {"command_id": uuid.uuid4(), "to": str(CHAT), "text": "Hello"}
    return OutboundMessage(**(values | fields))


async def send(
    provider_settings: dict[str, str],
    store: ObjectStore,
    outbound: OutboundMessage,
    config: dict[str, Any] | None = None,
    **settings: Any,
) -> Any:
    async with senders(provider_settings, store, **settings) as by_transport:
        return await by_transport["telegram"].send(
            outbound, {"bot_token": TOKEN} if config is None else config
        )


async def test_text_goes_out_as_json_with_reply_parameters(
    telegram_api: TelegramFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    telegram_api.add_bot(TOKEN)
    telegram_api.last_message_id[CHAT] = 1365
    result = await send(
        provider_settings, file_store, message(text="Your order shipped", reply_to=f"{CHAT}:77")
    )
    assert result.provider_message_ids == (f"{CHAT}:1366",)
    (call,) = telegram_api.server.calls("api")
    assert call.method == "POST"
    assert call.path == f"/bot{TOKEN}/sendMessage"
    assert call.headers["content-type"] == "application/json"
    assert json.loads(call.body) == {
        "chat_id": CHAT,
        "text": "Your order shipped",
        "reply_parameters": {"message_id": 77, "allow_sending_without_reply": True},
    }
    (sent,) = telegram_api.sent
    assert (sent.text, sent.reply_to_message_id) == ("Your order shipped", 77)


def test_split_prefers_line_then_word_boundaries() -> None:
    lines = ["a" * 3000, "b" * 3000, "c" * 10]
    assert split_text("\n".join(lines), 4096) == [lines[0], lines[1] + "\n" + lines[2]]
    words = " ".join(["word"] * 2000)  # 9999 characters, no line break
    parts = split_text(words, 4096)
    assert all(text_length(p) <= 4096 for p in parts)
    assert " ".join(parts) == words
    assert all(not p.startswith(" ") and not p.endswith(" ") for p in parts)
    one_word = "x" * 9000
    assert split_text(one_word, 4096) == ["x" * 4096, "x" * 4096, "x" * 808]
    emoji = "😀" * 3000  # two UTF-16 units each: 6000 units
    parts = split_text(emoji, 4096)
    assert [len(p) for p in parts] == [2048, 952]
    assert "".join(parts) == emoji


async def test_long_text_is_split_into_messages_all_ids_returned(
    telegram_api: TelegramFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    telegram_api.add_bot(TOKEN)
    text = "\n".join(f"line {n} " + "x" * 90 for n in range(100))  # ~10 000 characters
    result = await send(provider_settings, file_store, message(text=text, reply_to="9"))
    assert len(telegram_api.sent) == 3
    assert result.provider_message_ids == tuple(f"{CHAT}:{n}" for n in (1, 2, 3))
    assert "\n".join(m.text or "" for m in telegram_api.sent) == text
    assert all(len(m.text or "") <= 4096 for m in telegram_api.sent)
    # Only the first part replies to the quoted message.
    assert [m.reply_to_message_id for m in telegram_api.sent] == [9, None, None]


async def test_photo_and_document_are_streamed_from_the_store(
    telegram_api: TelegramFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    telegram_api.add_bot(TOKEN)
    photo = await stored_attachment(file_store, 1, b"\xff\xd8jpeg" * 1000, "p.jpg", "image/jpeg")
    pdf = await stored_attachment(file_store, 2, b"%PDF-1.7" + bytes(300_000), "order.pdf", None)
    result = await send(
        provider_settings,
        file_store,
        message(text="Invoice attached", attachments=(photo, pdf), reply_to="5"),
    )
    assert result.provider_message_ids == (f"{CHAT}:1", f"{CHAT}:2")
    first, second = telegram_api.sent
    assert first.method == "sendPhoto"
    assert first.upload is not None
    assert first.upload.data == b"\xff\xd8jpeg" * 1000
    assert (first.upload.filename, first.upload.content_type) == ("p.jpg", "image/jpeg")
    assert (first.caption, first.reply_to_message_id) == ("Invoice attached", 5)
    assert second.method == "sendDocument"
    assert second.upload is not None
    assert second.upload.data == b"%PDF-1.7" + bytes(300_000)
    assert (second.upload.filename, second.upload.content_type) == (
        "order.pdf",
        "application/octet-stream",
    )
    assert second.caption is None
    assert second.reply_to_message_id is None
    calls = telegram_api.server.calls("api")
    assert all(c.headers["content-type"].startswith("multipart/form-data") for c in calls)
    # Objects inside multipart are JSON strings, as the server decodes them.
    assert json.loads(first.params["reply_parameters"])["message_id"] == 5


async def test_text_too_long_for_a_caption_goes_first_on_its_own(
    telegram_api: TelegramFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    telegram_api.add_bot(TOKEN)
    photo = await stored_attachment(file_store, 3, b"png", "a.png", "image/png")
    text = "y" * 2000
    await send(provider_settings, file_store, message(text=text, attachments=(photo,)))
    assert [(m.method, m.text, m.caption) for m in telegram_api.sent] == [
        ("sendMessage", text, None),
        ("sendPhoto", None, None),
    ]


async def test_blocked_by_the_user_is_rejected(
    telegram_api: TelegramFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    telegram_api.add_bot(TOKEN)
    telegram_api.blocked.add(CHAT)
    with pytest.raises(SendRejected) as caught:
        await send(provider_settings, file_store, message())
    assert caught.value.code == "403"
    assert "blocked by the user" in caught.value.message


async def test_flood_control_is_transient_with_its_retry_after(
    telegram_api: TelegramFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    telegram_api.add_bot(TOKEN)
    telegram_api.flood[CHAT] = 7
    with pytest.raises(SendTransient) as caught:
        await send(provider_settings, file_store, message())
    assert caught.value.retry_after == 7
    assert telegram_api.sent == []
    telegram_api.clock.advance(7)  # the wait passed: the same send goes out
    result = await send(provider_settings, file_store, message())
    assert result.provider_message_ids == (f"{CHAT}:1",)


async def test_retry_after_header_alone_is_used(
    telegram_api: TelegramFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    telegram_api.add_bot(TOKEN)
    telegram_api.server.script(
        "api", Scripted(429, json={"ok": False, "error_code": 429}, headers={"retry-after": "3"})
    )
    with pytest.raises(SendTransient) as caught:
        await send(provider_settings, file_store, message())
    assert caught.value.retry_after == 3


async def test_migrated_group_is_rejected_naming_the_new_id(
    telegram_api: TelegramFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    telegram_api.add_bot(TOKEN)
    telegram_api.migrated[-4000] = -1002000000001
    with pytest.raises(SendRejected) as caught:
        await send(provider_settings, file_store, message(to="-4000"))
    assert "-1002000000001" in caught.value.message


async def test_server_error_is_transient_and_a_retry_succeeds(
    telegram_api: TelegramFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    telegram_api.add_bot(TOKEN)
    telegram_api.failing[CHAT] = 1
    with pytest.raises(SendTransient) as caught:
        await send(provider_settings, file_store, message())
    assert caught.value.code == "502"
    assert (await send(provider_settings, file_store, message())).provider_message_ids


@pytest.mark.parametrize("token", [TOKEN.replace("ABC", "XYZ"), "not-a-token", f"{TOKEN}/../../x?"])
async def test_refused_token_is_rejected_and_never_shown(
    token: str,
    telegram_api: TelegramFake,
    provider_settings: dict[str, str],
    file_store: ObjectStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    telegram_api.add_bot(TOKEN)
    with logged(caplog) as logs, pytest.raises(SendRejected) as caught:
        await send(provider_settings, file_store, message(), {"bot_token": token})
    assert "bot_token" in caught.value.message
    assert token not in str(caught.value)
    assert any("provider refused" in line for line in logs)
    assert token not in "".join(logs)


async def test_scheduled_message_id_zero_is_not_returned(
    telegram_api: TelegramFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    telegram_api.add_bot(TOKEN)
    telegram_api.scheduling.add(CHAT)
    result = await send(provider_settings, file_store, message())
    assert result.provider_message_ids == ()
    assert result.detail == {"messages": 1, "unnumbered": 1}


async def test_a_failed_later_part_reports_the_parts_already_accepted(
    telegram_api: TelegramFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    telegram_api.add_bot(TOKEN)
    ok = {"ok": True, "result": {"message_id": 41, "chat": {"id": CHAT}}}
    flood = {"ok": False, "error_code": 429, "parameters": {"retry_after": 2}}
    telegram_api.server.script("api", Scripted(200, json=ok), Scripted(429, json=flood))
    with pytest.raises(SendTransient) as caught:
        await send(provider_settings, file_store, message(text="z " * 3000))
    assert caught.value.accepted_ids == (f"{CHAT}:41",)


async def test_check_refuses_before_any_call(
    telegram_api: TelegramFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    big = await stored_attachment(file_store, 4, b"x", "big.bin", None)
    big = type(big)(4, big.url, "big.bin", None, 51 * 1024 * 1024)
    async with senders(provider_settings, file_store) as by_transport:
        sender = by_transport["telegram"]
        with pytest.raises(SendRejected, match="crm-ingest channel set <channel id> --config"):
            sender.check(message(), {})
        with pytest.raises(SendRejected, match="50 MB"):
            sender.check(message(attachments=(big,)), {"bot_token": TOKEN})
        with pytest.raises(SendRejected, match="at most 10"):
            sender.check(message(attachments=(big,) * 11), {"bot_token": TOKEN})
        with pytest.raises(SendRejected, match="nothing to send"):
            sender.check(message(text="  "), {"bot_token": TOKEN})
    assert telegram_api.server.requests == []


async def test_missing_stored_attachment_is_rejected(
    telegram_api: TelegramFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    telegram_api.add_bot(TOKEN)
    gone = await stored_attachment(file_store, 5, b"bytes", "a.pdf", "application/pdf")
    gone = type(gone)(5, gone.url.replace("uploads/5", "uploads/6"), "a.pdf", None, 5)
    with pytest.raises(SendRejected) as caught:
        await send(provider_settings, file_store, message(attachments=(gone,)))
    assert caught.value.code == "attachment_not_stored"
    assert telegram_api.sent == []


async def test_refused_connection_is_transient(
    provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    overrides = provider_settings | {"telegram_api_url": "http://127.0.0.1:9"}
    with pytest.raises(SendTransient) as caught:
        await send(overrides, file_store, message())
    assert caught.value.code == "network"
    assert TOKEN not in str(caught.value)


async def test_no_answer_in_time_is_an_unknown_outcome(
    telegram_api: TelegramFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    telegram_api.add_bot(TOKEN)
    telegram_api.server.script("api", Scripted(200, json={"ok": True}, delay_s=1.0))
    with pytest.raises(SendOutcomeUnknown) as caught:
        await send(provider_settings, file_store, message(), outbound_timeout_s=0.2)
    assert TOKEN not in str(caught.value)


async def test_undeclared_size_over_the_limit_is_cut_mid_upload(
    telegram_api: TelegramFake,
    provider_settings: dict[str, str],
    file_store: ObjectStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("ingest.transports.telegram.send.DOCUMENT_MAX", 100_000)
    telegram_api.add_bot(TOKEN)
    stored = await stored_attachment(file_store, 7, bytes(300_000), "big.bin", None)
    undeclared = type(stored)(7, stored.url, "big.bin", None, None)
    with pytest.raises(SendRejected) as caught:
        await send(provider_settings, file_store, message(attachments=(undeclared,)))
    assert caught.value.code == "attachment_too_large"
    assert telegram_api.sent == []


async def test_store_unavailable_is_transient(
    telegram_api: TelegramFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    telegram_api.add_bot(TOKEN)
    stored = await stored_attachment(file_store, 8, b"data", "a.bin", None)

    class DownStore:
        def get(self, key_or_url: str) -> Any:
            raise StoreUnavailable("store down")

    async with senders(provider_settings, DownStore()) as by_transport:  # type: ignore[arg-type]
        with pytest.raises(SendTransient) as caught:
            await by_transport["telegram"].send(
                message(attachments=(stored,)), {"bot_token": TOKEN}
            )
    assert caught.value.code == "store_unavailable"
    assert telegram_api.sent == []


async def test_refused_connection_traceback_holds_no_token(
    provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    overrides = provider_settings | {"telegram_api_url": "http://127.0.0.1:9"}
    with pytest.raises(SendTransient) as caught:
        await send(overrides, file_store, message())
    assert TOKEN not in "".join(traceback.format_exception(caught.value))


async def test_a_photo_telegram_cannot_take_goes_as_a_document(
    telegram_api: TelegramFake, provider_settings: dict[str, str], file_store: ObjectStore
) -> None:
    telegram_api.add_bot(TOKEN)
    refused = {
        "ok": False,
        "error_code": 400,
        "description": "Bad Request: PHOTO_INVALID_DIMENSIONS",
    }
    telegram_api.server.script("api", Scripted(400, json=refused))
    panorama = await stored_attachment(file_store, 10, b"\xff\xd8wide", "wide.jpg", "image/jpeg")
    result = await send(
        provider_settings, file_store, message(text="the view", attachments=(panorama,))
    )
    assert [c.path.rpartition("/")[2] for c in telegram_api.server.calls("api")] == [
        "sendPhoto",
        "sendDocument",
    ]
    (sent,) = telegram_api.sent
    assert sent.upload is not None
    assert (sent.method, sent.caption, sent.upload.data) == (
        "sendDocument",
        "the view",
        b"\xff\xd8wide",
    )
    assert result.provider_message_ids == (f"{CHAT}:1",)
