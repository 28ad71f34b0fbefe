"""Twilio media: the webhook's `MediaUrl` with HTTP Basic auth, then the redirect to Twilio's
CDN, which gets no credentials (provider-apis.md §3.2).

Credentials: `api_key_sid` + `api_key_secret` (Twilio's recommendation) or `account_sid` +
`auth_token`. They are sent only to the configured Twilio API origin (CRM_INGEST_TWILIO_API_URL)
and only for a URL of the channel's own account, so a forged MediaUrl cannot collect them. A 404
right after the webhook means the media has not propagated yet and is retried.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import httpx

from ingest.config import Settings, Transport
from ingest.transports.fetching import (
    FetchError,
    FetchPermanent,
    FetchTransient,
    MediaDownload,
    MediaRef,
    require_key,
)
from ingest.transports.http_download import (
    ErrorResponse,
    SafeDownloader,
    classify_http,
)

MEDIA_PATH = re.compile(
    r"/2010-04-01/Accounts/(AC[0-9A-Za-z]+)/Messages/[0-9A-Za-z]+/Media/[0-9A-Za-z]+"
)
PROPAGATION_RETRY_S = 2.0  # Twilio's advice: retry "after a short delay (for example, 1–3 seconds)"


def _classify(error: ErrorResponse) -> FetchError:
    code = error.json().get("code")
    if error.status == 404:
        return FetchTransient(
            "twilio media not available yet (404)", retry_after=PROPAGATION_RETRY_S
        )
    if error.status in (401, 403):
        return FetchPermanent(
            f"twilio rejected the channel's credentials ({error.status}, code {code})"
        )
    return classify_http("twilio media")(error)


class TwilioMediaSource:
    transport: ClassVar[Transport] = "sms"

    def __init__(self, settings: Settings, downloader: SafeDownloader) -> None:
        self._api = httpx.URL(settings.twilio_api_url)
        self._downloader = downloader

    @asynccontextmanager
    async def open(self, ref: MediaRef, config: Mapping[str, Any]) -> AsyncIterator[MediaDownload]:
        try:
            url = httpx.URL(ref.reference)
        except httpx.InvalidURL as exc:
            raise FetchPermanent("twilio: MediaUrl is not a URL") from exc
        headers: dict[str, str] = {}
        if (url.scheme, url.host, url.port) == (self._api.scheme, self._api.host, self._api.port):
            headers["authorization"] = _basic_auth(url, config)
        # Elsewhere: no credentials; SafeDownloader still refuses hosts that are not allowed.
        async with self._downloader.download(
            ref.reference,
            what="twilio media",
            classify=_classify,
            headers=headers,
            content_type=ref.declared_mimetype,
            declared_size=ref.declared_size,
        ) as download:
            yield download


def _basic_auth(url: httpx.URL, config: Mapping[str, Any]) -> str:
    account = require_key(config, "account_sid")
    match = MEDIA_PATH.fullmatch(url.path)
    if match is None:
        raise FetchPermanent("twilio: MediaUrl is not a message media URL")
    if match.group(1) != account:
        raise FetchPermanent("twilio: MediaUrl belongs to another account than the channel's")
    if config.get("api_key_sid") or config.get("api_key_secret"):
        user, password = require_key(config, "api_key_sid"), require_key(config, "api_key_secret")
    else:
        user, password = account, require_key(config, "auth_token")
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
