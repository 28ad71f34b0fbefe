"""Session-wide PostgreSQL and Kafka endpoints: env -> testcontainers -> embedded."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import hypothesis
import pytest

from ingest.config import load_settings
from ingest.credentials import generate_key
from ingest.embedded import ResolvedServices, resolve_services
from tests.support import Processes

# The provider API fakes (tests/fakes/): telegram_api, whatsapp_api, twilio_api, ...
pytest_plugins = ["tests.fakes.fixtures"]

if TYPE_CHECKING:
    from tests.fakes.s3 import S3Server

# One key for the whole run (channel secrets are sealed with it); subprocesses get it through
# tests.support.cli_env. A key given in the environment (CI, a developer) is used as it is.
os.environ.setdefault("CRM_INGEST_SECRETS_KEY", generate_key())


@pytest.fixture(scope="session")
def services() -> Iterator[ResolvedServices]:
    with resolve_services(load_settings(), allow_containers=True) as resolved:
        yield resolved


@pytest.fixture(scope="session")
def database_url(services: ResolvedServices) -> str:
    return services.database_url


@pytest.fixture(scope="session")
def bootstrap_servers(services: ResolvedServices) -> str:
    return services.bootstrap_servers


# CI runs the property tests derandomized: the same examples every run, so a red build is
# reproducible; locally each run explores new ones.
hypothesis.settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    hypothesis.settings.load_profile("ci")


# The chaos, shutdown and security tests print their figures (events sent, stored, lost,
# duplicated, ...) as lines starting with "[name] ". Output of passing tests is captured, so the
# figures are collected here and shown in a section at the end of every run, CI's included.
FIGURE_LINE = re.compile(r"^\[[a-z][^\]]*\] ")
FIGURES: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed:
        FIGURES.extend(
            f"{report.nodeid.split('::')[-1]}: {line}"
            for line in report.capstdout.splitlines()
            if FIGURE_LINE.match(line)
        )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture
def processes() -> Iterator[Processes]:
    """`crm-ingest` subprocesses a test starts; whatever is left running is killed after it."""
    with Processes() as started:
        yield started


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3-compatible HTTP server (moto's standalone server) on a free local port."""
    from tests.fakes.s3 import running_s3_server  # moto loads only for tests that use it

    with running_s3_server() as server:
        yield server


@pytest.fixture
def s3_store_url(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """`s3://<new bucket>/media` on `s3_server`, with the AWS_* variables pointing at it (also
    for `crm-ingest` subprocesses started from this environment)."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return f"s3://{s3_server.create_bucket()}/media"
