"""The driver of `crm-ingest bench`: fresh databases and topics, every phase in order, the
report; whatever it created on services it was given is removed again."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import time
import uuid
from typing import TYPE_CHECKING, Any

from ingest.config import Settings

if TYPE_CHECKING:
    from ingest.bench.measure import PhaseResult


async def run_bench(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Run every phase on fresh databases and topics; print the table and the JSON line."""
    from pydantic import SecretStr

    from ingest.bench import db_phases, gateway_phase, growth, kafka_phases
    from ingest.bench import services as svc
    from ingest.bench.report import build_report, machine_info, print_report
    from ingest.bench.workload import generate
    from ingest.credentials import generate_key, keyring
    from ingest.embedded import resolve_services

    # httpx logs every request at INFO: in the load generator that would be the bottleneck.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    load_at_start = round(os.getloadavg()[0], 2)
    began = time.perf_counter()
    growth_spec = growth.GrowthSpec(
        identities=args.growth_identities,
        events=args.growth_events,
        small_tenants=args.growth_tenants,
        batch_records=settings.batch_max_records,
    )
    growth_spec.check()  # an impossible size fails before anything is started
    workload = generate(args.events, args.tenants, args.seed)
    generated_s = time.perf_counter() - began
    tag = uuid.uuid4().hex[:8]
    results: dict[str, PhaseResult] = {}
    with resolve_services(settings) as services:
        run = services.apply(
            settings,
            topic_prefix=f"bench{tag}.",
            partitions=args.partitions,
            consumer_group=f"crm-ingest-bench-{tag}",
            # The bench's own channels: sealed with the configured key, or one made for the run.
            secrets_key=SecretStr(settings.secrets_key.get_secret_value() or generate_key()),
        )
        keys = keyring(run)
        server = services.database_url
        phases = ("copy", "baseline", "sql", "consumer", "growth")
        names = {phase: f"bench_{tag}_{phase}" for phase in phases}
        made: list[str] = []
        try:
            urls = {}
            for phase, name in names.items():
                urls[phase] = await svc.prepare_database(server, name, workload.channels, keys)
                made.append(name)
            results["load"] = await kafka_phases.load_topic(run, workload)
            results["kafka_ceiling"] = await kafka_phases.kafka_ceiling(
                run, len(workload.deliveries)
            )
            results["db_ceiling"] = await db_phases.db_ceiling(
                urls["copy"], workload, run.batch_max_records, keys
            )
            sample = max(1, round(len(workload.deliveries) * args.baseline_sample))
            results["baseline"] = await db_phases.baseline(urls["baseline"], workload, sample)
            results["sql_path"] = await db_phases.sql_path(
                urls["sql"], workload, run.batch_max_records
            )
            results["growth"] = await growth.growth(
                urls["growth"],
                workload.channels[0],
                dataclasses.replace(growth_spec, batch_records=run.batch_max_records),
                args.seed,
            )
            consumer = run.model_copy(update={"database_url": urls["consumer"]})
            results["consumer"] = await db_phases.consumer_e2e(
                consumer, workload, results["load"].extra["partitions"], args.consumer_processes
            )
            if not args.skip_gateway:
                gateway = run.model_copy(
                    update={
                        "database_url": urls["consumer"],
                        "topic_prefix": f"bench{tag}gw.",
                        "consumer_group": f"crm-ingest-bench-{tag}-gw",
                    }
                )
                results |= await gateway_phase.gateway_phases(
                    gateway,
                    workload,
                    requests=args.gateway_requests,
                    rate=args.gateway_rate,
                    seconds=args.gateway_seconds,
                    concurrency=args.gateway_concurrency,
                    client_kind=args.gateway_client,
                    already=workload.expected().events,
                )
            machine = await machine_info(services, urls["consumer"])
            machine["loadavg_1m_at_start"] = load_at_start
        finally:
            if services.database_source != "embedded":  # leave the server as we found it
                for name in made:
                    with contextlib.suppress(Exception):
                        await svc.drop_database(server, name)
            if services.broker_source != "embedded":
                with contextlib.suppress(Exception):
                    await svc.delete_topics(run, [f"bench{tag}.", f"bench{tag}gw."])

    report = build_report(
        args,
        settings,
        workload,
        results,
        machine,
        generate_s=generated_s,
        total_s=time.perf_counter() - began,
    )
    print_report(report, json_only=args.json_only)
    return report
