"""WhatsApp Cloud API channel keys."""

from ingest.transports.channel_keys import ConfigKey, pattern

_TOKEN = r"[\x21-\x7e]{1,256}"  # printable ASCII without spaces

CONFIG_KEYS = (
    ConfigKey(
        "verify_token",
        pattern(_TOKEN, "must be 1-256 printable ASCII, no spaces"),
        secret=True,
        generated=True,
        rotation="Meta asks for it only when the webhook is (re)configured: enter the new value "
        "in the app's WhatsApp configuration",
    ),
    ConfigKey(
        "app_secret",
        pattern(_TOKEN, "must be printable ASCII without spaces"),
        secret=True,
        required="the Meta app's secret",
        rotation="reset it in the Meta app dashboard, then set the new one at once: Meta signs "
        "with the new secret from then on",
    ),
    ConfigKey("phone_number_id", pattern(r"[0-9]{1,32}", "must be 1-32 digits")),
    ConfigKey(
        "access_token",
        pattern(r"[\x21-\x7e]{1,2048}", "must be printable ASCII without spaces"),
        secret=True,
        rotation="create a new system user token in Meta Business settings, set it, then "
        "revoke the old one",
    ),
)
