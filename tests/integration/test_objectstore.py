"""The object store's contract, against a real directory and a real S3-compatible server.

Every test runs once per backend: `file` on a fresh temp directory, `s3` on a fresh bucket of
the moto server over HTTP (tests/fakes/s3.py).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ingest.objectstore import (
    ObjectNotFound,
    ObjectStore,
    ObjectTooLarge,
    StoreUnavailable,
    content_addressed_key,
    open_store,
)

pytestmark = pytest.mark.integration

BACKENDS = ["file"]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file://{tmp_path}/media"
    return str(request.getfixturevalue("s3_store_url"))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[ObjectStore]:
    opened = open_store(store_url)
    yield opened
    await opened.close()


async def chunked(data: bytes, size: int = 7_919) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def read_all(store: ObjectStore, key_or_url: str) -> bytes:
    return b"".join([chunk async for chunk in store.get(key_or_url)])


def payload(size: int, seed: int = 1) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "big")).digest(size)


async def test_roundtrip_reports_size_hash_and_url(store: ObjectStore, store_url: str) -> None:
    data = payload(3 * 1024 * 1024 + 17)  # several write pieces and S3 parts' worth
    stored = await store.put(
        "media/t1/photo.jpg", chunked(data), content_type="image/jpeg", max_bytes=len(data)
    )
    assert stored.key == "media/t1/photo.jpg"
    assert stored.url == f"{store_url}/media/t1/photo.jpg"
    assert stored.url == store.url("media/t1/photo.jpg")
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.content_type == "image/jpeg"
    assert await read_all(store, "media/t1/photo.jpg") == data
    assert await read_all(store, stored.url) == data


async def test_put_bytes_and_empty_object(store: ObjectStore) -> None:
    stored = await store.put_bytes("a/b/empty", b"", None)
    assert (stored.size, stored.sha256) == (0, hashlib.sha256(b"").hexdigest())
    assert await read_all(store, "a/b/empty") == b""
    small = await store.put_bytes("a/b/small.txt", b"hello", "text/plain")
    assert (small.size, small.content_type) == (5, "text/plain")
    assert await read_all(store, small.url) == b"hello"


async def test_max_bytes_enforced_mid_stream_leaves_nothing(store: ObjectStore) -> None:
    consumed = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal consumed
        piece = payload(64 * 1024)
        while True:
            consumed += len(piece)
            yield piece

    with pytest.raises(ObjectTooLarge):
        await store.put("big/file.bin", endless(), content_type=None, max_bytes=6 * 1024 * 1024)
    # stopped as soon as the limit was passed, not after reading everything
    assert 6 * 1024 * 1024 < consumed <= 6 * 1024 * 1024 + 64 * 1024
    with pytest.raises(ObjectNotFound):
        await read_all(store, "big/file.bin")
    await assert_no_leftovers(store)


async def test_exact_max_bytes_is_allowed(store: ObjectStore) -> None:
    data = payload(1000)
    stored = await store.put("exact", chunked(data, 100), content_type=None, max_bytes=1000)
    assert stored.size == 1000
    with pytest.raises(ObjectTooLarge):
        await store.put("over", chunked(data + b"x", 100), content_type=None, max_bytes=1000)


async def test_failing_source_leaves_previous_object_intact(store: ObjectStore) -> None:
    await store.put_bytes("doc.pdf", b"first version", "application/pdf")

    async def broken() -> AsyncIterator[bytes]:
        yield payload(6 * 1024 * 1024)
        raise ConnectionResetError("provider hung up")

    with pytest.raises(ConnectionResetError):
        await store.put("doc.pdf", broken(), content_type=None, max_bytes=100 * 1024 * 1024)
    assert await read_all(store, "doc.pdf") == b"first version"
    await assert_no_leftovers(store)


async def test_same_key_twice_is_one_object(store: ObjectStore) -> None:
    data = payload(10_000)
    key = content_addressed_key(hashlib.sha256(data).hexdigest(), "email")
    first = await store.put_bytes(key, data, "application/octet-stream")
    second = await store.put(key, chunked(data), content_type=None, max_bytes=len(data))
    assert (first.url, first.sha256) == (second.url, second.sha256)
    assert await read_all(store, key) == data
    assert await list_keys(store) == [key]
    # a different object under the key replaces it whole
    await store.put_bytes(key, b"other", None)
    assert await read_all(store, key) == b"other"
    assert await list_keys(store) == [key]


async def test_missing_object_and_foreign_url(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        await read_all(store, "nothing/here")
    with pytest.raises(ObjectNotFound):
        await read_all(store, "s3://someone-elses-bucket/x")
    with pytest.raises(ObjectNotFound):
        await read_all(store, "file:///etc/passwd")


async def test_ping(store: ObjectStore) -> None:
    assert await store.ping() is True


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "../up", "a/../b", ".hidden", "sp ace", "é"])
async def test_unsafe_keys_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="key"):
        await store.put_bytes(key, b"x", None)


def test_content_addressed_key_fans_out() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    assert content_addressed_key(digest) == f"sha256/{digest[:2]}/{digest[2:4]}/{digest}"
    assert (
        content_addressed_key(digest, "/email/")
        == f"email/sha256/{digest[:2]}/{digest[2:4]}/{digest}"
    )
    with pytest.raises(ValueError, match="sha256"):
        content_addressed_key(digest.upper())


# --- file backend specifics -------------------------------------------------------------------


async def test_file_store_unavailable_when_its_directory_cannot_exist(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    store = open_store(f"file://{blocker}/media")
    assert await store.ping() is False
    with pytest.raises(StoreUnavailable):
        await store.put_bytes("k", b"x", None)
    with pytest.raises(ObjectNotFound):
        await read_all(store, "k")


# --- helpers ------------------------------------------------------------------------------------


async def list_keys(store: ObjectStore) -> list[str]:
    """Every object in the store, temp files included (they would be leftovers)."""
    root = getattr(store, "root", None)
    if isinstance(root, Path):
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    return await store.list_keys()  # type: ignore[attr-defined,no-any-return]


async def assert_no_leftovers(store: ObjectStore) -> None:
    keys = await list_keys(store)
    assert not [k for k in keys if os.path.basename(k).startswith(".")], keys
    pending = getattr(store, "pending_uploads", None)
    if pending is not None:
        assert await pending() == []
