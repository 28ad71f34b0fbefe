"""Channel config keys, declared once per provider: what each key is, whether it is a secret,
whether it is generated, and what rotating it means.

`channel add`, `channel set` and `channel rotate` validate against these declarations, and the
credentials code encrypts and masks exactly the keys marked `secret`. A check returns what is
wrong with a value (never the value itself, which may be a secret) or None.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ingest.errors import ChannelConfigError

Check = Callable[[str], str | None]


def generate_token(nbytes: int = 32) -> str:
    """A URL-safe secret using only A-Za-z0-9_- (valid as a Telegram secret_token)."""
    return secrets.token_urlsafe(nbytes)


@dataclass(frozen=True, slots=True)
class ConfigKey:
    name: str
    check: Check
    secret: bool = False
    generated: bool = False  # generated when absent; `channel rotate` replaces it
    required: str | None = None  # why the key is required (the error says so), None if optional
    rotation: str = ""  # what rotating or changing it means for the operator


def pattern(regex: str, what: str) -> Check:
    compiled = re.compile(regex)
    return lambda value: None if compiled.fullmatch(value) else what


def printable(value: str) -> str | None:
    """Printable ASCII without surrounding spaces (tokens and keys pasted from a console)."""
    if value and value.isascii() and value.isprintable() and value == value.strip():
        return None
    return "must be printable ASCII, no surrounding spaces"


def http_url(value: str) -> str | None:
    try:
        host = urlsplit(value).hostname
    except ValueError:
        host = None
    if value.startswith(("http://", "https://")) and host:
        return None
    return "must be an http:// or https:// URL"


def build_config(
    transport: str,
    keys: Sequence[ConfigKey],
    given: Mapping[str, str],
    current: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`current` (if any) with `given` applied: unknown keys and bad values refused, missing
    generated secrets generated, required keys checked. Pure: nothing is stored here."""
    known = {key.name: key for key in keys}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ChannelConfigError(f"unknown config key for {transport}: {unknown[0]}")
    config = dict(current or {})
    for name, value in given.items():
        key = known[name]
        if value == "" and key.required is not None:
            raise ChannelConfigError(f"{transport} {name} is required ({key.required})")
        problem = key.check(value) if isinstance(value, str) else "must be a string"
        if problem is not None:
            raise ChannelConfigError(f"{transport} {name} {problem}")
        config[name] = value
    for key in keys:
        if key.name in config:
            continue
        if key.generated:
            config[key.name] = generate_token()
        elif key.required is not None:
            raise ChannelConfigError(f"{transport} {key.name} is required ({key.required})")
    return config


def secret_names(keys: Sequence[ConfigKey]) -> frozenset[str]:
    return frozenset(key.name for key in keys if key.secret)
