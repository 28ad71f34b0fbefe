"""`crm-ingest` command line: the composition root that wires edge, core and SQL together.

Verbs that create something print one JSON object on stdout; logs go to stderr. Failures exit
non-zero with a one-line `crm-ingest: error: ...` on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

from ingest.cli_base import CliError, print_json, require
from ingest.cli_channels import check_secrets_key, keyring_of
from ingest.config import Settings, SettingsError, load_settings
from ingest.logs import configure_logging, get_logger
from ingest.process import http_server, serve_until_signalled, stop_on_signals

log = get_logger("crm_ingest.cli")


# --- verbs -------------------------------------------------------------------------------


async def cmd_migrate(settings: Settings, _: argparse.Namespace) -> None:
    require(settings, database=True)
    from ingest import admin

    keys = keyring_of(settings) if settings.secrets_key.get_secret_value() else None
    print_json(await admin.migrate(settings.database_url, keys))


async def cmd_topics(settings: Settings, _: argparse.Namespace) -> None:
    require(settings, broker=True)
    from ingest.topics import ensure_topics

    print_json({"created": await ensure_topics(settings)})


async def cmd_tenant_add(settings: Settings, args: argparse.Namespace) -> None:
    require(settings, database=True)
    from ingest import admin

    print_json(await admin.add_tenant(settings.database_url, args.id or uuid.uuid4(), args.name))


async def cmd_gateway(settings: Settings, args: argparse.Namespace) -> None:
    require(settings, database=True, broker=True)
    await check_secrets_key(settings)
    from ingest.gateway import create_gateway

    port = settings.http_port if args.port is None else args.port
    server = http_server(create_gateway(settings), args.host or settings.http_host, port, settings)
    await serve_until_signalled(server)


async def cmd_consume(settings: Settings, _: argparse.Namespace) -> None:
    from handlers.app import running_consumer

    await run_until_signalled(
        settings, running_consumer(settings), "consumer", topics=settings.inbound_topics
    )


async def run_until_signalled(
    settings: Settings, running: AbstractAsyncContextManager[Any], what: str, **fields: Any
) -> None:
    """A consuming process (`consume`, `outbound work`): checks, `/metrics`, then `running`
    until SIGTERM/SIGINT."""
    require(settings, database=True, broker=True)
    await check_secrets_key(settings)
    from ingest import metrics

    served = metrics.start_metrics_server(settings.metrics_port, settings.metrics_host)
    try:
        with stop_on_signals() as stop:
            async with running:
                log.info(f"{what} running", metrics=served.port, **fields)
                await stop.wait()
            log.info(f"{what} stopped")
    finally:
        served.stop()


async def cmd_asyncapi(settings: Settings, _: argparse.Namespace) -> None:
    from ingest.asyncapi import generate

    print_json(generate(settings))


async def cmd_replay(settings: Settings, args: argparse.Namespace) -> None:
    require(settings, database=not args.dry_run, broker=True)
    from handlers.replay import Range, replay_topic

    def progress(state: dict[str, Any]) -> None:
        log.info("replay progress", read=state["read"])

    bounds = Range(args.from_time, args.from_offset, args.to_time, args.to_offset, args.partition)
    try:
        summary = await replay_topic(
            settings,
            args.topic,
            bounds,
            dry_run=args.dry_run,
            reemit=args.reemit,
            idle_timeout_s=args.idle_timeout,
            progress=progress,
        )
    except LookupError as exc:
        raise CliError(str(exc)) from exc
    print_json({**summary.as_dict(), "dry_run": args.dry_run})


async def cmd_dlq_list(settings: Settings, args: argparse.Namespace) -> None:
    require(settings, database=True)
    from handlers.replay import list_dead_letters

    print_json(await list_dead_letters(settings, include_replayed=args.all, limit=args.limit))


async def cmd_dlq_replay(settings: Settings, args: argparse.Namespace) -> None:
    require(settings, database=True, broker=True)
    if not args.all and not args.id:
        raise CliError("name dead letters with --id, or replay every pending one with --all")
    from handlers.replay import replay_dead_letters
    from ingest.channels import ChannelDirectory
    from ingest.intake import Reparser
    from ingest.objectstore import open_store
    from ingest.transports import load_adapters

    # Kept webhooks are parsed again with this code, for their channel as it is now; bodies and
    # email files live in the media store.
    channels = ChannelDirectory(settings)
    store = open_store(settings.media_store) if settings.media_store else None
    await channels.open()
    try:
        adapters = load_adapters(settings.default_phone_region)
        reparse = Reparser(channels, adapters, store)
        ids = None if args.all else args.id
        print_json(await replay_dead_letters(settings, ids, reparse=reparse))
    finally:
        await channels.close()
        if store is not None:
            await store.close()


async def cmd_media_list(settings: Settings, args: argparse.Namespace) -> None:
    require(settings, database=True)
    from handlers.media import jobs
    from sql.db import create_pool

    if args.limit < 1:
        raise CliError("--limit must be at least 1")
    pool = await create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        for job in await jobs.list_jobs(pool, args.status, args.limit):
            print_json(job)
    finally:
        await pool.close()


async def cmd_media_retry(settings: Settings, args: argparse.Namespace) -> None:
    require(settings, database=True)
    if not args.failed and not args.id:
        raise CliError(
            "name fetch jobs with --id UPLOAD_ID, or requeue every failed one with --failed"
        )
    from handlers.media import jobs
    from sql.db import create_pool

    pool = await create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        # Named ones first: `--failed` then finds only the others, so none is counted twice.
        requeued = await jobs.requeue(pool, args.id) if args.id else 0
        if args.failed:
            requeued += await jobs.requeue(pool, None)
    finally:
        await pool.close()
    print_json({"requeued": requeued})


async def cmd_media_work(settings: Settings, _: argparse.Namespace) -> None:
    require(settings, database=True, broker=True)
    if not settings.media_store:
        raise CliError("CRM_INGEST_MEDIA_STORE is not set (file:///abs/dir or s3://bucket/prefix)")
    from handlers.media.runtime import run_media_work
    from ingest import metrics

    served = metrics.start_metrics_server(settings.metrics_port, settings.metrics_host)
    try:
        with stop_on_signals() as stop:
            await run_media_work(settings, stop)
        log.info("media worker stopped")
    finally:
        served.stop()


async def cmd_bench(settings: Settings, args: argparse.Namespace) -> None:
    from ingest.bench import run_bench

    await run_bench(settings, args)


async def cmd_dev(settings: Settings, args: argparse.Namespace) -> None:
    from ingest.dev import run_dev

    with stop_on_signals() as stop:
        await run_dev(settings, stop, host=args.host or settings.http_host, port=args.port)


# --- parser ------------------------------------------------------------------------------


def _timestamp(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crm-ingest",
        description="Ingest customer conversations from messaging providers into the CRM.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(
        name: str, handler: Any, help_text: str, parent: Any = verbs
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(
            name, help=help_text, description=help_text
        )
        sub.set_defaults(handler=handler)
        return sub

    dev = verb("dev", cmd_dev, "Run the whole stack locally (embedded services unless configured).")
    for sub in (dev, verb("gateway", cmd_gateway, "Run the webhook HTTP gateway.")):
        sub.add_argument("--host", help="listen address (default: CRM_INGEST_HTTP_HOST)")
        sub.add_argument("--port", type=int, help="listen port (default: CRM_INGEST_HTTP_PORT)")
    verb("migrate", cmd_migrate, "Apply sql/ migrations to DATABASE_URL (idempotent).")
    verb("topics", cmd_topics, "Create missing Kafka topics.")
    verb("consume", cmd_consume, "Run the Kafka consumers that write PostgreSQL.")

    verb("asyncapi", cmd_asyncapi, "Print the AsyncAPI document of every topic used.")

    replay = verb(
        "replay",
        cmd_replay,
        "Re-feed a topic range through the pipeline (no consumer group; offsets untouched).",
    )
    replay.add_argument("--topic", required=True)
    start = replay.add_mutually_exclusive_group(required=True)
    start.add_argument("--from", dest="from_time", type=_timestamp, metavar="ISO-TIME")
    start.add_argument("--from-offset", type=int, metavar="N")
    end = replay.add_mutually_exclusive_group()
    end.add_argument("--to", dest="to_time", type=_timestamp, metavar="ISO-TIME")
    end.add_argument("--to-offset", type=int, metavar="N", help="last offset replayed (inclusive)")
    replay.add_argument("--partition", type=int, metavar="P")
    replay.add_argument("--dry-run", action="store_true", help="read and validate, write nothing")
    replay.add_argument(
        "--reemit", action="store_true", help="publish the range's chat events again (same ids)"
    )
    replay.add_argument(
        "--idle-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="without --to, stop after S seconds with no new record (default 5)",
    )

    dlq = verbs.add_parser("dlq", help="Dead letters: list and replay.")
    dlq_verbs = dlq.add_subparsers(dest="dlq_verb", required=True, metavar="VERB")
    listing = verb("list", cmd_dlq_list, "List dead letters (what, why, when).", dlq_verbs)
    listing.add_argument("--all", action="store_true", help="include replayed ones")
    listing.add_argument("--limit", type=int, default=100)
    again = verb(
        "replay", cmd_dlq_replay, "Feed dead letters through the pipeline again.", dlq_verbs
    )
    again.add_argument("--id", type=int, action="append", help="dead letter id (repeatable)")
    again.add_argument("--all", action="store_true", help="every dead letter not yet replayed")

    media = verbs.add_parser("media", help="Attachment fetch jobs: list, retry, work.")
    media_verbs = media.add_subparsers(dest="media_verb", required=True, metavar="VERB")
    listing = verb(
        "list",
        cmd_media_list,
        "List fetch jobs, newest first (one JSON object per line).",
        media_verbs,
    )
    listing.add_argument(
        "--status", choices=("pending", "stored", "failed"), help="only jobs in this state"
    )
    listing.add_argument("--limit", type=int, default=100, help="at most N jobs (default 100)")
    again = verb(
        "retry",
        cmd_media_retry,
        "Put failed fetch jobs back in the queue; the next attempt reads the channel's "
        "credentials as they are now.",
        media_verbs,
    )
    again.add_argument(
        "--id",
        type=int,
        action="append",
        metavar="UPLOAD_ID",
        help="a job, failed or waiting for a retry, made due now (repeatable)",
    )
    again.add_argument("--failed", action="store_true", help="every failed job")
    verb(
        "work", cmd_media_work, "Run only the media fetcher (it also runs in consume).", media_verbs
    )

    from ingest.bench import add_arguments as add_bench_arguments

    add_bench_arguments(
        verb("bench", cmd_bench, "Measure throughput against ceilings measured in the same run.")
    )

    tenant = verbs.add_parser("tenant", help="Manage tenants (standalone installs).")
    tenant_verbs = tenant.add_subparsers(dest="tenant_verb", required=True, metavar="VERB")
    add = verb("add", cmd_tenant_add, 'Create a tenant; prints {"id": ...}.', tenant_verbs)
    add.add_argument("--id", type=uuid.UUID, help="tenant id (default: a new UUID)")
    add.add_argument("--name", default="", help="display name")

    from ingest.cli_channels import add_channel_verbs

    add_channel_verbs(verbs, verb)
    from ingest.cli_outbound import add_outbound_verbs

    add_outbound_verbs(verbs, verb)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        sys.stderr.write(f"crm-ingest: error: {exc}\n")
        return 2
    configure_logging(settings.log_format, settings.log_level)
    try:
        asyncio.run(args.handler(settings, args))
    except (CliError, SettingsError) as exc:
        sys.stderr.write(f"crm-ingest: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line for operators; the traceback is in the logs
        log.exception("command failed")
        sys.stderr.write(f"crm-ingest: error: {type(exc).__name__}: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
