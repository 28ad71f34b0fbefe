"""Telegram media source against the Bot API fake over real HTTP (tests/fakes/telegram.py)."""

from __future__ import annotations

import hashlib
import logging
import socket
import traceback

import pytest
import structlog

from ingest.transports.fetching import FetchPermanent, FetchTransient, MediaRef
from tests.fakes.fixtures import media_sources, read_all
from tests.fakes.harness import FakeServer, Scripted
from tests.fakes.telegram import TelegramFake

TOKEN = "7000000001:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
OTHER_TOKEN = "7000000001:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsXX"
DATA = bytes(range(256)) * 400  # 100 KiB


def ref(file_id: str = "AgACAgIAAxkBAAMEZ", mime: str | None = "image/jpeg") -> MediaRef:
    return MediaRef("telegram", f"telegram:{file_id}", None, mime, None)


@pytest.fixture
def bot(telegram_api: TelegramFake) -> TelegramFake:
    telegram_api.add_bot(TOKEN)
    telegram_api.add_file("AgACAgIAAxkBAAMEZ", DATA)
    return telegram_api


async def test_getfile_then_the_file_link_gives_the_bytes(
    bot: TelegramFake, provider_settings: dict[str, str]
) -> None:
    async with media_sources(provider_settings) as sources:
        download, body = await read_all(sources["telegram"], ref(), {"bot_token": TOKEN})
    assert body == DATA
    assert download.content_type == "image/jpeg"  # the webhook's, getFile has no MIME type
    assert download.declared_size == len(DATA)
    assert download.expected_sha256 is None
    assert [r.route for r in bot.server.requests] == ["api", "file"]
    assert bot.server.requests[0].query == {"file_id": "AgACAgIAAxkBAAMEZ"}


async def test_missing_bot_token_names_the_key_and_the_command(
    bot: TelegramFake, provider_settings: dict[str, str]
) -> None:
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchPermanent) as failure:
            await read_all(sources["telegram"], ref(), {"secret_token": "x"})
    assert "bot_token" in failure.value.reason
    assert "crm-ingest channel set" in failure.value.reason
    assert bot.server.requests == []


@pytest.mark.parametrize(
    ("token", "status"), [(OTHER_TOKEN, 401), ("123:malformed", 404)], ids=["unknown", "malformed"]
)
async def test_a_rejected_token_is_permanent_and_never_in_the_reason(
    bot: TelegramFake, provider_settings: dict[str, str], token: str, status: int
) -> None:
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchPermanent) as failure:
            await read_all(sources["telegram"], ref(), {"bot_token": token})
    assert failure.value.reason == f"telegram rejected the channel's bot_token ({status})"
    assert token not in str(failure.value)
    assert token not in repr(failure.value.__cause__)


async def test_429_is_transient_with_its_retry_after_and_the_next_try_succeeds(
    bot: TelegramFake, provider_settings: dict[str, str]
) -> None:
    flood = {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 7",
        "parameters": {"retry_after": 7},
    }
    bot.server.script("api", Scripted(429, json=flood, headers={"retry-after": "7"}))
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchTransient) as failure:
            await read_all(sources["telegram"], ref(), {"bot_token": TOKEN})
        assert failure.value.retry_after == 7
        _, body = await read_all(sources["telegram"], ref(), {"bot_token": TOKEN})
    assert body == DATA


async def test_5xx_is_transient_then_success(
    bot: TelegramFake, provider_settings: dict[str, str]
) -> None:
    bot.server.script("file", Scripted(502, body=b"bad gateway"))
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchTransient, match=r"\(502\)"):
            await read_all(sources["telegram"], ref(), {"bot_token": TOKEN})
        _, body = await read_all(sources["telegram"], ref(), {"bot_token": TOKEN})
    assert body == DATA


async def test_an_expired_link_gets_one_fresh_getfile(
    bot: TelegramFake, provider_settings: dict[str, str]
) -> None:
    bot.server.script("file", Scripted(404, json={"ok": False, "error_code": 404}))
    async with media_sources(provider_settings) as sources:
        _, body = await read_all(sources["telegram"], ref(), {"bot_token": TOKEN})
    assert body == DATA
    assert [r.route for r in bot.server.requests] == ["api", "file", "api", "file"]


async def test_links_that_keep_expiring_are_transient(
    bot: TelegramFake, provider_settings: dict[str, str]
) -> None:
    bot.link_ttl_s = -1  # every link is already past its life when it is used
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchTransient, match="link expired"):
            await read_all(sources["telegram"], ref(), {"bot_token": TOKEN})
    assert [r.route for r in bot.server.requests] == ["api", "file", "api", "file"]


async def test_over_20_mb_is_permanent_too_large(
    bot: TelegramFake, provider_settings: dict[str, str]
) -> None:
    bot.add_file("big", b"x", file_size=21 << 20)
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchPermanent, match="too large"):
            await read_all(sources["telegram"], ref("big"), {"bot_token": TOKEN})
    assert [r.route for r in bot.server.requests] == ["api"]


async def test_a_declared_size_over_the_cap_is_refused_before_downloading(
    bot: TelegramFake, provider_settings: dict[str, str]
) -> None:
    async with media_sources(provider_settings, media_max_bytes=1000) as sources:
        with pytest.raises(FetchPermanent, match="too large"):
            await read_all(sources["telegram"], ref(), {"bot_token": TOKEN})
    assert [r.route for r in bot.server.requests] == ["api"]


async def test_an_undeclared_body_over_the_cap_stops_streaming(
    bot: TelegramFake, provider_settings: dict[str, str]
) -> None:
    bot.add_file("liar", DATA, file_size=10, content_length=False, chunk_size=1024)
    seen: list[bytes] = []
    async with media_sources(provider_settings, media_max_bytes=4096) as sources:
        with pytest.raises(FetchPermanent, match="too large"):
            await read_all(sources["telegram"], ref("liar"), {"bot_token": TOKEN}, into=seen)
    assert 0 < sum(map(len, seen)) <= 4096


async def test_a_stalled_body_times_out_as_transient(
    bot: TelegramFake, provider_settings: dict[str, str]
) -> None:
    bot.add_file("slow", DATA, chunk_delay_s=2.0)
    async with media_sources(provider_settings, media_http_timeout_s=0.3) as sources:
        with pytest.raises(FetchTransient, match="timed out"):
            await read_all(sources["telegram"], ref("slow"), {"bot_token": TOKEN})


async def test_a_trickling_body_is_cut_at_the_deadline(
    bot: TelegramFake, provider_settings: dict[str, str]
) -> None:
    bot.add_file("trickle", DATA, chunk_size=1024, chunk_delay_s=0.1)
    overrides = {"media_http_timeout_s": 5.0, "media_download_deadline_s": 0.5}
    async with media_sources(provider_settings, **overrides) as sources:
        with pytest.raises(FetchTransient, match="took too long"):
            await read_all(sources["telegram"], ref("trickle"), {"bot_token": TOKEN})


async def test_an_api_url_outside_the_allowed_hosts_is_refused_without_a_request(
    bot: TelegramFake, provider_settings: dict[str, str], internal_server: FakeServer
) -> None:
    settings = provider_settings | {"telegram_api_url": internal_server.url}
    async with media_sources(settings) as sources:
        with pytest.raises(FetchPermanent, match=r"host not allowed \(127\.0\.0\.2:"):
            await read_all(sources["telegram"], ref(), {"bot_token": TOKEN})
    assert internal_server.requests == []


async def test_the_token_never_reaches_a_log_line(
    bot: TelegramFake,
    provider_settings: dict[str, str],
    internal_server: FakeServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    bot.server.script("file", Scripted(404, json={"ok": False}), Scripted(500, json={}))
    with structlog.testing.capture_logs() as lines:
        async with media_sources(provider_settings) as sources:
            with pytest.raises(FetchTransient):
                await read_all(sources["telegram"], ref(), {"bot_token": TOKEN})
            _, body = await read_all(sources["telegram"], ref(), {"bot_token": TOKEN})
        denied = provider_settings | {"telegram_api_url": internal_server.url}
        async with media_sources(denied) as sources:
            with pytest.raises(FetchPermanent):
                await read_all(sources["telegram"], ref(), {"bot_token": TOKEN})
    assert hashlib.sha256(body).digest() == hashlib.sha256(DATA).digest()
    assert lines, "the refused host is logged"
    assert TOKEN not in repr(lines)
    assert TOKEN not in caplog.text


@pytest.mark.parametrize(
    ("description", "error"),
    [
        ("Bad Request: wrong file_id or the file is temporarily unavailable", FetchTransient),
        ("Bad Request: invalid file_id", FetchPermanent),
    ],
)
async def test_getfile_400s_by_description(
    bot: TelegramFake,
    provider_settings: dict[str, str],
    description: str,
    error: type[Exception],
) -> None:
    answer = {"ok": False, "error_code": 400, "description": description}
    bot.server.script("api", Scripted(400, json=answer))
    async with media_sources(provider_settings) as sources:
        with pytest.raises(error, match=description.removeprefix("Bad Request: ")):
            await read_all(sources["telegram"], ref(), {"bot_token": TOKEN})


async def test_an_unknown_file_id_from_the_fake_is_permanent(
    bot: TelegramFake, provider_settings: dict[str, str]
) -> None:
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchPermanent, match="invalid file_id"):
            await read_all(sources["telegram"], ref("nope"), {"bot_token": TOKEN})


async def test_a_local_bot_api_servers_absolute_path_is_refused(
    bot: TelegramFake, provider_settings: dict[str, str]
) -> None:
    bot.local_mode = True
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchPermanent, match="local Bot API server") as failure:
            await read_all(sources["telegram"], ref(), {"bot_token": TOKEN})
    assert TOKEN not in failure.value.reason
    assert [r.route for r in bot.server.requests] == ["api"]


async def test_a_body_shorter_than_its_content_length_is_transient(
    bot: TelegramFake, provider_settings: dict[str, str]
) -> None:
    bot.add_file("cut", DATA, claimed_length=len(DATA) + 1000)
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchTransient, match="connection failed"):
            await read_all(sources["telegram"], ref("cut"), {"bot_token": TOKEN})


async def test_a_cookie_set_by_one_answer_is_never_sent_with_the_next(
    bot: TelegramFake, provider_settings: dict[str, str]
) -> None:
    found = {"file_id": "x", "file_unique_id": "u", "file_size": len(DATA)}
    answer = {"ok": True, "result": found | {"file_path": "documents/file_1.bin"}}
    bot.server.script("api", Scripted(200, json=answer, headers={"set-cookie": "sid=tenant-a"}))
    async with media_sources(provider_settings) as sources:
        await read_all(sources["telegram"], ref(), {"bot_token": TOKEN})
        await read_all(sources["telegram"], ref(), {"bot_token": TOKEN})
    # The scripted getFile issued no link: the first file request 404s and getFile runs again.
    assert [r.route for r in bot.server.requests] == ["api", "file", "api", "file", "api", "file"]
    assert all("cookie" not in r.headers for r in bot.server.requests)


async def test_a_refused_connection_is_transient_and_its_traceback_holds_no_token(
    bot: TelegramFake, provider_settings: dict[str, str]
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    settings = provider_settings | {
        "telegram_api_url": f"http://{closed}",
        "media_allowed_hosts": f"{provider_settings['media_allowed_hosts']},{closed}",
    }
    async with media_sources(settings) as sources:
        with pytest.raises(FetchTransient, match=r"connection failed \(ConnectError\)") as failure:
            await read_all(sources["telegram"], ref(), {"bot_token": TOKEN})
    assert TOKEN not in "".join(traceback.format_exception(failure.value))
