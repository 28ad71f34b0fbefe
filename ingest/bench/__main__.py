"""`python -m ingest.bench ...`: the same as `crm-ingest bench ...`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

import ingest.bench
from ingest.bench import add_arguments, run_bench
from ingest.config import load_settings
from ingest.logs import configure_logging


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="crm-ingest bench", description=(ingest.bench.__doc__ or "").split("\n")[0]
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    try:
        asyncio.run(run_bench(settings, args))
    except Exception as exc:
        logging.getLogger("crm_ingest.bench").exception("bench failed")
        sys.stderr.write(f"crm-ingest bench: error: {type(exc).__name__}: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
