"""The one HTTP call every HTTP sender makes, and the one place httpx's and the object store's
errors become `SendError`s.

The line that matters for exactly-once: an error before the request could reach the provider
(connect refused or timed out, no pooled connection) is `SendTransient`; one after the request
went out and before a complete answer came back (read timeout, reset, a truncated answer) is
`SendOutcomeUnknown`, because the provider may have accepted it. An answer is classified by the
provider's own classifier; a 2xx whose body cannot be read as JSON is unknown too (accepted,
but no id to record). Reasons never carry a URL: Telegram's holds the bot token.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from ingest.logs import get_logger
from ingest.objectstore import ObjectNotFound, ObjectStore, ObjectTooLarge, StoreError
from ingest.transports.http_download import ErrorResponse
from ingest.transports.sending import (
    OutboundAttachment,
    SendError,
    SendOutcomeUnknown,
    SendRejected,
    SendTransient,
)

log = get_logger(__name__)

USER_AGENT = "crm-ingest sender"
ANSWER_MAX = 256 * 1024  # any provider's answer or error envelope fits

Classifier = Callable[[ErrorResponse], SendError]


def classify_status(provider: str, answer: ErrorResponse) -> SendError | None:
    """What every provider shares: a 429 or a 5xx was not processed (transient), a 3xx means
    the API URL is wrong (nothing was sent). None: let the provider's envelope decide."""
    if answer.status == 429:
        return SendTransient("429", f"{provider}: rate limited", retry_after=answer.retry_after)
    if answer.status >= 500:
        return SendTransient(str(answer.status), f"{provider}: server error {answer.status}")
    if 300 <= answer.status < 400:
        return SendRejected(str(answer.status), f"{provider}: unexpected redirect (API URL?)")
    return None


class ProviderHTTP:
    """Posts to one provider with a shared client; no redirects, no cookies sent on."""

    def __init__(self, client: httpx.AsyncClient, timeout_s: float) -> None:
        self._client = client
        self._timeout = httpx.Timeout(timeout_s)

    async def post(
        self,
        url: str,
        *,
        what: str,
        classify: Classifier,
        json_body: Mapping[str, Any] | None = None,
        form: Mapping[str, str | list[str]] | None = None,
        multipart: Multipart | None = None,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> dict[str, Any]:
        """The 2xx answer's JSON object; anything else raises a SendError."""
        sent = {"user-agent": USER_AGENT, "accept": "application/json", **(headers or {})}
        content: AsyncIterator[bytes] | None = None
        if multipart is not None:
            sent["content-type"] = multipart.content_type
            content = multipart.stream()
        request = self._client.build_request(
            "POST",
            url,
            json=json_body,
            data=form,
            content=content,
            headers=sent,
            timeout=self._timeout,
        )
        basic = httpx.BasicAuth(*auth) if auth else None
        try:
            response = await self._client.send(
                request, auth=basic, stream=True, follow_redirects=False
            )
            try:
                body = await _read_capped(response)
            finally:
                await response.aclose()
        except SendError:
            raise  # from a multipart stream: the body was cut short, nothing was accepted
        except httpx.HTTPError as exc:
            raise _translate(exc, what) from exc
        answer = ErrorResponse(response.status_code, response.headers, body)
        if not response.is_success:
            error = classify(answer)
            log.info("provider refused", what=what, status=response.status_code, code=error.code)
            raise error
        data = answer.json()
        if not data:
            raise SendOutcomeUnknown(
                "bad_answer", f"{what}: accepted, but the answer is unreadable"
            )
        return data


async def _read_capped(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_bytes():  # decoded: providers gzip their answers
        total += len(chunk)
        if total > ANSWER_MAX:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _translate(exc: httpx.HTTPError, what: str) -> SendError:
    """httpx errors into ours; the reason names the kind of failure, never the URL."""
    kind = type(exc).__name__
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return SendTransient("network", f"{what}: could not connect ({kind})")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return SendRejected("bad_url", f"{what}: invalid API URL ({kind})")
    # Write/read errors and timeouts, a reset or a truncated answer: the request may have
    # reached the provider and been accepted.
    return SendOutcomeUnknown("outcome_unknown", f"{what}: no complete answer ({kind})")


def store_error(exc: StoreError, attachment: OutboundAttachment) -> SendError:
    """An object-store failure while reading an attachment (nothing was sent with it)."""
    which = f"attachment {attachment.upload_id}"
    if isinstance(exc, ObjectNotFound):
        return SendRejected("attachment_not_stored", f"{which} is not in the store")
    if isinstance(exc, ObjectTooLarge):
        return SendRejected("attachment_too_large", f"{which} is over {exc.max_bytes} bytes")
    return SendTransient("store_unavailable", f"{which}: the object store is unavailable")


async def stored_chunks(
    store: ObjectStore, attachment: OutboundAttachment, max_bytes: int
) -> AsyncIterator[bytes]:
    """The attachment's bytes from the store, refused past `max_bytes` (a size the upload row
    did not declare is only known while streaming)."""
    total = 0
    try:
        async for chunk in store.get(attachment.url):
            total += len(chunk)
            if total > max_bytes:
                raise ObjectTooLarge(max_bytes)
            yield chunk
    except StoreError as exc:
        raise store_error(exc, attachment) from exc


async def stored_bytes(store: ObjectStore, attachment: OutboundAttachment, max_bytes: int) -> bytes:
    return b"".join([chunk async for chunk in stored_chunks(store, attachment, max_bytes)])


def filename(attachment: OutboundAttachment) -> str:
    """A safe filename for a part header: the upload's name, or one made from its id."""
    name = (attachment.name or "").replace('"', "").replace("\r", "").replace("\n", "")
    return name.strip() or f"attachment-{attachment.upload_id}"


@dataclass(frozen=True, slots=True)
class Multipart:
    """A multipart/form-data body whose one file part streams from the object store, so an
    upload never sits in memory. Sent chunked (the stored size is only trusted once read)."""

    fields: Mapping[str, str]
    file_field: str
    attachment: OutboundAttachment
    chunks: Callable[[], AsyncIterator[bytes]]
    boundary: str = field(default_factory=lambda: secrets.token_hex(16))

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    async def stream(self) -> AsyncIterator[bytes]:
        dash = f"--{self.boundary}\r\n".encode()
        for name, value in self.fields.items():
            yield dash + _part_header(name) + b"\r\n" + value.encode() + b"\r\n"
        mimetype = self.attachment.mimetype or "application/octet-stream"
        yield (
            dash
            + _part_header(self.file_field, filename(self.attachment))
            + f"Content-Type: {mimetype}\r\n\r\n".encode()
        )
        async for chunk in self.chunks():
            yield chunk
        yield f"\r\n--{self.boundary}--\r\n".encode()


def _part_header(name: str, file: str | None = None) -> bytes:
    disposition = f'Content-Disposition: form-data; name="{name}"'
    if file is not None:
        disposition += f'; filename="{file}"'
    return (disposition + "\r\n").encode()


def json_field(value: Mapping[str, Any]) -> str:
    """An object parameter inside a form or multipart body (Telegram decodes it)."""
    return json.dumps(value, separators=(",", ":"))
