"""The one interface the rest of crm-ingest stores bytes through, and what backends share."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from ingest.objectstore.errors import ObjectTooLarge
from ingest.objectstore.urls import validate_key


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    url: str  # what `core_uploads.path` holds: file:///dir/key or s3://bucket/prefix/key
    size: int
    sha256: str  # hex of the bytes as stored
    content_type: str | None


class ObjectStore(Protocol):
    """Bytes under keys. Every method raises only `StoreError`s (see `errors`)."""

    def url(self, key: str) -> str:
        """The URL of the object under `key` (whether or not it exists)."""
        ...

    async def put(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        content_type: str | None,
        max_bytes: int,
    ) -> StoredObject:
        """Streams `chunks` under `key`, atomically: the key shows the whole object or nothing.

        Size and sha256 are computed while streaming; past `max_bytes` it raises ObjectTooLarge
        and leaves nothing under the key. Putting the same key again replaces the object.
        """
        ...

    async def put_bytes(self, key: str, data: bytes, content_type: str | None) -> StoredObject:
        """`put` of bytes already in memory (no size limit beyond their length)."""
        ...

    def get(self, key_or_url: str) -> AsyncIterator[bytes]:
        """The object's bytes in chunks; ObjectNotFound surfaces on the first iteration."""
        ...

    async def ping(self) -> bool:
        """True when the store answers and its directory or bucket exists."""
        ...

    async def sweep(self, older_than_s: float) -> int:
        """Removes what puts of killed processes left, untouched for `older_than_s` (temp
        files, unfinished multipart uploads); returns how many. Never an object."""
        ...

    async def close(self) -> None: ...


class UrlKeyedStore:
    """What both backends share: object URLs are the store's URL plus the key."""

    def __init__(self, base_url: str) -> None:
        self._base_url = base_url

    def url(self, key: str) -> str:
        return f"{self._base_url}/{validate_key(key)}"

    async def put(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        content_type: str | None,
        max_bytes: int,
    ) -> StoredObject:
        raise NotImplementedError

    async def put_bytes(self, key: str, data: bytes, content_type: str | None) -> StoredObject:
        return await self.put(key, one_chunk(data), content_type=content_type, max_bytes=len(data))


class Meter:
    """Counts and hashes a stream as it passes; raises ObjectTooLarge past `max_bytes`."""

    __slots__ = ("_hash", "max_bytes", "size")

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self.size = 0
        self._hash = hashlib.sha256()

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise ObjectTooLarge(self.max_bytes)
        self._hash.update(chunk)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def rechunk(chunks: AsyncIterable[bytes], meter: Meter, size: int) -> AsyncIterator[bytes]:
    """The stream metered, in pieces of exactly `size` bytes (the last one shorter).

    Backends write in large pieces (fewer syscalls, thread hops or multipart parts) while
    holding at most one piece plus one incoming chunk in memory.
    """
    buffer = bytearray()
    async for chunk in chunks:
        meter.feed(chunk)
        buffer += chunk
        while len(buffer) >= size:
            piece = bytes(memoryview(buffer)[:size])  # one copy, not two
            del buffer[:size]
            yield piece
    if buffer:
        yield bytes(buffer)
