"""Service settings, read once from the environment (pydantic-settings).

`DATABASE_URL` and `KAFKA_BOOTSTRAP_SERVERS` keep their conventional names; everything else
lives under the `CRM_INGEST_` prefix. Empty `DATABASE_URL` / `KAFKA_BOOTSTRAP_SERVERS` mean
"not configured": `crm-ingest dev` and the tests then start embedded services.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingest.objectstore.urls import parse_store_url

Transport = Literal["telegram", "whatsapp", "sms", "email"]
TRANSPORTS: tuple[Transport, ...] = ("telegram", "whatsapp", "sms", "email")


# The hosts the providers document for media (provider-apis.md §1.3, §2.2, §3.2). Meta's CDN
# behind lookaside.fbsbx.com is unverified, hence its subdomain patterns; Twilio's unsecured
# media lives on s3-external-1.amazonaws.com and its secured redirects on mms.twiliocdn.com.
DEFAULT_MEDIA_ALLOWED_HOSTS = ",".join(
    (
        "api.telegram.org",
        "graph.facebook.com",
        "lookaside.fbsbx.com",
        "*.fbsbx.com",
        "*.fbcdn.net",
        "api.twilio.com",
        "media.twiliocdn.com",
        "mms.twiliocdn.com",
        "s3-external-1.amazonaws.com",
    )
)

_ALLOWED_HOST = re.compile(
    r"(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?|\[[0-9a-f:.]+\](:[0-9]{1,5})?"
)


class SettingsError(ValueError):
    """A setting is invalid; the message names the environment variable."""


_PG_SETTING = re.compile(r"^[a-z_][a-z0-9_.]*=\S.*$")


def server_settings(value: str) -> list[str]:
    """`name=value;name=value` as the `-c` arguments of a postgres command line."""
    items = [item.strip() for item in value.split(";") if item.strip()]
    bad = [item for item in items if not _PG_SETTING.match(item)]
    if bad:
        raise ValueError(f"{bad[0]!r} is not name=value (items are separated by ';')")
    return items


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_INGEST_", extra="ignore", frozen=True)

    database_url: str = Field(
        default="", validation_alias=AliasChoices("DATABASE_URL", "CRM_INGEST_DATABASE_URL")
    )
    kafka_bootstrap_servers: str = Field(
        default="",
        validation_alias=AliasChoices(
            "KAFKA_BOOTSTRAP_SERVERS", "CRM_INGEST_KAFKA_BOOTSTRAP_SERVERS"
        ),
    )

    # Kafka topology
    topic_prefix: str = Field(default="crm.", pattern=r"^[A-Za-z0-9._-]*$")
    partitions: int = Field(default=8, ge=1, le=1000)
    replication_factor: int = Field(default=1, ge=1, le=10)

    # Producer (gateway). Idempotence is right for Apache Kafka; the embedded Tansu broker
    # rejects InitProducerId, so `crm-ingest dev` and the embedded tests switch it off.
    producer_idempotence: bool = True
    producer_linger_ms: int = Field(default=5, ge=0, le=1000)
    producer_compression: Literal["none", "gzip", "lz4", "zstd", "snappy"] = "none"
    # Below 5 s so a provider gets its 503 within 5 s of a broker outage.
    publish_timeout_s: float = Field(default=4.0, gt=0, le=120)
    retry_after_s: int = Field(default=5, ge=1, le=3600)

    # Consumer (handlers)
    consumer_group: str = Field(default="crm-ingest", min_length=1)
    batch_max_records: int = Field(default=500, ge=1, le=100_000)
    batch_timeout_ms: int = Field(default=100, ge=1, le=60_000)
    # How long a fetch may wait for data; it bounds webhook-to-row latency when traffic is low.
    fetch_max_wait_ms: int = Field(default=50, ge=1, le=60_000)
    retry_backoff_initial_s: float = Field(default=0.5, gt=0, le=60)
    retry_backoff_max_s: float = Field(default=30.0, gt=0, le=3600)
    outbox_interval_s: float = Field(default=1.0, gt=0, le=3600)
    outbox_retention_hours: int = Field(default=168, ge=1, le=24 * 365)
    db_pool_min: int = Field(default=1, ge=1, le=100)
    db_pool_max: int = Field(default=4, ge=1, le=100)

    # SIGTERM: the gateway finishes in-flight requests, the consumer its current batch, within this.
    shutdown_timeout_s: float = Field(default=30.0, gt=0, le=600)

    # HTTP gateway
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"  # the consumer's /metrics server (the gateway serves its own)
    metrics_port: int = Field(default=9100, ge=0, le=65535)  # 0 picks a free port
    channel_cache_ttl_s: float = Field(default=30.0, ge=0, le=3600)
    max_body_bytes_telegram: int = Field(default=1_048_576, ge=1024)
    max_body_bytes_whatsapp: int = Field(default=3 * 1_048_576, ge=1024)
    max_body_bytes_sms: int = Field(default=262_144, ge=1024)
    max_body_bytes_email: int = Field(default=26_214_400, ge=1024)

    # Media fetching: providers' API bases (a local Bot API server, a test server) and the
    # hosts downloads may touch. A host without a port means https on 443; `host:port` allows
    # that port over http or https; `*.example.com` any subdomain (https, 443).
    media_allowed_hosts: str = Field(default=DEFAULT_MEDIA_ALLOWED_HOSTS)
    telegram_api_url: str = Field(default="https://api.telegram.org", pattern=r"^https?://[^\s]+$")
    whatsapp_graph_url: str = Field(
        default="https://graph.facebook.com/v25.0", pattern=r"^https?://[^\s]+$"
    )
    twilio_api_url: str = Field(default="https://api.twilio.com", pattern=r"^https?://[^\s]+$")
    media_http_timeout_s: float = Field(default=30.0, gt=0, le=600)  # connect, and each read
    media_download_deadline_s: float = Field(default=900.0, gt=0, le=86_400)  # a whole download
    # Replies: a provider call's connect / each read / each write (HTTP), or each SMTP step.
    outbound_timeout_s: float = Field(default=30.0, gt=0, le=600)

    # Replies (handlers/outbound/). A transient provider failure is retried while the command
    # holds its partition (the chat's order), at most this many attempts, each wait the
    # provider's retry-after or the backoff, capped: attempts x cap stays well under the
    # consumer's max.poll.interval (300 s), or the group would rebalance mid-retry.
    outbound_max_attempts: int = Field(default=5, ge=1, le=20)
    outbound_backoff_initial_s: float = Field(default=1.0, gt=0, le=60)
    outbound_backoff_max_s: float = Field(default=30.0, gt=0, le=60)

    # Identity
    default_phone_region: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")

    # Media: where attachment bytes are stored (file:///abs/dir or s3://bucket[/prefix]; S3
    # credentials, region and endpoint from the standard AWS_* variables). Empty: not
    # configured (`crm-ingest dev` then uses a directory in its data dir).
    media_store: str = ""
    media_max_bytes: int = Field(default=104_857_600, ge=1)
    # The fetch worker (inside `consume`, or alone as `media work`): downloads at once per
    # process, leased at once per channel across all workers, the lease a killed worker's job
    # waits out, and how retries of transient failures back off and when they give up.
    media_concurrency: int = Field(default=8, ge=1, le=1000)
    # False: `consume` leaves fetching to dedicated `crm-ingest media work` processes.
    media_worker_in_consume: bool = True
    media_per_channel: int = Field(default=4, ge=1, le=1000)
    media_lease_s: float = Field(default=60.0, ge=1, le=3600)
    media_poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    media_retry_backoff_s: float = Field(default=2.0, gt=0, le=3600)
    media_retry_backoff_max_s: float = Field(default=600.0, gt=0, le=86_400)
    media_retry_window_s: float = Field(default=86_400.0, gt=0, le=30 * 86_400)
    # Stored jobs are forgotten after this; failed and pending ones are kept.
    media_job_retention_hours: int = Field(default=168, ge=1, le=24 * 366)

    # Logging and local state
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    data_dir: Path = Path(".crm-ingest")
    # A PostgreSQL bin dir for the embedded server instead of the wheel's (another version).
    pg_bin: Path | None = None

    @field_validator("pg_bin", mode="before")
    @classmethod
    def _holds_a_server(cls, value: object) -> object:
        if value in ("", None):  # an empty variable means the wheel's server
            return None
        if not all((Path(str(value)) / exe).is_file() for exe in ("postgres", "initdb")):
            raise ValueError(f"{value} holds no postgres and initdb")
        return value

    # Server settings for the embedded PostgreSQL (`name=value;name=value`), e.g. a
    # shared_buffers that holds the hot indexes, or pg_stat_statements for a profile.
    pg_options: str = ""

    @field_validator("pg_options")
    @classmethod
    def _server_settings(cls, value: str) -> str:
        server_settings(value)
        return value

    # Channel secrets at rest (ingest/credentials.py): keys newest first, comma-separated.
    secrets_key: SecretStr = Field(default="", validate_default=True)

    @field_validator("secrets_key")
    @classmethod
    def _secrets_keys_decode(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value().strip():
            secrets_keys(value.get_secret_value())
        return value

    @field_validator("media_allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, value: str) -> str:
        entries = [entry.strip().lower() for entry in value.split(",") if entry.strip()]
        for entry in entries:
            if not _ALLOWED_HOST.fullmatch(entry):
                raise ValueError(f"{entry!r} is not a host, host:port or *.domain")
        return ",".join(entries)

    @field_validator("telegram_api_url", "whatsapp_graph_url", "twilio_api_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("media_store")
    @classmethod
    def _media_store_url(cls, value: str) -> str:
        if value:
            parse_store_url(value)
        return value

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def inbound_topic(self, transport: Transport) -> str:
        return self.topic(f"inbound.{transport}")

    @property
    def inbound_topics(self) -> list[str]:
        return [self.inbound_topic(t) for t in TRANSPORTS]

    @property
    def dlq_topic(self) -> str:
        return self.topic("inbound.dlq")

    @property
    def outbound_commands_topic(self) -> str:
        return self.topic("outbound.commands")

    @property
    def outbound_consumer_group(self) -> str:
        """The dispatcher's own group: its offsets never wait for the inbound batches'."""
        return f"{self.consumer_group}-outbound"

    @property
    def chat_events_topic(self) -> str:
        return self.topic("chat.events")

    def max_body_bytes(self, transport: Transport) -> int:
        return int(getattr(self, f"max_body_bytes_{transport}"))


SECRETS_KEY_BYTES = 32


def secrets_keys(raw: str) -> list[bytes]:
    """The keys of CRM_INGEST_SECRETS_KEY: each 32 bytes of url-safe base64, newest first."""
    keys = []
    for n, part in enumerate(raw.split(","), start=1):
        try:
            key = base64.urlsafe_b64decode(part.strip().encode("ascii"))
        except (ValueError, binascii.Error):
            key = b""
        if len(key) != SECRETS_KEY_BYTES:
            raise ValueError(f"key {n} is not 32 bytes of url-safe base64")
        keys.append(key)
    return keys


def load_settings(**overrides: Any) -> Settings:
    """Read settings; a bad value raises SettingsError naming the variable in one line."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        env = field if field.isupper() else f"CRM_INGEST_{field.upper()}"
        reason = first["msg"].removeprefix("Value error, ")  # our validators' own words
        raise SettingsError(f"invalid setting {env}: {reason}") from exc
