"""Email (RFC 5322, Mailgun): all that speaks its language (webhooks, files, sending)."""

from ingest.transports.email.mime import html_to_text
from ingest.transports.email.webhook import EmailAdapter

__all__ = ["EmailAdapter", "html_to_text"]
