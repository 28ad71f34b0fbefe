"""Streamed puts in their own process, per backend: storing 100 MB must not hold 100 MB in
memory (peak RSS growth printed as a figure and bounded: a memory bound, not a timing target),
and a process SIGKILLed in the middle of a put leaves nothing under the key."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ingest.objectstore import ObjectNotFound, open_store
from tests.fakes.s3 import S3Server
from tests.integration.streamed_put import KEY

pytestmark = pytest.mark.integration

MIB = 100
BOUND_MIB = 32


def store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "file":
        return (tmp_path / "media").as_uri()
    return str(request.getfixturevalue("s3_store_url"))


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_100mib_put_streams(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = store_url(backend, tmp_path, request)
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.streamed_put", url, str(MIB)],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    growth_mib = result["rss_growth_kib"] / 1024
    print(f"[media-rss] {backend}: {MIB} MiB streamed through put, peak RSS +{growth_mib:.1f} MiB")
    assert result["size"] == MIB * 1024 * 1024
    assert result["sha256"] == sha256_of_stored(result["url"], request)
    assert growth_mib < BOUND_MIB


def sha256_of_stored(url: str, request: pytest.FixtureRequest) -> str:
    """The stored bytes' hash, read back without the code under test."""
    digest = hashlib.sha256()
    if url.startswith("file://"):
        with open(url.removeprefix("file://"), "rb") as stored:
            while piece := stored.read(1 << 20):
                digest.update(piece)
        return digest.hexdigest()
    server: S3Server = request.getfixturevalue("s3_server")
    bucket, _, key = url.removeprefix("s3://").partition("/")
    body = server.client().get_object(Bucket=bucket, Key=key)["Body"]
    for piece in body.iter_chunks(1 << 20):
        digest.update(piece)
    return digest.hexdigest()


@pytest.mark.parametrize("backend", ["file", "s3"])
async def test_sigkill_mid_put_leaves_nothing_under_the_key(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = store_url(backend, tmp_path, request)
    child = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "tests.integration.streamed_put", url, "100", "12"],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        assert line == b"hanging\n"  # 12 MiB in: two S3 parts sent, the third one filling
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    store = open_store(url)
    try:
        with pytest.raises(ObjectNotFound):
            async for _ in store.get(KEY):
                pass
        if backend == "file":
            # what the kill left is a hidden temp file of 12 MiB or more, never under the key
            (left,) = (tmp_path / "media" / ".incoming").iterdir()
            assert left.name.startswith(".")
            assert left.name.endswith(".tmp")
            assert left.stat().st_size >= 12 * 2**20
            assert list((tmp_path / "media" / "big").iterdir()) == []  # made for the key only
        # the retry (the job claimed again) writes the whole object under the same key
        stored = await store.put_bytes(KEY, b"complete", None)
        assert [chunk async for chunk in store.get(stored.url)] == [b"complete"]
        # the worker's sweep takes the leftover (on S3 the unfinished upload), not the object
        assert await store.sweep(older_than_s=0) == 1
        assert await store.sweep(older_than_s=0) == 0
        assert [chunk async for chunk in store.get(stored.url)] == [b"complete"]
    finally:
        await store.close()
    if backend == "file":
        assert sorted(p.name for p in (tmp_path / "media" / "big").iterdir()) == [Path(KEY).name]
        assert list((tmp_path / "media" / ".incoming").iterdir()) == []
