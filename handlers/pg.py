"""Python values adapted to what PostgreSQL columns accept, at the one place writes happen."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def pg_text(value: str) -> str:
    """PostgreSQL text cannot hold NUL; keep the rest of the message rather than fail it."""
    return value.replace("\x00", "\ufffd")


def pg_json(value: Any) -> Any:
    if isinstance(value, str):
        return pg_text(value)
    if isinstance(value, dict):
        return {pg_text(str(k)): pg_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [pg_json(v) for v in value]
    return value


def naive_utc(moment: datetime) -> datetime:
    """The seed's TIMESTAMP columns hold UTC wall time."""
    return moment.astimezone(UTC).replace(tzinfo=None)
