"""Replies through the WhatsApp Cloud API (provider-apis.md §2.3-2.5).

`POST {graph}/{phone_number_id}/messages` with the channel's Bearer token: text (a longer one
is split as on Telegram), a Meta-approved template with body parameters, or media. Media is
uploaded first (`POST /{phone_number_id}/media`, streamed from the object store) and sent by
its id: JPEG/PNG up to 5 MB as `image`, anything else as `document` (100 MB) with its
filename. A text that fits a caption (1024) rides on the first attachment. Errors are classified
by Meta's error code, never by HTTP status (§2.1). The 24-hour window is the core's to check
(it knows the last inbound message); a 131047 that Meta still answers is rejected here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ingest.config import Transport
from ingest.transports.http_download import ErrorResponse
from ingest.transports.http_send import Multipart, ProviderHTTP, classify_status, stored_chunks
from ingest.transports.sending import (
    OutboundAttachment,
    OutboundMessage,
    SendError,
    SendOutcomeUnknown,
    SendRejected,
    SendResult,
    SendTransient,
    check_shape,
    require_key,
)
from ingest.transports.textparts import texts_and_caption

if TYPE_CHECKING:
    import httpx

    from ingest.config import Settings
    from ingest.objectstore import ObjectStore

TEXT_MAX = 4096
CAPTION_MAX = 1024
IMAGE_MAX = 5 * 1024 * 1024
DOCUMENT_MAX = 100 * 1024 * 1024
IMAGE_TYPES = frozenset({"image/jpeg", "image/png"})
MAX_ATTACHMENTS = 10

# Meta's codes (provider-apis.md §2.4): throughput, pair rate, app rate limits and its own
# outages were not processed; retrying later helps.
TRANSIENT_CODES = frozenset({4, 80007, 130429, 131056, 131000, 131016, 131057})
CREDENTIAL_CODES = frozenset({0, 190})
PAIR_RATE_WAIT_S = 6.0  # "1 message every 6 seconds to the same WhatsApp user"


def classify(answer: ErrorResponse) -> SendError:
    error = answer.json().get("error")
    if not isinstance(error, dict) or not isinstance(error.get("code"), int):
        shared = classify_status("whatsapp", answer)
        return shared or SendRejected(str(answer.status), f"whatsapp: HTTP {answer.status}")
    code: int = error["code"]
    title = str(error.get("message") or "")[:200]
    details = error.get("error_data")
    if isinstance(details, dict) and details.get("details"):
        title = f"{title} ({str(details['details'])[:200]})"
    if code in TRANSIENT_CODES:
        wait = answer.retry_after or (PAIR_RATE_WAIT_S if code == 131056 else None)
        return SendTransient(str(code), f"whatsapp: {title}", retry_after=wait)
    if code in CREDENTIAL_CODES:
        return SendRejected(
            str(code),
            "whatsapp: access token refused; set a valid one with "
            "crm-ingest channel set <channel id> --config access_token=…",
        )
    return SendRejected(str(code), f"whatsapp: {title}")


def _is_image(attachment: OutboundAttachment) -> bool:
    size_ok = attachment.size is not None and attachment.size <= IMAGE_MAX
    return size_ok and (attachment.mimetype or "").lower() in IMAGE_TYPES


class WhatsAppSender:
    transport: ClassVar[Transport] = "whatsapp"

    def __init__(self, settings: Settings, client: httpx.AsyncClient, store: ObjectStore) -> None:
        self._base = settings.whatsapp_graph_url
        self._http = ProviderHTTP(client, settings.outbound_timeout_s)
        self._store = store

    def check(self, message: OutboundMessage, config: Mapping[str, Any]) -> None:
        require_key(config, "access_token")
        require_key(config, "phone_number_id")
        template = message.whatsapp_template
        if template is not None and (message.text or message.attachments):
            raise SendRejected("unsupported", "a template goes out alone: no text or attachments")
        check_shape(
            message,
            provider="WhatsApp",
            max_attachments=MAX_ATTACHMENTS,
            max_bytes=DOCUMENT_MAX,
            templates=True,
        )

    async def send(self, message: OutboundMessage, config: Mapping[str, Any]) -> SendResult:
        self.check(message, config)
        token = require_key(config, "access_token")
        number = require_key(config, "phone_number_id")
        auth = {"authorization": f"Bearer {token}"}
        base: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": message.to if message.to.startswith("+") else f"+{message.to}",
        }
        if message.reply_to and message.whatsapp_template is None:
            base["context"] = {"message_id": message.reply_to}
        ids: list[str] = []
        try:
            for body in await self._bodies(message, number, auth):
                answer = await self._http.post(
                    f"{self._base}/{number}/messages",
                    what="whatsapp send",
                    classify=classify,
                    json_body=base | body,
                    headers=auth,
                )
                ids.append(_wamid(answer))
                base.pop("context", None)  # only the first message quotes the replied one
        except SendError as exc:
            exc.accepted_ids = tuple(ids)
            raise
        return SendResult(tuple(ids), {"messages": len(ids)})

    async def _bodies(
        self, message: OutboundMessage, number: str, auth: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        """The message bodies in order. Media is uploaded while building them, before the
        first send, so an upload failure sends nothing."""
        if (template := message.whatsapp_template) is not None:
            spec: dict[str, Any] = {
                "name": template.name,
                "language": {"code": template.language, "policy": "deterministic"},
            }
            if template.parameters:
                parameters = [{"type": "text", "text": p} for p in template.parameters]
                spec["components"] = [{"type": "body", "parameters": parameters}]
            return [{"type": "template", "template": spec}]
        texts, caption = texts_and_caption(
            message.text, bool(message.attachments), TEXT_MAX, CAPTION_MAX
        )
        bodies: list[dict[str, Any]] = [
            {"type": "text", "text": {"preview_url": False, "body": text}} for text in texts
        ]
        for n, attachment in enumerate(message.attachments):
            media_id = await self._upload(attachment, number, auth)
            kind = "image" if _is_image(attachment) else "document"
            media: dict[str, Any] = {"id": media_id}
            if kind == "document" and attachment.name:
                media["filename"] = attachment.name
            if n == 0 and caption is not None:
                media["caption"] = caption
            bodies.append({"type": kind, kind: media})
        return bodies

    async def _upload(
        self, attachment: OutboundAttachment, number: str, auth: Mapping[str, str]
    ) -> str:
        mimetype = attachment.mimetype or "application/octet-stream"
        limit = IMAGE_MAX if _is_image(attachment) else DOCUMENT_MAX
        answer = await self._http.post(
            f"{self._base}/{number}/media",
            what="whatsapp media upload",
            classify=classify,
            multipart=Multipart(
                fields={"messaging_product": "whatsapp", "type": mimetype},
                file_field="file",
                attachment=attachment,
                chunks=lambda: stored_chunks(self._store, attachment, limit),
            ),
            headers=auth,
        )
        media_id = answer.get("id")
        if not isinstance(media_id, str) or not media_id:
            # Nothing was sent to the customer: an upload without an id is just retried.
            raise SendTransient("bad_answer", "whatsapp media upload: no media id in the answer")
        return media_id


def _wamid(answer: Mapping[str, Any]) -> str:
    messages = answer.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        wamid = messages[0].get("id")
        if isinstance(wamid, str) and wamid:
            return wamid
    raise SendOutcomeUnknown("bad_answer", "whatsapp send: accepted, but no message id")
