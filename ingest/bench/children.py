"""Child processes of the gateway phase (gateway, bare server, consumer): started with exactly
the bench's settings, dying with the bench, always stopped, their output kept for errors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pydantic import SecretStr

from ingest.bench.http_client import RawConnection
from ingest.bench.measure import BenchError, proc_cpu_seconds
from ingest.config import Settings
from ingest.embedded import _die_with_parent


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process load exactly these settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CRM_INGEST_") and k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")
    }
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        key = name.upper() if name in ("database_url", "kafka_bootstrap_servers") else None
        key = key or f"CRM_INGEST_{name.upper()}"
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return env


class Child:
    """A child process (gateway, bare server, consumer) that dies with us and is always stopped."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self._log: IO[bytes] = (log_dir / f"{name}.log").open("w+b")
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent(signal.SIGTERM),
        )

    def cpu_seconds(self) -> float:
        try:
            return proc_cpu_seconds(Path(f"/proc/{self.proc.pid}/stat").read_text())
        except OSError:
            return 0.0

    def tail(self, size: int = 3000) -> str:
        self._log.flush()
        self._log.seek(0, os.SEEK_END)
        self._log.seek(max(0, self._log.tell() - size))
        return self._log.read().decode(errors="replace")

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@contextlib.contextmanager
def children(log_dir: Path) -> Iterator[list[Child]]:
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            child.stop()


async def wait_http(child: Child, port: int, path: str) -> None:
    deadline = time.monotonic() + 60
    request = f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode()
    while True:
        if child.proc.poll() is not None:
            raise BenchError(f"{child.name} exited early:\n{child.tail()}")
        with contextlib.suppress(OSError, ValueError, asyncio.IncompleteReadError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                if await RawConnection(reader, writer).request(request, b"") == 200:
                    return
            finally:
                writer.close()
        if time.monotonic() > deadline:
            raise BenchError(f"{child.name} not ready at {path}:\n{child.tail()}")
        await asyncio.sleep(0.1)
