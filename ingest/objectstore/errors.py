"""The object store's exception tree; each backend translates its library's errors into it."""

from __future__ import annotations

from ingest.errors import IngestError


class StoreError(IngestError):
    """Base of every error the object store raises on purpose."""


class StoreUnavailable(StoreError):
    """Transient: refused connection, timeout, 5xx, throttling, a full disk. Retry later."""


class ObjectTooLarge(StoreError):
    """The stream passed `max_bytes`; nothing was left under the key."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"object larger than {max_bytes} bytes")
        self.max_bytes = max_bytes


class ObjectNotFound(StoreError):
    """No object under that key (or the URL belongs to another store)."""
