"""Object storage for media bytes: one narrow interface, two backends.

    store = open_store(settings.media_store)      # file:///abs/dir or s3://bucket/prefix
    stored = await store.put(key, chunks, content_type="image/jpeg", max_bytes=limit)
    async for chunk in store.get(stored.url): ...

Everything that stores or reads bytes depends on `ObjectStore` and the `StoreError` tree, never
on a backend or its library. Backends are imported on first use, so importing this package
(and `ingest.config`, which validates the URL) stays cheap.
"""

from __future__ import annotations

from ingest.objectstore.base import ObjectStore, StoredObject
from ingest.objectstore.errors import ObjectNotFound, ObjectTooLarge, StoreError, StoreUnavailable
from ingest.objectstore.urls import content_addressed_key, parse_store_url, validate_key

__all__ = [
    "ObjectNotFound",
    "ObjectStore",
    "ObjectTooLarge",
    "StoreError",
    "StoreUnavailable",
    "StoredObject",
    "content_addressed_key",
    "open_store",
    "parse_store_url",
    "validate_key",
]


def open_store(url: str) -> ObjectStore:
    """The store named by a `CRM_INGEST_MEDIA_STORE` value. No I/O: `ping()` checks it."""
    location = parse_store_url(url)
    if location.scheme == "file":
        from ingest.objectstore.local import FileStore

        return FileStore(location)
    from ingest.objectstore.s3 import S3Store

    return S3Store(location)
