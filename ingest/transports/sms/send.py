"""Replies through Twilio Programmable Messaging (provider-apis.md §3.3-3.5).

One form POST to `Messages.json` with HTTP Basic (an API key and secret when the channel has
them, the recommended way; else the Account SID and auth token). A body over 1600 characters
is refused, never cut: Twilio would refuse it, and a cut reply says something else. Twilio
fetches `MediaUrl`s itself, so attachments go out only when the object store's URL is public
http(s); from a file:// or s3:// store they are refused with that reason. `StatusCallback` is
the channel's `public_url`, the exact URL the status webhooks are verified against.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ingest.config import Transport
from ingest.transports.http_download import ErrorResponse
from ingest.transports.http_send import ProviderHTTP, classify_status
from ingest.transports.sending import (
    OutboundMessage,
    SendError,
    SendOutcomeUnknown,
    SendRejected,
    SendResult,
    SendTransient,
    check_shape,
    require_key,
)

if TYPE_CHECKING:
    import httpx

    from ingest.config import Settings
    from ingest.objectstore import ObjectStore

BODY_MAX = 1600
MAX_MEDIA = 10


def classify(answer: ErrorResponse) -> SendError:
    data = answer.json()
    code = data.get("code")
    text = str(data.get("message") or f"HTTP {answer.status}")[:300]
    if code == 20429 or answer.status == 429:  # "never processed and is always safe to retry"
        return SendTransient(str(code or 429), f"twilio: {text}", retry_after=answer.retry_after)
    if code == 20003 or answer.status in (401, 403):
        return SendRejected(
            str(code or answer.status),
            "twilio: credentials refused; set them with crm-ingest channel set <channel id> "
            "--config api_key_sid=… --config api_key_secret=… (or auth_token=…)",
        )
    if (shared := classify_status("twilio", answer)) is not None:
        return shared
    return SendRejected(str(code or answer.status), f"twilio: {text}")


def credentials(config: Mapping[str, Any]) -> tuple[str, str]:
    """Basic auth: the API key when set, else the account's auth token."""
    key, secret = config.get("api_key_sid"), config.get("api_key_secret")
    if isinstance(key, str) and key and isinstance(secret, str) and secret:
        return key, secret
    if isinstance(config.get("auth_token"), str) and config["auth_token"]:
        return require_key(config, "account_sid"), config["auth_token"]
    raise SendRejected(
        "missing_channel_key",
        "channel has no auth_token (nor api_key_sid and api_key_secret): run crm-ingest "
        "channel set <channel id> --config api_key_sid=… --config api_key_secret=…",
    )


class TwilioSender:
    transport: ClassVar[Transport] = "sms"

    def __init__(self, settings: Settings, client: httpx.AsyncClient, store: ObjectStore) -> None:
        self._base = settings.twilio_api_url
        self._http = ProviderHTTP(client, settings.outbound_timeout_s)

    def check(self, message: OutboundMessage, config: Mapping[str, Any]) -> None:
        require_key(config, "account_sid")
        credentials(config)
        if not config.get("from") and not config.get("messaging_service_sid"):
            raise SendRejected(
                "missing_channel_key",
                "channel has no from (nor messaging_service_sid): run crm-ingest channel set "
                "<channel id> --config from=+1…",
            )
        check_shape(message, provider="SMS", max_attachments=MAX_MEDIA, max_bytes=None)
        body = message.text or ""
        if len(body) > BODY_MAX:
            raise SendRejected(
                "too_long", f"SMS text is {len(body)} characters; Twilio takes at most {BODY_MAX}"
            )
        for attachment in message.attachments:
            if not attachment.url.startswith(("https://", "http://")):
                raise SendRejected(
                    "attachment_not_public",
                    f"attachment {attachment.upload_id} is not at a public http(s) URL, and "
                    "Twilio fetches media itself (CRM_INGEST_MEDIA_STORE is not public)",
                )

    async def send(self, message: OutboundMessage, config: Mapping[str, Any]) -> SendResult:
        self.check(message, config)
        account = require_key(config, "account_sid")
        form: dict[str, str | list[str]] = {"To": message.to}
        if isinstance(sender := config.get("messaging_service_sid"), str) and sender:
            form["MessagingServiceSid"] = sender
        else:
            form["From"] = str(config["from"])
        if message.text:
            form["Body"] = message.text
        if message.attachments:
            form["MediaUrl"] = [attachment.url for attachment in message.attachments]
        if isinstance(callback := config.get("public_url"), str) and callback:
            form["StatusCallback"] = callback
        answer = await self._http.post(
            f"{self._base}/2010-04-01/Accounts/{account}/Messages.json",
            what="twilio send",
            classify=classify,
            form=form,
            auth=credentials(config),
        )
        sid = answer.get("sid")
        if not isinstance(sid, str) or not sid:
            raise SendOutcomeUnknown("bad_answer", "twilio send: accepted, but no sid")
        detail: dict[str, Any] = {k: answer[k] for k in ("status", "num_segments") if k in answer}
        return SendResult((sid,), detail)
