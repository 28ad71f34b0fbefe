"""What every JSON webhook (Telegram, WhatsApp) refuses before looking at its fields.

Both adapters go through `ingest.transports.base.parse_json_body`; these cases run against each
adapter end to end (authenticated requests), so a transport that stopped using the shared
boundary would fail here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ingest.errors import BadPayload
from tests.unit import test_telegram, test_whatsapp

ADAPTERS: dict[str, tuple[Callable[..., Any], Callable[[str], bytes]]] = {
    "telegram": (test_telegram.handle, test_telegram.raw),
    "whatsapp": (test_whatsapp.handle, test_whatsapp.raw),
}
transports = pytest.mark.parametrize("transport", sorted(ADAPTERS))


@transports
@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b"\xff\xfe{}", b'{"update_id": 1', b'{"object": 1', b"{'a': 1}"],
)
def test_malformed_json_is_bad_payload(transport: str, body: bytes) -> None:
    handle, _ = ADAPTERS[transport]
    with pytest.raises(BadPayload) as info:
        handle(body)
    assert info.value.status_code == 400
    assert info.value.reason.startswith("malformed JSON")


@transports
@pytest.mark.parametrize("body", [b"[]", b"null", b'"update"', b"42", b"[{}]", b"NaN"])
def test_non_object_is_bad_payload(transport: str, body: bytes) -> None:
    handle, _ = ADAPTERS[transport]
    with pytest.raises(BadPayload, match="expected a JSON object"):
        handle(body)


@transports
@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx"]
)
def test_wrong_content_type_is_bad_payload(transport: str, content_type: str | None) -> None:
    handle, raw = ADAPTERS[transport]
    with pytest.raises(BadPayload, match="expected application/json"):
        handle(raw("text_official"), content_type=content_type)


@transports
@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON"])
def test_content_type_parameters_are_allowed(transport: str, content_type: str) -> None:
    handle, raw = ADAPTERS[transport]
    assert len(handle(raw("text_official"), content_type=content_type).events) == 1
