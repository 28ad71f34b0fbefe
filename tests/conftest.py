"""Session-wide PostgreSQL and Kafka endpoints: env -> testcontainers -> embedded."""

from __future__ import annotations

import os
from collections.abc import Iterator

import hypothesis
import pytest

from ingest.config import load_settings
from ingest.embedded import ResolvedServices, resolve_services


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
