"""Python values adapted to what PostgreSQL columns accept, at the one place writes happen."""

from __future__ import annotations

import re
from datetime import UTC, datetime

# `\u0000` preceded by an even number of backslashes (so not the text "\\u0000").
_ESCAPED_NUL = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")


def without_nul(raw: bytes) -> bytes:
    """An inbound JSON record with every NUL made U+FFFD, before it is decoded.

    JSON can carry NUL only as the escape \\u0000 (a raw control byte is invalid JSON), and
    PostgreSQL's text and jsonb cannot store it; replacing it here, once, covers every field of
    the event and spares a walk over each value on the way to the database.
    """
    if b"\\u0000" not in raw:
        return raw
    return _ESCAPED_NUL.sub(rb"\1\\ufffd", raw)


def pg_text(value: str) -> str:
    """PostgreSQL text cannot hold NUL; keep the rest of the message rather than fail it."""
    return value.replace("\x00", "\ufffd")


def naive_utc(moment: datetime) -> datetime:
    """The seed's TIMESTAMP columns hold UTC wall time."""
    return moment.astimezone(UTC).replace(tzinfo=None)
