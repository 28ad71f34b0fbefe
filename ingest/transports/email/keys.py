"""Email channel keys."""

from urllib.parse import urlsplit

from ingest.transports.channel_keys import ConfigKey, pattern, printable


def smtp_url(value: str) -> str | None:
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return "must be smtp:// or smtps://[user:password@]host[:port]"
    if parts.scheme in ("smtp", "smtps") and parts.hostname and (port is None or port > 0):
        return None
    return "must be smtp:// or smtps://[user:password@]host[:port]"


CONFIG_KEYS = (
    ConfigKey(
        "token",
        pattern(r"[A-Za-z0-9._~+/=-]{1,512}", "must be 1-512 chars of A-Za-z0-9._~+/=-"),
        secret=True,
        generated=True,
        rotation="the mail provider sends it as a Bearer token: update the webhook's "
        "Authorization header there",
    ),
    ConfigKey(
        "signing_key",
        printable,
        secret=True,
        rotation="rotate the HTTP webhook signing key in Mailgun, then set the new one",
    ),
    ConfigKey("smtp_url", smtp_url, secret=True, rotation="change the SMTP password, then set it"),
    ConfigKey(
        "from_address",
        pattern(r"[^@\s<>]{1,64}@[A-Za-z0-9.-]{1,253}", "must be an address like crm@example.com"),
    ),
)
