"""Normalized identities, so one person is one client across channels.

Phones become E.164 with the `phonenumbers` library; emails are lower-cased. The raw value is
always kept by the caller (in meta), because normalization can fail or be ambiguous.
"""

from __future__ import annotations

from email.utils import parseaddr

import phonenumbers


def normalize_phone(raw: str | None, default_region: str | None = None) -> str | None:
    """E.164 for a phone number, or None when it cannot be parsed as a possible number.

    A value that is digits only and has no trunk `0` (WhatsApp `wa_id`, Vonage `msisdn`) is
    international without its `+`. Free text (Telegram contact cards, shared WhatsApp
    contacts) needs `default_region` unless it starts with `+`.
    """
    if not raw:
        return None
    text = raw.strip()
    if text.lower().startswith(("whatsapp:", "tel:", "sms:")):
        text = text.split(":", 1)[1].strip()
    if text.isdigit() and not text.startswith("0"):
        text = "+" + text
    try:
        number = phonenumbers.parse(text, None if text.startswith("+") else default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_email(raw: str | None) -> str | None:
    """`Name <Addr@Example.org>` -> `addr@example.org`; None when there is no address."""
    if not raw:
        return None
    _, address = parseaddr(raw)
    address = address.strip().lower()
    if "@" not in address or len(address) > 255:
        return None
    return address
