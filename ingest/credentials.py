"""Channel secrets at rest: encrypted with AES-256-GCM, bound to their channel and key name.

`ingest_channels.config` keeps non-secret keys readable and every secret (the keys a provider
package declares `secret=True`) as `enc:v1:<key id>:<base64url(nonce | ciphertext)>`. The
associated data is `<channel id>:<key name>`, so a value copied to another channel or key, or
altered in any way, fails authentication and is refused, never misread.

`CRM_INGEST_SECRETS_KEY` holds one or more keys (32 random bytes, url-safe base64), newest
first: the first encrypts, all decrypt. The key id is the first 8 hex digits of the key's
SHA-256, so a value names the key that wrote it and a wrong key is told apart from tampering.

A secret changed by `channel set` or `channel rotate` stays accepted for a grace period (as
`_previous`), so a provider that still signs or sends the old value keeps working until the
operator has switched it over there.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ingest.config import SECRETS_KEY_BYTES, Settings, SettingsError, Transport, secrets_keys
from ingest.errors import IngestError
from ingest.transports import config_keys

SETTING = "CRM_INGEST_SECRETS_KEY"
PREFIX = "enc:v1:"
PREVIOUS = "_previous"  # {name: {"value": <sealed>, "until": <ISO time>}}
_NONCE_BYTES = 12


class SecretsKeyError(SettingsError):
    """CRM_INGEST_SECRETS_KEY is missing, malformed or does not open the stored secrets."""


class SealedSecretError(IngestError):
    """A stored secret cannot be opened: tampered, not encrypted, or written with another key."""


def generate_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(SECRETS_KEY_BYTES)).decode()


def keyring(settings: Settings) -> Keyring:
    return Keyring.parse(settings.secrets_key.get_secret_value())


def _key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


@dataclass(frozen=True, slots=True)
class Keyring:
    """The keys of CRM_INGEST_SECRETS_KEY, newest first."""

    keys: tuple[tuple[str, AESGCM], ...]

    @classmethod
    def parse(cls, raw: str) -> Keyring:
        if not raw.strip():
            raise SecretsKeyError(
                f"{SETTING} is not set (crm-ingest secrets generate-key prints a new one)"
            )
        try:
            keys = secrets_keys(raw)
        except ValueError as exc:
            raise SecretsKeyError(f"invalid setting {SETTING}: {exc}") from exc
        return cls(tuple((_key_id(key), AESGCM(key)) for key in keys))

    @property
    def current_id(self) -> str:
        return self.keys[0][0]

    def seal(self, channel_id: uuid.UUID, name: str, value: str) -> str:
        key_id, aead = self.keys[0]
        nonce = os.urandom(_NONCE_BYTES)
        sealed = aead.encrypt(nonce, value.encode(), _aad(channel_id, name))
        return f"{PREFIX}{key_id}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def open(self, channel_id: uuid.UUID, name: str, stored: object) -> str:
        if not isinstance(stored, str) or not stored.startswith(PREFIX):
            raise SealedSecretError(
                f"channel {channel_id} {name} is not encrypted (run crm-ingest migrate)"
            )
        key_id, _, blob = stored[len(PREFIX) :].partition(":")
        aead = next((a for kid, a in self.keys if kid == key_id), None)
        if aead is None:
            raise SecretsKeyError(
                f"invalid setting {SETTING}: channel {channel_id} {name} was written with key "
                f"{key_id}, which is not among the configured keys"
            )
        try:
            raw = base64.urlsafe_b64decode(blob.encode("ascii"))
            plain = aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _aad(channel_id, name))
        except (ValueError, binascii.Error, InvalidTag) as exc:
            raise SealedSecretError(
                f"channel {channel_id} {name} fails authentication (tampered)"
            ) from exc
        return plain.decode()

    def is_current(self, stored: object) -> bool:
        return isinstance(stored, str) and stored.startswith(f"{PREFIX}{self.current_id}:")


def _aad(channel_id: uuid.UUID, name: str) -> bytes:
    return f"{channel_id}:{name}".encode()


def secret_names(transport: Transport) -> frozenset[str]:
    return frozenset(key.name for key in config_keys(transport) if key.secret)


@dataclass(frozen=True, slots=True)
class OpenedConfig:
    config: dict[str, Any]  # plaintext, as the adapters read it
    previous: dict[str, tuple[str, datetime]]  # secrets still accepted until the given time


def open_config(
    keyring: Keyring, transport: Transport, channel_id: uuid.UUID, stored: Mapping[str, Any]
) -> OpenedConfig:
    """The stored config with every secret decrypted; raises on anything that does not open."""
    secret = secret_names(transport)
    config: dict[str, Any] = {}
    for name, value in stored.items():
        if name == PREVIOUS:
            continue
        config[name] = keyring.open(channel_id, name, value) if name in secret else value
    previous: dict[str, tuple[str, datetime]] = {}
    for name, entry in (stored.get(PREVIOUS) or {}).items():
        until = datetime.fromisoformat(entry["until"])
        previous[name] = (keyring.open(channel_id, name, entry["value"]), until)
    return OpenedConfig(config, previous)


def seal_config(
    keyring: Keyring,
    transport: Transport,
    channel_id: uuid.UUID,
    config: Mapping[str, Any],
    previous: Mapping[str, tuple[str, datetime]] | None = None,
) -> dict[str, Any]:
    """What is stored: non-secret values as they are, secrets sealed with the newest key."""
    secret = secret_names(transport)
    stored = {
        name: keyring.seal(channel_id, name, value) if name in secret else value
        for name, value in config.items()
    }
    if previous:
        stored[PREVIOUS] = {
            name: {"value": keyring.seal(channel_id, name, value), "until": until.isoformat()}
            for name, (value, until) in previous.items()
        }
    return stored


def keep_previous(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    names: Iterable[str],
    grace: timedelta,
    now: datetime | None = None,
) -> dict[str, tuple[str, datetime]]:
    """The secrets among `names` whose value changed, with the time until which the old value
    is still accepted."""
    until = (now or datetime.now(UTC)) + grace
    return {
        name: (before[name], until)
        for name in names
        if isinstance(before.get(name), str) and before[name] and before[name] != after.get(name)
    }


def mask(value: object) -> str:
    """Enough to recognise a secret (its last four characters), never enough to use it."""
    text = str(value)
    return f"…{text[-4:]}" if len(text) >= 12 else "…"


def masked_config(
    transport: Transport, config: Mapping[str, Any], shown: Iterable[str] = ()
) -> dict[str, Any]:
    """`config` for printing: secrets masked except the names in `shown` (just generated)."""
    secret, visible = secret_names(transport), set(shown)
    return {
        name: mask(value) if name in secret and name not in visible else value
        for name, value in config.items()
        if name != PREVIOUS
    }
