"""Email (RFC 5322, Mailgun): all that speaks its language (webhooks; next media and sending)."""

from ingest.transports.email.webhook import (
    EmailAdapter,
    html_to_text,
)

__all__ = ["EmailAdapter", "html_to_text"]
