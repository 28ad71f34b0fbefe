"""Twilio (SMS/MMS): all that speaks its language (webhooks, media download, sending)."""

from ingest.transports.sms.webhook import (
    SIGNATURE_HEADER,
    TWIML_EMPTY,
    TwilioSmsAdapter,
    compute_signature,
)

__all__ = ["SIGNATURE_HEADER", "TWIML_EMPTY", "TwilioSmsAdapter", "compute_signature"]
