"""`file:///dir`: objects are files under a local (or mounted) directory.

A put writes a temp file in the store's `.incoming` directory, fsyncs it, then `os.replace`s
it onto the key and fsyncs the key's directory: the key holds the old object or the whole new
one, never part of one, even across a crash. Keys may not start with ".", so `.incoming` is
never a key, and a crash's leftover there can never be taken for an object; `sweep` removes
leftovers by listing that one directory, whatever the number of objects.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from ingest.objectstore.base import Meter, StoredObject, UrlKeyedStore, rechunk
from ingest.objectstore.errors import ObjectNotFound, StoreError, StoreUnavailable
from ingest.objectstore.urls import StoreLocation, key_of

T = TypeVar("T")

# Bytes handed to a worker thread per write or read: few thread hops, bounded memory.
PIECE_BYTES = 1 << 20
# Where puts write before their rename: inside the root, so on the key's filesystem.
INCOMING = ".incoming"


class FileStore(UrlKeyedStore):
    def __init__(self, location: StoreLocation) -> None:
        self.root = Path(location.root)
        super().__init__(location.url)

    def _path(self, key_or_url: str) -> Path:
        return self.root / key_of(key_or_url, self._base_url)

    async def put(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        content_type: str | None,
        max_bytes: int,
    ) -> StoredObject:
        final = self._path(key)
        meter = Meter(max_bytes)
        fd, created = await _io(_open_temp, self.root, final)
        temp: Path | None = created
        try:
            # Errors of the source stream (a provider hanging up) pass through untranslated;
            # only our own file operations become StoreUnavailable.
            async for piece in rechunk(chunks, meter, PIECE_BYTES):
                await _io(_write_all, fd, piece)
            await _io(os.fsync, fd)
            written, fd = fd, -1
            os.close(written)
            await _io(_publish, created, final)
            temp = None
        finally:
            # Also on ObjectTooLarge, a failing source and cancellation: the temp file goes,
            # the key keeps whatever it held before.
            if fd >= 0 or temp is not None:
                await asyncio.shield(asyncio.to_thread(_discard, fd, temp))
        return StoredObject(key, self.url(key), meter.size, meter.sha256, content_type)

    async def get(self, key_or_url: str) -> AsyncIterator[bytes]:
        path = self._path(key_or_url)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectNotFound(f"no object {key_or_url}") from exc
        except OSError as exc:
            raise StoreUnavailable(f"cannot read {key_or_url}: {exc.strerror or exc}") from exc
        try:
            while True:
                try:
                    piece = await asyncio.to_thread(handle.read, PIECE_BYTES)
                except OSError as exc:
                    raise StoreUnavailable(f"cannot read {key_or_url}: {exc}") from exc
                if not piece:
                    return
                yield piece
        finally:
            handle.close()

    async def ping(self) -> bool:
        return await asyncio.to_thread(_writable_dir, self.root)

    async def sweep(self, older_than_s: float) -> int:
        """Remove temp files no put has written to for `older_than_s`: a killed process's."""
        try:
            return await asyncio.to_thread(_sweep_incoming, self.root / INCOMING, older_than_s)
        except OSError as exc:
            raise StoreUnavailable(f"file store: {exc.strerror or exc}") from exc

    async def close(self) -> None:
        return None


async def _io(function: Callable[..., T], *args: Any) -> T:
    """`function` in a worker thread, its OSError translated (disk full, I/O error, ...)."""
    try:
        return await asyncio.to_thread(function, *args)
    except OSError as exc:
        raise StoreUnavailable(f"file store: {exc.strerror or exc}") from exc


def _open_temp(root: Path, final: Path) -> tuple[int, Path]:
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        if not root.is_dir():
            raise  # the store's own directory cannot exist: unavailable until fixed
        # S3 can hold both "a" and "a/b"; a directory cannot. Keys of fixed depth avoid it.
        raise StoreError(f"{final.name}: a parent of the key is an object") from exc
    incoming = root / INCOMING
    incoming.mkdir(exist_ok=True)
    temp = incoming / f".{secrets.token_hex(12)}.tmp"
    return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644), temp


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _publish(temp: Path, final: Path) -> None:
    if final.is_dir():
        # os.replace would raise IsADirectoryError, which would read like a disk fault
        raise StoreError(f"{final.name} is a directory of other objects")
    os.replace(temp, final)
    directory = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _discard(fd: int, temp: Path | None) -> None:
    if fd >= 0:
        os.close(fd)
    if temp is not None:
        temp.unlink(missing_ok=True)


def _sweep_incoming(incoming: Path, older_than_s: float) -> int:
    # A live put writes at least every read timeout, and lasts at most a download's deadline;
    # an unlinked temp only fails that put's rename, which its caller retries.
    before = time.time() - older_than_s
    removed = 0
    try:
        entries = list(os.scandir(incoming))
    except FileNotFoundError:
        return 0  # no put yet
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < before:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            continue  # renamed onto its key, or swept by another process, meanwhile
    return removed


def _writable_dir(root: Path) -> bool:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return root.is_dir() and os.access(root, os.W_OK | os.X_OK)
