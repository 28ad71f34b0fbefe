"""The stored media type: the webhook's, else the served one, else sniffed from the bytes."""

from __future__ import annotations

import pytest

from handlers.media.content import FALLBACK_TYPE, choose_type, sniff
from handlers.media.worker import backoff_s


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
        (b"\x89PNG\r\n\x1a\n\x00", "image/png"),
        (b"GIF89a...", "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"%PDF-1.7\n", "application/pdf"),
        (b"OggS\x00\x02", "audio/ogg"),
        (b"\x00\x00\x00\x18ftypmp42", "video/mp4"),
        (b"#!AMR\n", "audio/amr"),
        (b"PK\x03\x04", "application/zip"),
        (b"plain text", None),
        (b"", None),
    ],
)
def test_sniff(head: bytes, expected: str | None) -> None:
    assert sniff(head) == expected


def test_declared_beats_served_beats_sniffed() -> None:
    jpeg = b"\xff\xd8\xff\xe0"
    assert choose_type("Audio/OGG; codecs=opus", "image/png", jpeg) == "audio/ogg"
    assert choose_type(None, "image/png; charset=binary", jpeg) == "image/png"
    assert choose_type("", "application/octet-stream", jpeg) == "image/jpeg"
    assert choose_type(None, None, b"?") == FALLBACK_TYPE


def test_backoff_doubles_is_jittered_and_capped() -> None:
    assert backoff_s(1, 2.0, 600.0, lambda: 1.0) == 2.0
    assert backoff_s(3, 2.0, 600.0, lambda: 1.0) == 8.0
    assert backoff_s(3, 2.0, 600.0, lambda: 0.0) == 4.0  # half at the lowest draw
    assert backoff_s(30, 2.0, 600.0, lambda: 1.0) == 600.0
