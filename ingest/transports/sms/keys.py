"""Twilio channel keys."""

from ingest.transports.channel_keys import ConfigKey, http_url, pattern, printable

CONFIG_KEYS = (
    ConfigKey(
        "auth_token",
        printable,
        secret=True,
        required="the Twilio Auth Token",
        rotation="Twilio keeps a secondary token: create it in the console, set it here, wait for "
        "the channel cache TTL, then promote it in Twilio",
    ),
    ConfigKey("public_url", http_url),
    ConfigKey("account_sid", pattern(r"AC[0-9a-f]{32}", "must be AC followed by 32 hex digits")),
    ConfigKey("api_key_sid", pattern(r"SK[0-9a-f]{32}", "must be SK followed by 32 hex digits")),
    ConfigKey(
        "api_key_secret",
        printable,
        secret=True,
        rotation="create a new API key in Twilio, set both api_key_sid and api_key_secret, "
        "then delete the old key",
    ),
    ConfigKey(
        "from",
        pattern(
            r"(whatsapp:)?\+[1-9][0-9]{6,14}|[A-Za-z0-9 ]{1,11}",
            "must be an E.164 number (+15551234567) or an alphanumeric sender id",
        ),
    ),
    ConfigKey(
        "messaging_service_sid",
        pattern(r"MG[0-9a-f]{32}", "must be MG followed by 32 hex digits"),
    ),
)
