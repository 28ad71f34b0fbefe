"""`crm-ingest outbound …`: the reply dispatcher alone (`work`), and one command by hand
(`send`, for ops and demos)."""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from pydantic import ValidationError

from ingest.cli_base import CliError, Verb, print_json, require
from ingest.config import Settings
from ingest.errors import PublishUnavailable
from ingest.logs import get_logger

log = get_logger("crm_ingest.cli")


def build_command(tenant_id: uuid.UUID, args: argparse.Namespace) -> Any:
    from ingest.cli_base import given_pairs
    from ingest.events import SendCommand

    try:
        return SendCommand(
            command_id=uuid.uuid4(),
            tenant_id=tenant_id,
            chat_id=args.chat,
            user_id=args.user,
            text=args.text,
            template_id=args.template,
            template_params=given_pairs(args.param, "--param"),
            channel_id=args.channel,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "command"
        raise CliError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from exc


async def cmd_outbound_send(settings: Settings, args: argparse.Namespace) -> None:
    from ingest.commands import publish_commands
    from sql import QUERIES
    from sql.db import connect

    require(settings, database=True, broker=True)
    if args.param and args.template is None:
        raise CliError("--param is for --template")
    conn = await connect(settings.database_url)
    try:
        chat = await conn.fetchrow(QUERIES["outbound_chat"], args.chat)
    finally:
        await conn.close()
    if chat is None:
        raise CliError(f"no chat {args.chat} (--chat names a crm_chats id)")
    try:
        command = build_command(chat["tenant_id"], args)
        await publish_commands(settings, [command])
    except PublishUnavailable as exc:
        raise CliError(str(exc)) from exc
    print_json({"command_id": str(command.command_id)})


async def cmd_outbound_work(settings: Settings, _: argparse.Namespace) -> None:
    from handlers.outbound.consumer import running_dispatcher
    from ingest.cli import run_until_signalled

    await run_until_signalled(
        settings,
        running_dispatcher(settings),
        "reply dispatcher",
        topic=settings.outbound_commands_topic,
    )


def add_outbound_verbs(verbs: Any, verb: Verb) -> None:
    outbound = verbs.add_parser("outbound", help="Replies: the dispatcher, and one command.")
    outbound_verbs = outbound.add_subparsers(dest="outbound_verb", required=True, metavar="VERB")
    verb(
        "work",
        cmd_outbound_work,
        "Run only the reply dispatcher (it also runs inside consume).",
        outbound_verbs,
    )
    send = verb(
        "send",
        cmd_outbound_send,
        'Publish one message.send command; prints {"command_id": ...}.',
        outbound_verbs,
    )
    send.add_argument("--chat", type=int, required=True, help="crm_chats id")
    send.add_argument("--user", type=int, required=True, help="core_users id writing the reply")
    content = send.add_mutually_exclusive_group(required=True)
    content.add_argument("--text", help="the reply's text")
    content.add_argument("--template", type=int, metavar="ID", help="crm_message_templates id")
    send.add_argument(
        "--param", action="append", metavar="NAME=VALUE", help="template parameter (repeatable)"
    )
    send.add_argument(
        "--channel",
        type=uuid.UUID,
        metavar="UUID",
        help="channel to send on (default: that of the client's last inbound message)",
    )
