"""Child process of test_objectstore_memory: streams N MiB through `ObjectStore.put` and prints
the peak RSS growth during the put as JSON (its own process, so nothing else counts).

    python -m tests.integration.streamed_put STORE_URL MIB [HANG_AFTER_MIB]

With HANG_AFTER_MIB the source prints "hanging" after that much and never ends, so the test
can SIGKILL the process in the middle of a put.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from ingest.objectstore import open_store

KEY = "big/streamed.bin"
CHUNK = 64 * 1024  # what an HTTP download hands over at a time


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak (VmHWM) restarts now


async def download(total: int, hang_after: int | None = None) -> AsyncIterator[bytes]:
    seed = os.urandom(CHUNK)
    for n in range(total // CHUNK):
        if n * CHUNK == hang_after:
            print("hanging", flush=True)
            await asyncio.Event().wait()
        # a new object per chunk, as a download produces; distinct content per chunk
        yield n.to_bytes(8, "big") + seed[8:]


async def main(url: str, mib: int, hang_after_mib: int | None) -> None:
    store = open_store(url)
    try:
        # connections, botocore's service model and the thread pool are there before we measure
        await store.put_bytes("warm-up", b"x", None)
        before = rss_kib("VmRSS")
        reset_peak_rss()
        hang_after = None if hang_after_mib is None else hang_after_mib * 1024 * 1024
        stored = await store.put(
            KEY, download(mib * 1024 * 1024, hang_after), content_type=None, max_bytes=10**12
        )
        growth = rss_kib("VmHWM") - before
    finally:
        await store.close()
    print(
        json.dumps(
            {
                "size": stored.size,
                "sha256": stored.sha256,
                "url": stored.url,
                "rss_growth_kib": growth,
            }
        )
    )


if __name__ == "__main__":
    hang = int(sys.argv[3]) if len(sys.argv) > 3 else None
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), hang))
