"""What every `crm-ingest` verb shares: the one-line failure, JSON output, required settings
and KEY=VALUE options."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from ingest.config import Settings

# verb(name, handler, help, parent) -> the verb's parser (defined in cli.build_parser)
Verb = Callable[..., argparse.ArgumentParser]


class CliError(Exception):
    """A one-line, user-facing failure."""


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, default=str) + "\n")
    sys.stdout.flush()


def require(settings: Settings, *, database: bool = False, broker: bool = False) -> None:
    if database and not settings.database_url:
        raise CliError("DATABASE_URL is not set")
    if broker and not settings.kafka_bootstrap_servers:
        raise CliError("KAFKA_BOOTSTRAP_SERVERS is not set")


def given_pairs(items: list[str] | None, option: str = "--config") -> dict[str, str]:
    given: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            # The value may be a secret: name the key only.
            raise CliError(f"{option} expects KEY=VALUE, got one without '=' ({key[:20]!r}…)")
        given[key] = value
    return given
