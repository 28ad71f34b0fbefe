"""`crm-ingest channel …` and `crm-ingest secrets …`: channel config with its secrets sealed
at rest (ingest/credentials.py), and the key that seals them."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from datetime import timedelta
from typing import Any

import asyncpg

from ingest.cli_base import CliError, Verb, given_pairs, print_json, require
from ingest.config import TRANSPORTS, Settings
from ingest.credentials import Keyring
from ingest.errors import ChannelConfigError
from ingest.logs import get_logger

log = get_logger("crm_ingest.cli")


def keyring_of(settings: Settings) -> Keyring:
    from ingest.credentials import keyring

    return keyring(settings)


def _masked(view: dict[str, Any], shown: list[str]) -> dict[str, Any]:
    from ingest.credentials import masked_config

    return {**view, "config": masked_config(view["transport"], view["config"], shown)}


async def cmd_channel_add(settings: Settings, args: argparse.Namespace) -> None:
    require(settings, database=True)
    from ingest import admin

    given = given_pairs(args.config)
    try:
        channel = await admin.add_channel(
            settings.database_url,
            args.tenant,
            args.transport,
            given,
            name=args.name,
            keyring=keyring_of(settings),
        )
    except (ChannelConfigError, LookupError) as exc:
        raise CliError(str(exc)) from exc
    print_json(_masked(channel, sorted(set(channel["config"]) - set(given))))


async def cmd_channel_set(settings: Settings, args: argparse.Namespace) -> None:
    await _change_channel(settings, args.channel, given_pairs(args.config), None, args.grace_hours)


async def cmd_channel_rotate(settings: Settings, args: argparse.Namespace) -> None:
    await _change_channel(settings, args.channel, {}, args.key, args.grace_hours)


async def _change_channel(
    settings: Settings,
    channel_id: uuid.UUID,
    given: dict[str, str],
    rotate: str | None,
    grace_hours: float,
) -> None:
    require(settings, database=True)
    from ingest import admin
    from ingest.transports import config_keys

    if rotate is None and not given:
        raise CliError("name at least one --config KEY=VALUE to set")
    try:
        change = await admin.change_channel(
            settings.database_url,
            channel_id,
            given,
            rotate=rotate,
            grace=timedelta(hours=grace_hours),
            keyring=keyring_of(settings),
        )
    except (ChannelConfigError, LookupError) as exc:
        raise CliError(str(exc)) from exc
    view = change.view
    printed = _masked(view, change.generated)
    printed["changed"] = change.changed
    printed["previous_accepted_until"] = {
        name: until.isoformat() for name, until in change.previous_until.items()
    }
    notes = {k.name: k.rotation for k in config_keys(view["transport"]) if k.rotation}
    printed["next_steps"] = [notes[name] for name in change.changed if name in notes]
    if view["transport"] == "telegram" and "secret_token" in change.changed:
        printed["next_steps"].append(
            'curl -sS "https://api.telegram.org/bot$BOT_TOKEN/setWebhook"'
            f' -d "url=https://<your public host>{view["webhook_path"]}"'
            f' -d "secret_token={view["config"]["secret_token"]}"'
        )
    print_json(printed)


async def cmd_secrets_generate_key(settings: Settings, _: argparse.Namespace) -> None:
    from ingest.credentials import generate_key

    sys.stdout.write(generate_key() + "\n")


async def cmd_secrets_rekey(settings: Settings, _: argparse.Namespace) -> None:
    require(settings, database=True)
    from ingest import admin

    print_json({"rekeyed": await admin.rekey(settings.database_url, keyring_of(settings))})


async def check_secrets_key(settings: Settings) -> None:
    """At start: CRM_INGEST_SECRETS_KEY is set and opens the stored channel secrets. A database
    that cannot be reached now is not an error here (the process waits for it)."""
    from ingest import admin
    from sql.db import connect

    keys = keyring_of(settings)
    try:
        conn = await asyncio.wait_for(connect(settings.database_url), timeout=5.0)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        log.warning("secrets key not checked: database unreachable", error=type(exc).__name__)
        return
    try:
        await admin.check_keyring(conn, keys)
    finally:
        await conn.close()


def admin_grace_hours() -> float:
    from ingest.admin import DEFAULT_GRACE

    return DEFAULT_GRACE.total_seconds() / 3600


def add_channel_verbs(verbs: Any, verb: Verb) -> None:
    """`channel add|set|rotate` and `secrets generate-key|rekey`."""
    channel = verbs.add_parser("channel", help="Manage provider channels.")
    channel_verbs = channel.add_subparsers(dest="channel_verb", required=True, metavar="VERB")
    add = verb("add", cmd_channel_add, "Register a provider channel of a tenant.", channel_verbs)
    add.add_argument("--tenant", type=uuid.UUID, required=True, help="tenant id")
    add.add_argument("--transport", choices=TRANSPORTS, required=True)
    add.add_argument("--name", default="", help="a label for operators")
    add.add_argument(
        "--config", action="append", metavar="KEY=VALUE", help="channel setting (repeatable)"
    )

    def add_grace(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--grace-hours",
            type=float,
            default=admin_grace_hours(),
            metavar="H",
            help="hours the replaced secret is still accepted (default 24; 0 = not at all)",
        )

    change = verb("set", cmd_channel_set, "Add or change config keys of a channel.", channel_verbs)
    change.add_argument("channel", type=uuid.UUID, metavar="CHANNEL_ID")
    change.add_argument(
        "--config", action="append", metavar="KEY=VALUE", help="channel setting (repeatable)"
    )
    add_grace(change)
    rotate = verb(
        "rotate",
        cmd_channel_rotate,
        "Replace a generated secret (e.g. secret_token) and print the new value once.",
        channel_verbs,
    )
    rotate.add_argument("channel", type=uuid.UUID, metavar="CHANNEL_ID")
    rotate.add_argument("key", metavar="KEY")
    add_grace(rotate)

    secrets = verbs.add_parser("secrets", help="Channel secrets at rest: keys and re-keying.")
    secrets_verbs = secrets.add_subparsers(dest="secrets_verb", required=True, metavar="VERB")
    verb(
        "generate-key",
        cmd_secrets_generate_key,
        "Print a new CRM_INGEST_SECRETS_KEY value.",
        secrets_verbs,
    )
    verb(
        "rekey",
        cmd_secrets_rekey,
        "Re-encrypt every channel's secrets with the first key of CRM_INGEST_SECRETS_KEY.",
        secrets_verbs,
    )
