"""What sending a reply costs: one large upload streamed from the store, and many small texts,
over real HTTP to the Telegram fake.

    python -m tests.bench_send [--mib 45] [--texts 200]

The Bot API fake runs in a child process, so this process's RSS is the sender's alone. Prints
the time and peak RSS growth of one `sendDocument` whose bytes stream from a file:// store, and
the rate of `sendMessage` calls one at a time. Figures are in README.md, Replies.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import threading
import time
import uuid

from ingest.objectstore import open_store
from ingest.transports.sending import MessageSender, OutboundMessage
from tests.bench_media_download import rss_mib
from tests.bench_support import fake_in_child
from tests.fakes.fixtures import senders, stored_attachment

TOKEN = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"
SERVER = f"""
import sys
from tests.fakes.telegram import TelegramFake
fake = TelegramFake()
fake.server.start()
fake.add_bot("{TOKEN}")
print(fake.url, flush=True)
sys.stdin.read()
"""


class PeakRss:
    """Samples this process's RSS in a thread while the event loop is busy sending."""

    def __init__(self) -> None:
        self.before = self.peak = rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mib())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def measure(api_url: str, mib: int, texts: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = open_store(f"file://{directory}")
        attachment = await stored_attachment(
            store, 1, os.urandom(1 << 20) * mib, "big.pdf", "application/pdf"
        )
        async with senders({"telegram_api_url": api_url}, store) as by_transport:
            sender: MessageSender = by_transport["telegram"]
            config = {"bot_token": TOKEN}
            upload = OutboundMessage(uuid.uuid4(), "1", None, attachments=(attachment,))
            started = time.perf_counter()
            with PeakRss() as rss:
                await sender.send(upload, config)
            seconds = time.perf_counter() - started
            print(
                f"upload: {mib} MiB sendDocument in {seconds:.2f} s "
                f"({mib / seconds:.0f} MiB/s), peak RSS growth {rss.peak - rss.before:.1f} MiB"
            )
            started = time.perf_counter()
            for n in range(texts):
                await sender.send(OutboundMessage(uuid.uuid4(), "2", f"reply {n}"), config)
            seconds = time.perf_counter() - started
            print(
                f"texts: {texts} sendMessage, {texts / seconds:.0f}/s, "
                f"{seconds / texts * 1000:.1f} ms each"
            )
        await store.close()


def main(mib: int, texts: int) -> None:
    with fake_in_child(SERVER) as (api_url,):
        asyncio.run(measure(api_url, mib, texts))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=45)
    parser.add_argument("--texts", type=int, default=200)
    args = parser.parse_args()
    main(args.mib, args.texts)
