"""The object store's contract, against a real directory and a real S3-compatible server.

Every test runs once per backend: `file` on a fresh temp directory, `s3` on a fresh bucket of
the moto server over HTTP (tests/fakes/s3.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

from ingest.objectstore import (
    ObjectNotFound,
    ObjectStore,
    ObjectTooLarge,
    StoreError,
    StoreUnavailable,
    content_addressed_key,
    open_store,
)
from tests.fakes.s3 import S3Server, running_s3_server

pytestmark = pytest.mark.integration

BACKENDS = ["file", "s3"]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return (tmp_path / "media dir").as_uri()  # percent-encoded, as `crm-ingest dev` writes it
    return str(request.getfixturevalue("s3_store_url"))


@pytest.fixture
def listing(request: pytest.FixtureRequest, store_url: str) -> Listing:
    """Every object under the store, and unfinished uploads, seen without the code under test."""
    if store_url.startswith("file://"):
        return Listing(Path(unquote(store_url.removeprefix("file://"))), None, "")
    bucket, _, prefix = store_url.removeprefix("s3://").partition("/")
    return Listing(None, request.getfixturevalue("s3_server"), bucket, prefix + "/")


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


async def test_max_bytes_enforced_mid_stream_leaves_nothing(
    store: ObjectStore, listing: Listing
) -> None:
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
    listing.assert_no_leftovers()


async def test_exact_max_bytes_is_allowed(store: ObjectStore) -> None:
    data = payload(1000)
    stored = await store.put("exact", chunked(data, 100), content_type=None, max_bytes=1000)
    assert stored.size == 1000
    with pytest.raises(ObjectTooLarge):
        await store.put("over", chunked(data + b"x", 100), content_type=None, max_bytes=1000)


async def test_failing_source_leaves_previous_object_intact(
    store: ObjectStore, listing: Listing
) -> None:
    await store.put_bytes("doc.pdf", b"first version", "application/pdf")

    async def broken() -> AsyncIterator[bytes]:
        yield payload(6 * 1024 * 1024)
        raise ConnectionResetError("provider hung up")

    with pytest.raises(ConnectionResetError):
        await store.put("doc.pdf", broken(), content_type=None, max_bytes=100 * 1024 * 1024)
    assert await read_all(store, "doc.pdf") == b"first version"
    listing.assert_no_leftovers()


async def test_same_key_twice_is_one_object(store: ObjectStore, listing: Listing) -> None:
    data = payload(10_000)
    key = content_addressed_key(hashlib.sha256(data).hexdigest(), "email")
    first = await store.put_bytes(key, data, "application/octet-stream")
    second = await store.put(key, chunked(data), content_type=None, max_bytes=len(data))
    assert (first.url, first.sha256) == (second.url, second.sha256)
    assert await read_all(store, key) == data
    assert listing.keys() == [key]
    # a different object under the key replaces it whole
    await store.put_bytes(key, b"other", None)
    assert await read_all(store, key) == b"other"
    assert listing.keys() == [key]


async def test_concurrent_puts_of_one_key_leave_one_whole_object(
    store: ObjectStore, listing: Listing
) -> None:
    """Two workers holding the same job (a lease that expired) both store it: no mix of the two."""
    first, second = payload(6 * 1024 * 1024, seed=1), payload(6 * 1024 * 1024, seed=2)
    key = "jobs/upload-42"
    await asyncio.gather(
        store.put(key, chunked(first, 65_536), content_type=None, max_bytes=len(first)),
        store.put(key, chunked(second, 65_536), content_type=None, max_bytes=len(second)),
    )
    assert await read_all(store, key) in (first, second)
    assert listing.keys() == [key]
    listing.assert_no_leftovers()


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


async def test_file_store_key_below_an_object_is_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path.as_uri())
    await store.put_bytes("a", b"object", None)
    with pytest.raises(StoreError, match="parent of the key is an object") as caught:
        await store.put_bytes("a/b", b"x", None)
    assert not isinstance(caught.value, StoreUnavailable)  # retrying cannot help
    assert await read_all(store, "a") == b"object"


# --- S3 backend specifics ---------------------------------------------------------------------


async def test_s3_object_sits_under_the_prefix_with_its_content_type(
    s3_server: S3Server, s3_store_url: str
) -> None:
    store = open_store(s3_store_url)
    try:
        stored = await store.put_bytes("a/photo.jpg", b"\xff\xd8jpeg", "image/jpeg")
    finally:
        await store.close()
    bucket = s3_store_url.removeprefix("s3://").split("/")[0]
    assert stored.url == f"s3://{bucket}/media/a/photo.jpg"
    head = s3_server.client().head_object(Bucket=bucket, Key="media/a/photo.jpg")
    assert (head["ContentType"], head["ContentLength"]) == ("image/jpeg", 6)


async def test_s3_closed_port_is_unavailable(
    s3_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    store = open_store(s3_store_url)
    try:
        assert await store.ping() is False
        with pytest.raises(StoreUnavailable):
            await store.put_bytes("k", b"x", None)
        with pytest.raises(StoreUnavailable):
            await store.put(
                "k", chunked(payload(6 * 1024 * 1024)), content_type=None, max_bytes=10**9
            )
        with pytest.raises(StoreUnavailable):
            await read_all(store, "k")
    finally:
        await store.close()


async def test_s3_server_stopped_then_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store goes away under a client that already worked, then comes back on its port."""
    with running_s3_server() as server:
        for name, value in server.env.items():
            monkeypatch.setenv(name, value)
        bucket = server.create_bucket()
        store = open_store(f"s3://{bucket}")
        await store.put_bytes("before", b"1", None)
        port = int(server.endpoint_url.rsplit(":", 1)[1])
    try:
        with pytest.raises(StoreUnavailable):
            await store.put_bytes("during", b"2", None)
        assert await store.ping() is False
        with running_s3_server(port=port) as again:
            again.client().create_bucket(Bucket=bucket)  # moto keeps nothing across restarts
            await store.put_bytes("after", b"3", None)
            assert await read_all(store, "after") == b"3"
    finally:
        await store.close()


async def test_s3_missing_bucket_is_unavailable_not_missing_object(s3_store_url: str) -> None:
    store = open_store("s3://no-such-bucket-here/media")
    try:
        assert await store.ping() is False
        with pytest.raises(StoreUnavailable, match="NoSuchBucket"):
            await store.put_bytes("k", b"x", None)
        with pytest.raises(StoreUnavailable, match="NoSuchBucket"):
            await read_all(store, "k")
    finally:
        await store.close()


async def test_sweep_removes_what_killed_puts_left_and_nothing_else(
    store: ObjectStore, listing: Listing
) -> None:
    """A process killed mid-put leaves a temp file (file) or an unfinished multipart upload
    (S3). `sweep` removes it once it is older than the age given, and never an object."""
    await store.put_bytes("kept/object", b"whole", None)
    listing.leave_a_killed_put("killed/object")
    if listing.s3 is None:
        # moto 5 lists every multipart upload as initiated at 2010-11-10T20:48:33Z (a fixed
        # value in its ListMultipartUploads template), so only the file store can show that
        # a young leftover, which a live put may still own, is kept.
        assert await store.sweep(older_than_s=3600) == 0
        assert listing.leftovers() == 1
        await asyncio.sleep(1.1)
    assert listing.leftovers() == 1
    assert await store.sweep(older_than_s=1.0) == 1
    listing.assert_no_leftovers()
    assert b"".join([c async for c in store.get("kept/object")]) == b"whole"
    assert await store.sweep(older_than_s=0) == 0  # nothing left: idempotent


async def test_a_put_whose_temp_file_was_swept_fails_as_unavailable(tmp_path: Path) -> None:
    """A put stalled past the sweep's age loses its temp file: the put fails as retryable, and
    the key stays as it was."""
    store = open_store((tmp_path / "media").as_uri())
    gate = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield b"first part"
        await gate.wait()
        yield b"second part"

    put = asyncio.create_task(store.put("k/stalled", stalled(), content_type=None, max_bytes=99))
    await asyncio.sleep(0.2)
    assert await store.sweep(older_than_s=0) == 1
    gate.set()
    with pytest.raises(StoreUnavailable):
        await put
    assert not (tmp_path / "media" / "k" / "stalled").exists()
    await store.close()


# --- helpers ------------------------------------------------------------------------------------


@dataclass
class Listing:
    root: Path | None
    s3: S3Server | None
    bucket: str
    prefix: str = ""

    def keys(self) -> list[str]:
        """Keys of every object, temp files included (they would be leftovers)."""
        if self.root is not None:
            if not self.root.exists():
                return []
            files = (p for p in self.root.rglob("*") if p.is_file())
            return sorted(str(p.relative_to(self.root)) for p in files)
        assert self.s3 is not None
        keys = self.s3.keys(self.bucket)
        assert all(k.startswith(self.prefix) for k in keys), keys  # under the URL's prefix
        return [k.removeprefix(self.prefix) for k in keys]

    def leave_a_killed_put(self, key: str) -> None:
        """What a put leaves when its process dies mid-way, made without the code under test:
        a hidden temp file with some bytes, or a multipart upload with one part."""
        if self.root is not None:
            incoming = self.root / ".incoming"
            incoming.mkdir(parents=True, exist_ok=True)
            (incoming / ".0123456789abcdef01234567.tmp").write_bytes(b"part of " + key.encode())
            return
        assert self.s3 is not None
        client = self.s3.client()
        upload = client.create_multipart_upload(Bucket=self.bucket, Key=self.prefix + key)
        client.upload_part(
            Bucket=self.bucket,
            Key=self.prefix + key,
            UploadId=upload["UploadId"],
            PartNumber=1,
            Body=b"x" * 1024,
        )

    def leftovers(self) -> int:
        if self.root is not None:
            return len([k for k in self.keys() if os.path.basename(k).startswith(".")])
        assert self.s3 is not None
        return len(self.s3.pending_uploads(self.bucket))

    def assert_no_leftovers(self) -> None:
        keys = self.keys()
        assert not [k for k in keys if os.path.basename(k).startswith(".")], keys
        if self.s3 is not None:
            assert self.s3.pending_uploads(self.bucket) == []
