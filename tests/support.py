"""Helpers shared by the integration, chaos, acceptance and migration tests."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import sql
from ingest.config import Settings
from ingest.objectstore import ObjectStore
from sql.db import connect

T = TypeVar("T")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def create_database(server_url: str, prefix: str = "t") -> str:
    """A new, empty database on the same server; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(server_url, name)


async def migrated_database(server_url: str, prefix: str) -> str:
    """A new database on the same server with every migration applied; returns its URL."""
    url = await create_database(server_url, prefix)
    conn = await connect(url)
    try:
        await sql.migrate(conn)
    finally:
        await conn.close()
    return url


async def eventually(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    within: float = 30.0,
    interval: float = 0.1,
) -> T:
    """Poll `probe` until `done(value)`; returns the last value (the caller asserts on it)."""
    deadline = time.monotonic() + within
    value = await probe()
    while not done(value) and time.monotonic() < deadline:
        await asyncio.sleep(interval)
        value = await probe()
    return value


# --- crm-ingest processes ---------------------------------------------------------------------

_SCRIPT = Path(sys.executable).parent / "crm-ingest"
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "ingest.cli"]


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `crm-ingest` process for one isolated pipeline."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CRM_INGEST_")}
    return {
        **base,
        "DATABASE_URL": settings.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "CRM_INGEST_TOPIC_PREFIX": settings.topic_prefix,
        "CRM_INGEST_CONSUMER_GROUP": settings.consumer_group,
        "CRM_INGEST_PARTITIONS": str(settings.partitions),
        "CRM_INGEST_PRODUCER_IDEMPOTENCE": str(settings.producer_idempotence).lower(),
        "CRM_INGEST_METRICS_PORT": "0",
        "CRM_INGEST_LOG_FORMAT": "json",
        "CRM_INGEST_SECRETS_KEY": settings.secrets_key.get_secret_value(),
        "CRM_INGEST_MEDIA_STORE": settings.media_store,
        **extra,
    }


@dataclass
class Service:
    """A `crm-ingest` subprocess whose output goes to a log file (a pipe could fill up)."""

    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def sigterm(self) -> float:
        """Sends SIGTERM; returns when (time.monotonic()), to time the shutdown from."""
        signalled = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        return signalled

    async def wait_exit(self, within: float) -> int | None:
        """The exit code, or None if the process still runs after `within` seconds."""
        try:
            return await asyncio.to_thread(self.proc.wait, within)
        except subprocess.TimeoutExpired:
            return None

    async def stop(self, within: float) -> int | None:
        """SIGTERM, then the exit code (None if still running after `within` seconds)."""
        self.sigterm()
        return await self.wait_exit(within)


@dataclass
class Processes:
    """The `crm-ingest` processes a test starts; whatever still runs at the end is killed (by
    pid). A context manager: a fixture yields it inside `with`."""

    started: list[Service] = field(default_factory=list)

    def start(self, env: dict[str, str], log: Path, *args: str) -> Service:
        """`crm-ingest *args`, its output appended to `log`."""
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [*CLI, *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        service = Service(proc, log)
        self.started.append(service)
        return service

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for service in self.started:
            if service.proc.poll() is None:
                service.proc.kill()
                service.proc.wait(10)


async def read_object(store: ObjectStore, url: str) -> bytes:
    """An object's bytes, read back through the store (what the CRM would open)."""
    return b"".join([chunk async for chunk in store.get(url)])


def sha256(data: bytes | None) -> str:
    return hashlib.sha256(data or b"").hexdigest()
