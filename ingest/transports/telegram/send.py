"""Replies through the Telegram Bot API (provider-apis.md §1.4-1.6).

A text over 4096 characters goes out as several messages, cut at line breaks, else at spaces,
else inside a word, never silently dropped; every part's id is returned. Attachments are
uploaded as multipart, streamed from the object store: photos (JPEG/PNG/WebP up to 10 MB) by
`sendPhoto`, everything else by `sendDocument` (50 MB). A text that fits a caption (1024)
rides on the first attachment; a longer one goes first as its own message(s). Ids are
`<chat id>:<message id>`, as the webhook records inbound ones; a 0 id (a message Telegram
scheduled instead of sending) is not returned.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from ingest.config import Transport
from ingest.logs import get_logger
from ingest.transports.http_download import ErrorResponse
from ingest.transports.http_send import (
    Multipart,
    ProviderHTTP,
    classify_status,
    json_field,
    stored_chunks,
)
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

log = get_logger(__name__)

TEXT_MAX = 4096
CAPTION_MAX = 1024
PHOTO_MAX = 10 * 1024 * 1024
DOCUMENT_MAX = 50 * 1024 * 1024
PHOTO_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})
MAX_ATTACHMENTS = 10
# What the Bot API answers for a photo it cannot take as a photo.
PHOTO_REFUSALS = re.compile(r"PHOTO_INVALID_DIMENSIONS|IMAGE_PROCESS_FAILED|PHOTO_EXT_INVALID")


@dataclass(frozen=True, slots=True)
class _Call:
    method: str
    fields: dict[str, Any]
    attachment: OutboundAttachment | None = None
    file_field: str = ""  # "photo" or "document"


def _is_photo(attachment: OutboundAttachment) -> bool:
    size_ok = attachment.size is not None and attachment.size <= PHOTO_MAX
    return size_ok and (attachment.mimetype or "").lower() in PHOTO_TYPES


def classify(answer: ErrorResponse) -> SendError:
    """By status and description (provider-apis.md §1.2); `error_code` may change."""
    data = answer.json()
    description = str(data.get("description") or f"HTTP {answer.status}")[:300]
    parameters = data.get("parameters") if isinstance(data.get("parameters"), dict) else {}
    assert isinstance(parameters, dict)
    code = str(data.get("error_code") or answer.status)
    if answer.status == 429 or "retry_after" in parameters:
        hint = parameters.get("retry_after")
        retry_after = float(hint) if isinstance(hint, int | float) else answer.retry_after
        return SendTransient(code, f"telegram: {description}", retry_after=retry_after)
    if "migrate_to_chat_id" in parameters:
        new_id = parameters["migrate_to_chat_id"]
        return SendRejected(
            code, f"telegram: group upgraded to a supergroup; its new chat id is {new_id}"
        )
    if answer.status in (401, 404):
        return SendRejected(
            code,
            "telegram: bot token refused; set a valid one with "
            "crm-ingest channel set <channel id> --config bot_token=…",
        )
    if (shared := classify_status("telegram", answer)) is not None:
        return shared
    return SendRejected(code, f"telegram: {description}")


class TelegramSender:
    transport: ClassVar[Transport] = "telegram"

    def __init__(self, settings: Settings, client: httpx.AsyncClient, store: ObjectStore) -> None:
        self._base = settings.telegram_api_url
        self._http = ProviderHTTP(client, settings.outbound_timeout_s)
        self._store = store

    def check(self, message: OutboundMessage, config: Mapping[str, Any]) -> None:
        require_key(config, "bot_token")
        check_shape(
            message, provider="Telegram", max_attachments=MAX_ATTACHMENTS, max_bytes=DOCUMENT_MAX
        )

    def plan(self, message: OutboundMessage) -> list[_Call]:
        """The Bot API calls of one reply, in order."""
        chat_id: int | str = int(message.to) if message.to.lstrip("-").isdigit() else message.to
        texts, caption = texts_and_caption(
            message.text, bool(message.attachments), TEXT_MAX, CAPTION_MAX
        )
        calls = [_Call("sendMessage", {"chat_id": chat_id, "text": text}) for text in texts]
        for n, attachment in enumerate(message.attachments):
            method, field_name = (
                ("sendPhoto", "photo") if _is_photo(attachment) else ("sendDocument", "document")
            )
            fields: dict[str, Any] = {"chat_id": chat_id}
            if n == 0 and caption is not None:
                fields["caption"] = caption
            calls.append(_Call(method, fields, attachment, field_name))
        reply_to = (message.reply_to or "").rpartition(":")[2]
        if calls and reply_to.isdigit():
            calls[0].fields["reply_parameters"] = {
                "message_id": int(reply_to),
                "allow_sending_without_reply": True,  # the replied message may be gone
            }
        return calls

    async def send(self, message: OutboundMessage, config: Mapping[str, Any]) -> SendResult:
        self.check(message, config)
        token = require_key(config, "bot_token")
        ids: list[str] = []
        unnumbered = 0
        for call in self.plan(message):
            try:
                result = await self._call_photo_or_document(token, call)
            except SendError as exc:
                exc.accepted_ids = tuple(ids)
                raise
            chat = result.get("chat") if isinstance(result.get("chat"), dict) else {}
            assert isinstance(chat, dict)
            message_id = result.get("message_id")
            if isinstance(message_id, int) and message_id > 0:
                ids.append(f"{chat.get('id', message.to)}:{message_id}")
            else:
                unnumbered += 1  # scheduled by Telegram: no id a status could refer to
        detail: dict[str, Any] = {"messages": len(ids) + unnumbered}
        if unnumbered:
            detail["unnumbered"] = unnumbered
        return SendResult(tuple(ids), detail)

    async def _call_photo_or_document(self, token: str, call: _Call) -> dict[str, Any]:
        """A photo Telegram cannot process (dimensions, ratio, format) goes again as a
        document: the refusal means nothing was sent."""
        try:
            return await self._call(token, call)
        except SendRejected as exc:
            if call.method != "sendPhoto" or not PHOTO_REFUSALS.search(exc.message):
                raise
            log.info("photo refused, sending it as a document", code=exc.code)
        return await self._call(
            token, _Call("sendDocument", call.fields, call.attachment, "document")
        )

    async def _call(self, token: str, call: _Call) -> dict[str, Any]:
        # Quoted: a token holding "/" or "?" must not reach another path of the API.
        url = f"{self._base}/bot{quote(token, safe=':')}/{call.method}"
        what = f"telegram {call.method}"
        if call.attachment is None:
            answer = await self._http.post(url, what=what, classify=classify, json_body=call.fields)
        else:
            attachment = call.attachment
            limit = PHOTO_MAX if call.file_field == "photo" else DOCUMENT_MAX
            multipart = Multipart(
                fields={
                    k: json_field(v) if isinstance(v, dict) else str(v)
                    for k, v in call.fields.items()
                },
                file_field=call.file_field,
                attachment=attachment,
                chunks=lambda: stored_chunks(self._store, attachment, limit),
            )
            answer = await self._http.post(url, what=what, classify=classify, multipart=multipart)
        result = answer.get("result")
        if answer.get("ok") is not True or not isinstance(result, dict):
            raise SendOutcomeUnknown("bad_answer", f"{what}: accepted, answer unreadable")
        return result
