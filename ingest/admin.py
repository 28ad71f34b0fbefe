"""Operator actions behind `crm-ingest migrate | tenant add | channel add|set|rotate | secrets`.

Channel configs are stored sealed (ingest/credentials.py). The functions here return them
decrypted, for the caller to mask before printing (`credentials.masked_config`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg

import sql
from ingest import credentials
from ingest.config import Transport, load_settings
from ingest.credentials import Keyring
from ingest.errors import ChannelConfigError
from ingest.transports import config_keys, load_adapters
from ingest.transports.channel_keys import generate_token
from sql.db import connect

DEFAULT_GRACE = timedelta(hours=24)


def webhook_path(transport: str, channel_id: uuid.UUID) -> str:
    return f"/webhooks/{transport}/{channel_id}"


def channel_view(row: asyncpg.Record, config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "tenant_id": str(row["tenant_id"]),
        "transport": row["transport"],
        "name": row["name"],
        "webhook_path": webhook_path(row["transport"], row["id"]),
        "config": dict(config),
    }


def default_keyring() -> Keyring:
    """CRM_INGEST_SECRETS_KEY from the environment (for callers that hold no Settings)."""
    return credentials.keyring(load_settings())


Reseal = Callable[[asyncpg.Record, dict[str, Any]], dict[str, Any] | None]


async def _reseal_each(conn: asyncpg.Connection, reseal: Reseal) -> int:
    """Every channel, each locked in a short transaction of its own (gateways and consumers
    never wait long): `reseal` returns its new stored config, or None to leave it. Returns how
    many changed."""
    changed = 0
    for channel_id in await conn.fetch(sql.QUERIES["channel_ids"]):
        async with conn.transaction():
            row = await conn.fetchrow(sql.QUERIES["lock_channel"], channel_id["id"])
            if row is None:
                continue  # deleted since the ids were read
            new = reseal(row, _stored(row))
            if new is not None:
                await conn.fetchrow(sql.QUERIES["update_channel_config"], row["id"], new)
                changed += 1
    return changed


async def migrate(database_url: str, keyring: Keyring | None = None) -> dict[str, Any]:
    """SQL migrations, then channel secrets still stored in plaintext encrypted (idempotent: a
    sealed value is left as it is). The key is needed only when there is something to seal."""

    def seal_plaintext(row: asyncpg.Record, stored: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal keyring
        plain = [
            name
            for name in credentials.secret_names(row["transport"])
            if name in stored and not str(stored[name]).startswith(credentials.PREFIX)
        ]
        if not plain:
            return None
        keyring = keyring or default_keyring()
        return {
            **stored,
            **{name: keyring.seal(row["id"], name, str(stored[name])) for name in plain},
        }

    conn = await connect(database_url)
    try:
        applied = await sql.migrate(conn)
        return {"applied": applied, "channels_encrypted": await _reseal_each(conn, seal_plaintext)}
    finally:
        await conn.close()


async def add_tenant(database_url: str, tenant_id: uuid.UUID, name: str = "") -> dict[str, str]:
    conn = await connect(database_url)
    try:
        row = await conn.fetchrow(sql.QUERIES["insert_tenant"], tenant_id, name)
        assert row is not None  # an upsert's RETURNING always yields its row
        return {"id": str(row["id"])}
    finally:
        await conn.close()


def _adapter_config(
    transport: Transport, given: Mapping[str, str], current: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    adapters = load_adapters()
    if transport not in adapters:
        raise ChannelConfigError(f"transport {transport} is not available in this version")
    return adapters[transport].channel_config(given, current)


def _stored(row: asyncpg.Record) -> dict[str, Any]:
    return dict(row["config"] or {})


async def insert_channel(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    transport: Transport,
    given: Mapping[str, str],
    *,
    name: str = "",
    keyring: Keyring | None = None,
) -> dict[str, Any]:
    """Validate, generate missing secrets, seal and store; the view holds the plaintext."""
    keyring = keyring or default_keyring()
    config = _adapter_config(transport, given)
    if not await conn.fetchval(sql.QUERIES["tenant_exists"], tenant_id):
        raise LookupError(f"unknown tenant {tenant_id}")
    channel_id = uuid.uuid4()
    stored = credentials.seal_config(keyring, transport, channel_id, config)
    row = await conn.fetchrow(
        sql.QUERIES["insert_channel"], channel_id, tenant_id, transport, name, stored
    )
    assert row is not None  # INSERT ... RETURNING yields the row it inserted
    return channel_view(row, config)


async def add_channel(
    database_url: str,
    tenant_id: uuid.UUID,
    transport: Transport,
    given: Mapping[str, str],
    *,
    name: str = "",
    keyring: Keyring | None = None,
) -> dict[str, Any]:
    conn = await connect(database_url)
    try:
        return await insert_channel(conn, tenant_id, transport, given, name=name, keyring=keyring)
    finally:
        await conn.close()


@dataclass(slots=True)
class ChannelChange:
    view: dict[str, Any]  # plaintext config
    changed: list[str]
    generated: list[str] = field(default_factory=list)
    previous_until: dict[str, datetime] = field(default_factory=dict)


async def change_channel(
    database_url: str,
    channel_id: uuid.UUID,
    given: Mapping[str, str],
    *,
    rotate: str | None = None,
    grace: timedelta = DEFAULT_GRACE,
    keyring: Keyring | None = None,
) -> ChannelChange:
    """`channel set` (apply `given`) or `channel rotate` (a new value for the generated secret
    `rotate`). A secret that changes stays accepted for `grace`, so webhooks keep verifying
    while the provider is switched over."""
    keyring = keyring or default_keyring()
    conn = await connect(database_url)
    try:
        async with conn.transaction():
            row = await conn.fetchrow(sql.QUERIES["lock_channel"], channel_id)
            if row is None:
                raise LookupError(f"unknown channel {channel_id}")
            transport = cast(Transport, row["transport"])
            opened = credentials.open_config(keyring, transport, row["id"], _stored(row))
            generated: list[str] = []
            if rotate is not None:
                key = next((k for k in config_keys(transport) if k.name == rotate), None)
                if key is None or not key.generated:
                    rotatable = [k.name for k in config_keys(transport) if k.generated]
                    raise ChannelConfigError(
                        f"{transport} {rotate} cannot be rotated (only {', '.join(rotatable)} "
                        "can; change other keys with crm-ingest channel set)"
                    )
                given = {rotate: generate_token()}
                generated = [rotate]
            config = _adapter_config(transport, given, opened.config)
            secret = credentials.secret_names(transport)
            now = datetime.now(UTC)
            moved = credentials.keep_previous(
                opened.config, config, secret & set(given), grace, now
            )
            # Expired grace periods are dropped; a value changed again replaces its previous one.
            previous = {n: e for n, e in opened.previous.items() if e[1] > now and n not in moved}
            previous.update(moved)
            stored = credentials.seal_config(keyring, transport, row["id"], config, previous)
            updated = await conn.fetchrow(sql.QUERIES["update_channel_config"], row["id"], stored)
            assert updated is not None  # the row is locked: it cannot have gone
        changed = sorted(name for name in config if config[name] != opened.config.get(name))
        return ChannelChange(
            view=channel_view(updated, config),
            changed=changed,
            generated=generated + sorted(set(config) - set(opened.config) - set(given)),
            previous_until={name: until for name, (_, until) in moved.items()},
        )
    finally:
        await conn.close()


async def rekey(database_url: str, keyring: Keyring) -> int:
    """Re-seal every channel secret not yet sealed with the newest key, while every running
    process holds all the keys (README, Credentials)."""

    def reseal_old(row: asyncpg.Record, stored: dict[str, Any]) -> dict[str, Any] | None:
        sealed = [stored[n] for n in credentials.secret_names(row["transport"]) if n in stored]
        sealed += [e["value"] for e in (stored.get(credentials.PREVIOUS) or {}).values()]
        if all(keyring.is_current(value) for value in sealed):
            return None
        opened = credentials.open_config(keyring, row["transport"], row["id"], stored)
        return credentials.seal_config(
            keyring, row["transport"], row["id"], opened.config, opened.previous
        )

    conn = await connect(database_url)
    try:
        return await _reseal_each(conn, reseal_old)
    finally:
        await conn.close()


async def check_keyring(conn: asyncpg.Connection, keyring: Keyring) -> int:
    """Open every channel's secrets; raises SecretsKeyError when the configured keys cannot
    (a wrong CRM_INGEST_SECRETS_KEY). Returns how many channels were checked."""
    rows = await conn.fetch(sql.QUERIES["channel_configs"])
    for row in rows:
        try:
            credentials.open_config(keyring, row["transport"], row["id"], _stored(row))
        except credentials.SealedSecretError:
            continue  # one damaged channel answers 503 on its own; it must not stop the rest
    return len(rows)
