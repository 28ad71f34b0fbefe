"""Storing 100 MB must not hold 100 MB in memory: peak RSS growth of one streamed put, per
backend, printed as a figure and bounded (a memory bound, not a timing target)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.s3 import S3Server

pytestmark = pytest.mark.integration

MIB = 100
BOUND_MIB = 32


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_100mib_put_streams(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if backend == "file":
        url = f"file://{tmp_path}/media"
    else:
        url = request.getfixturevalue("s3_store_url")
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.media_rss", url, str(MIB)],
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
