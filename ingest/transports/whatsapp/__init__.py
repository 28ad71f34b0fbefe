"""WhatsApp Cloud API: all that speaks its language (webhooks, media download, sending)."""

from ingest.transports.whatsapp.payload import UNSUPPORTED
from ingest.transports.whatsapp.webhook import MAX_UPDATES, SIGNATURE_HEADER, WhatsAppAdapter

__all__ = ["MAX_UPDATES", "SIGNATURE_HEADER", "UNSUPPORTED", "WhatsAppAdapter"]
