"""`crm-ingest bench`: the throughput figures of issue 5, all measured in one run on one machine.

One deterministic workload (Telegram-shaped events: new and known senders, attachments, exact
duplicates, several tenants) is loaded into a fresh topic set, then measured by phases, each
verifying its rows afterwards (a phase that loses rows raises, the command exits non-zero):

  a. Kafka ceiling     raw aiokafka consume of the topic, nothing decoded
  b. DB ceiling        COPY of the same final rows into same-shaped tables (scratch schema)
  c. baseline          one transaction per event, straightforward per-event SQL (a sample)
  d. consumer          the service's consumer end to end: `crm-ingest consume` processes (one
                       per core) in one group on a fresh database
  e. ratios            d/b, d/c, d/min(a, b), against the issue's targets
  f. gateway           bare ASGI vs Telegram webhooks on the same uvicorn stack, and webhook ->
                       committed row latency at a fixed request rate with the consumer running
  g. growth            phase s's write path (the consumer's Ingestor, no Kafka) at three table
                       sizes up to --growth-identities identities and messages, one large tenant
                       among many small ones, batches of many different known senders: CPU per
                       event by size and largest / smallest (it must stay flat, about 1.0)

Output: a table on stdout, then one JSON line (`--json-only`: only the JSON).

Modules: `workload` (the generator), `services` (databases and topics), `kafka_phases` (load, a),
`db_phases` (b, c, d, s, with `rows`: the rows they must leave), `growth` (g, its SQL in
growth.sql), `gateway_phase` (f, with `children`, `http_client` and `server`, the child
processes' entry point), `measure` (results, CPU accounting), `report` (ratios, targets, table,
JSON) and `run` (the driver). This module holds the command's arguments; the phases are imported
only when the command runs.
"""

from __future__ import annotations

import argparse
import os

from ingest.bench.run import run_bench

__all__ = ["add_arguments", "run_bench"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError("must be in (0, 1]")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--events", type=_positive_int, default=100_000, help="records to load (default 100000)")
    add("--partitions", type=_positive_int, default=4, help="partitions per topic (default 4)")
    add("--tenants", type=_positive_int, default=4, help="tenants, one channel each (default 4)")
    add("--seed", type=int, default=1, help="workload seed (default 1)")
    add("--baseline-sample", type=_share, default=0.1, help="share of events timed in phase c")
    add("--gateway-requests", type=_positive_int, default=5000, help="requests per gateway run")
    add("--gateway-concurrency", type=_positive_int, default=32, help="client connections")
    add("--gateway-rate", type=_positive_float, default=1000.0, help="webhooks/s, latency run")
    add("--gateway-seconds", type=_positive_float, default=5.0, help="latency run length")
    add(
        "--gateway-client",
        choices=("raw", "httpx"),
        default="raw",
        help="load generator: a minimal keep-alive HTTP/1.1 client (default) or httpx",
    )
    add("--skip-gateway", action="store_true", help="measure phases a-e only")
    add(
        "--consumer-processes",
        type=_positive_int,
        default=os.cpu_count() or 1,
        help="consumer processes in phase d, one group (default: one per core)",
    )
    add(
        "--growth-identities",
        type=_positive_int,
        default=100_000,
        help="phase g: identities (and messages) pre-filled at the largest size (default 100000)",
    )
    add(
        "--growth-events",
        type=_positive_int,
        default=5000,
        help="phase g: events measured at each size (default 5000)",
    )
    add(
        "--growth-tenants",
        type=_positive_int,
        default=500,
        help="phase g: small tenants beside the large one (default 500)",
    )
    add("--json-only", action="store_true", help="print only the JSON line")
