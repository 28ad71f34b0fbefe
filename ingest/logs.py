"""structlog, configured once per process.

JSON lines when stderr is not a terminal (production, CI), a console renderer on one.
`merge_contextvars` comes first so ids bound per request/event (correlation id, event id,
tenant, channel, transport) appear on every line, including the stdlib loggers of aiokafka,
asyncpg, uvicorn and faststream, which are routed through the same ProcessorFormatter, and
Python's warnings. Secrets never reach a log line: `redact_secrets` masks known secret keys
wherever they appear.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import pydantic_core
import structlog

SECRET_KEYS = frozenset(
    {
        "secret_token",
        "app_secret",
        "verify_token",
        "auth_token",
        "token",
        "signing_key",
        "authorization",
        "x-telegram-bot-api-secret-token",
        "x-hub-signature-256",
        "x-twilio-signature",
        "password",
        "bot_token",
        "access_token",
        "api_key_secret",
        "smtp_url",
        "secrets_key",
        "crm_ingest_secrets_key",
    }
)
REDACTED = "***"
# Libraries whose stdlib loggers may carry handlers of their own (uvicorn, FastStream add some).
LIBRARY_LOGGERS = (
    "aiokafka",
    "asyncpg",
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "faststream",
)
FASTSTREAM_EXTRA = ("topic", "group_id", "message_id")


def redact(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            k: REDACTED if str(k).lower() in SECRET_KEYS else redact(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


# Values that cannot hold a secret under a key of their own: skipped without an ABC check.
_SCALARS = frozenset({str, int, float, bool, type(None)})


def redact_secrets(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        if key.lower() in SECRET_KEYS:
            event_dict[key] = REDACTED
        elif type(value) not in _SCALARS and isinstance(value, Mapping | list | tuple):
            event_dict[key] = redact(value)
    return event_dict


def configure_logging(log_format: str = "auto", level: str = "INFO") -> None:
    as_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_to_json)
        if as_json
        else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        # FastStream passes the topic and consumer group of its lines as `extra`.
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(allow=FASTSTREAM_EXTRA)],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if as_json else _passthrough,
            renderer,
        ],
    )
    # What no line renders is not collected per record (the logging HOWTO's "Optimization"):
    # caller frame, thread and process. 4 µs of a webhook's 22 µs line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in LIBRARY_LOGGERS:
        routed_logger(name)
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
    # Warnings are lines on stderr too; as records of "py.warnings" they are JSON like the rest.
    logging.captureWarnings(True)


def routed_logger(name: str) -> logging.Logger:
    """A library's stdlib logger sent to the root handler, i.e. through this pipeline: its own
    handlers dropped, propagation on, the level CRM_INGEST_LOG_LEVEL's. Called again where a
    library is handed its logger, since a library may set its logger up when it is imported,
    after `configure_logging` ran: FastStream gives "faststream" a coloured stderr handler, level
    INFO, and turns propagation off."""
    logger = logging.getLogger(name)
    logger.handlers[:] = []
    logger.propagate = True
    logger.setLevel(logging.NOTSET)
    return logger


def _to_json(event_dict: Any, **_: Any) -> str:
    """One JSON line, written by pydantic-core: a third of `json.dumps`' cost. Values JSON has
    no form for are written as their repr, as structlog's own fallback does; bytes that are
    not UTF-8 make pydantic-core refuse the line, and `json.dumps` writes it instead."""
    try:
        return pydantic_core.to_json(event_dict, fallback=repr).decode()
    except pydantic_core.PydanticSerializationError:
        return json.dumps(event_dict, default=repr)


def _passthrough(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return event_dict


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
