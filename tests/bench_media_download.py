"""What the safe media download costs: one large file and many small ones, over real HTTP.

    python -m tests.bench_media_download [--mib 100] [--small 200]

The WhatsApp fake (Graph lookup, then the media host on another origin) runs in a child
process, so this process's RSS is the client's alone. Prints MiB/s and the peak RSS growth of
one streamed download with its sha256 and size checks, and the rate of small fetches (lookup +
10 kB download each, one at a time). Figures are in README.md, Media, Downloading.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time

from ingest.transports.fetching import MediaRef, MediaSource
from tests.bench_support import fake_in_child
from tests.fakes.fixtures import media_sources

SERVER = """
import hashlib, os, sys, time
from tests.fakes.whatsapp import WhatsAppFake
fake = WhatsAppFake()
for server in fake.servers:
    server.start()
fake.add_token("T")
big = os.urandom(1 << 20) * int(sys.argv[1])
fake.add_media("1", big, mime_type="application/pdf", chunk_size=256 * 1024, chunk_delay_s=1e-6)
fake.add_media("2", os.urandom(10_000))
hosts = ",".join(server.host_port for server in fake.servers)
print(fake.graph_url, hosts, hashlib.sha256(big).hexdigest(), flush=True)
sys.stdin.read()
"""


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS")


async def large(source: MediaSource, digest: str) -> None:
    before = peak = rss_mib()
    received, sha256, started = 0, hashlib.sha256(), time.perf_counter()
    async with source.open(MediaRef("whatsapp", "whatsapp:1"), {"access_token": "T"}) as body:
        async for chunk in body.chunks():
            received += len(chunk)
            sha256.update(chunk)
            peak = max(peak, rss_mib())
    seconds = time.perf_counter() - started
    assert sha256.hexdigest() == digest
    print(
        f"large: {received / 2**20:.0f} MiB in {seconds:.2f} s, "
        f"{received / seconds / 2**20:.0f} MiB/s, peak RSS growth {peak - before:.1f} MiB"
    )


async def small(source: MediaSource, count: int) -> None:
    started = time.perf_counter()
    for _ in range(count):
        async with source.open(MediaRef("whatsapp", "whatsapp:2"), {"access_token": "T"}) as body:
            async for _chunk in body.chunks():
                pass
    seconds = time.perf_counter() - started
    print(f"small: {count} fetches, {count / seconds:.0f}/s, {seconds / count * 1000:.1f} ms each")


async def measure(graph: str, hosts: str, digest: str, mib: int, count: int) -> None:
    overrides = {"whatsapp_graph_url": graph, "media_allowed_hosts": hosts}
    async with media_sources(overrides, media_max_bytes=(mib + 1) << 20) as sources:
        await large(sources["whatsapp"], digest)
        await small(sources["whatsapp"], count)


def main(mib: int, count: int) -> None:
    with fake_in_child(SERVER, str(mib)) as (graph, hosts, digest):
        asyncio.run(measure(graph, hosts, digest, mib, count))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--small", type=int, default=200)
    args = parser.parse_args()
    main(args.mib, args.small)
