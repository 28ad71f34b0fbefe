"""NUL never reaches PostgreSQL: it is rewritten in the raw JSON, and only there."""

from __future__ import annotations

import json

import pytest

from handlers.pg import without_nul


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        (rb'{"a": "x\u0000y"}', "x\ufffdy"),  # an escaped NUL
        (rb'{"a": "x\\u0000y"}', "x\\u0000y"),  # the text backslash-u0000: left alone
        (rb'{"a": "x\\\u0000y"}', "x\\\ufffdy"),  # a backslash, then an escaped NUL
        (rb'{"a": "\u0000\u0000"}', "\ufffd\ufffd"),
        (rb'{"a": "clean"}', "clean"),
    ],
)
def test_escaped_nul_becomes_replacement_character(raw: bytes, decoded: str) -> None:
    assert json.loads(without_nul(raw))["a"] == decoded


def test_clean_records_are_returned_as_they_are() -> None:
    raw = b'{"a": "clean"}'
    assert without_nul(raw) is raw
