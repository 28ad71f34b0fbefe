"""What a fetched file is: its media type, declared, served or sniffed from its first bytes."""

from __future__ import annotations

GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})
FALLBACK_TYPE = "application/octet-stream"

# Leading bytes of the types messaging apps carry (photos, voice notes, documents, videos).
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"%PDF-", "application/pdf"),
    (0, b"OggS", "audio/ogg"),
    (0, b"ID3", "audio/mpeg"),
    (0, b"#!AMR", "audio/amr"),
    (0, b"PK\x03\x04", "application/zip"),
    (4, b"ftyp", "video/mp4"),
)


def media_type(value: str | None) -> str:
    """`image/jpeg; charset=x` -> `image/jpeg`; None -> ""."""
    return (value or "").split(";", 1)[0].strip().lower()


def sniff(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    for offset, magic, kind in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return kind
    return None


def choose_type(declared: str | None, served: str | None, head: bytes) -> str:
    """The webhook's type, else the one the provider served, else sniffed from the first bytes.
    Generic types (octet-stream) count as absent."""
    for candidate in (media_type(declared), media_type(served)):
        if candidate not in GENERIC_TYPES:
            return candidate
    return sniff(head) or FALLBACK_TYPE
