"""The one safe HTTP download every media source uses (provider-apis.md §0).

Each hop's host must be allowed; redirects are followed by hand and lose `Authorization` when
the origin changes; a size declared over the cap is refused before the body is read and the cap
holds while streaming; a deadline bounds the whole download; httpx's exceptions become
`FetchTransient`/`FetchPermanent` here and nowhere else. Reasons and log lines carry no URL,
since a Telegram URL holds the bot token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx

from ingest.config import Settings
from ingest.logs import get_logger
from ingest.transports.fetching import FetchError, FetchPermanent, FetchTransient

log = get_logger(__name__)

# httpx logs every request URL at INFO, and Telegram's bot token is part of the URL path.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)

USER_AGENT = "crm-ingest media fetcher"  # Meta's CDN has refused downloads without one
MAX_REDIRECTS = 5
ERROR_BODY_MAX = 64 * 1024  # enough for any provider's error envelope or lookup answer
_DEFAULT_PORTS = {"http": 80, "https": 443}


class AllowedHosts:
    """CRM_INGEST_MEDIA_ALLOWED_HOSTS: `host` (https on 443), `host:port` (http or https on that
    port), `*.domain` (any subdomain, https on 443)."""

    def __init__(self, setting: str) -> None:
        self.exact: set[tuple[str, int]] = set()
        self.any_scheme: set[tuple[str, int]] = set()
        self.suffixes: list[str] = []
        for entry in (e.strip().lower() for e in setting.split(",")):
            if not entry:
                continue
            if entry.startswith("*."):
                self.suffixes.append(entry[1:])
                continue
            host, sep, port = entry.rpartition(":") if not entry.endswith("]") else ("", "", "")
            if sep and port.isdigit() and not host.endswith(":"):
                self.any_scheme.add((host.strip("[]"), int(port)))
            else:
                self.exact.add((entry.strip("[]"), 443))

    def allows(self, url: httpx.URL) -> bool:
        if url.scheme not in _DEFAULT_PORTS or url.userinfo:
            return False
        host = url.host.lower()
        port = url.port or _DEFAULT_PORTS[url.scheme]
        if (host, port) in self.any_scheme:
            return True
        if url.scheme != "https":
            return False
        return (host, port) in self.exact or (
            port == 443 and any(host.endswith(suffix) for suffix in self.suffixes)
        )


def normalize_sha256(value: str | None) -> str | None:
    """A declared sha256 as lower-case hex; providers give hex or base64 (WhatsApp webhooks).
    Anything else is no checksum at all rather than a guaranteed mismatch."""
    value = (value or "").strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", value):
        return value.lower()
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds (delta or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """A non-2xx answer, its body capped, for a provider's classifier."""

    status: int
    headers: httpx.Headers
    body: bytes

    def json(self) -> dict[str, Any]:
        try:
            data = json.loads(self.body)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def retry_after(self) -> float | None:
        return retry_after_seconds(self.headers.get("retry-after"))


Classifier = Callable[[ErrorResponse], FetchError]


def classify_http(what: str) -> Classifier:
    """The default reading of an HTTP status, for providers without a better error code."""

    def classify(error: ErrorResponse) -> FetchError:
        if error.status == 429:
            return FetchTransient(f"{what}: rate limited (429)", retry_after=error.retry_after)
        if error.status >= 500:
            return FetchTransient(f"{what}: provider error ({error.status})")
        if error.status in (401, 403):
            return FetchPermanent(f"{what}: credentials rejected ({error.status})")
        return FetchPermanent(f"{what}: refused ({error.status})")

    return classify


class HttpDownload:
    """A streaming 2xx response as a `MediaDownload`: the byte cap, the deadline, the expected
    size and checksum are enforced while the caller reads `chunks()`."""

    def __init__(
        self,
        response: httpx.Response,
        *,
        what: str,
        max_bytes: int,
        deadline: float,
        content_type: str | None,
        declared_size: int | None,
        expected_sha256: str | None,
        expected_size: int | None,
    ) -> None:
        self._response = response
        self._what = what
        self._max_bytes = max_bytes
        self._deadline = deadline
        self._expected_size = expected_size
        self.content_type = content_type
        self.declared_size = declared_size
        self.expected_sha256 = expected_sha256

    async def chunks(self) -> AsyncIterator[bytes]:
        digest = hashlib.sha256()
        received = 0
        stream = self._response.aiter_bytes().__aiter__()
        while True:
            try:
                async with asyncio.timeout_at(self._deadline):
                    chunk = await anext(stream)
            except StopAsyncIteration:
                break
            except TimeoutError as exc:
                raise FetchTransient(f"{self._what}: download took too long") from exc
            except httpx.HTTPError as exc:
                raise _translate(exc, self._what) from exc
            received += len(chunk)
            if received > self._max_bytes:
                raise FetchPermanent(f"{self._what}: too large (over {self._max_bytes} bytes)")
            if self._expected_size is not None and received > self._expected_size:
                raise FetchPermanent(
                    f"{self._what}: size mismatch (over the declared {self._expected_size} bytes)"
                )
            digest.update(chunk)
            yield chunk
        if self._expected_size is not None and received != self._expected_size:
            raise FetchPermanent(
                f"{self._what}: size mismatch ({received} bytes, declared {self._expected_size})"
            )
        if self.expected_sha256 is not None and digest.hexdigest() != self.expected_sha256:
            raise FetchPermanent(f"{self._what}: checksum mismatch")


def _translate(exc: httpx.HTTPError, what: str) -> FetchError:
    """httpx errors into ours; the reason names the kind of failure, never the URL."""
    if isinstance(exc, httpx.TimeoutException):
        return FetchTransient(f"{what}: timed out")
    if isinstance(exc, httpx.TransportError | httpx.DecodingError):
        return FetchTransient(f"{what}: connection failed ({type(exc).__name__})")
    return FetchPermanent(f"{what}: request failed ({type(exc).__name__})")


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    return (url.scheme, url.host.lower(), url.port or _DEFAULT_PORTS.get(url.scheme, 0))


class SafeDownloader:
    """Every provider request goes through here: each hop's host must be allowed, redirects are
    followed by hand and lose `Authorization` when the origin changes (provider-apis.md §0), a
    declared size over the cap is refused before streaming and the cap holds while streaming.
    Timeouts: `timeout_s` per connect/read, `deadline_s` for a whole download."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        allowed_hosts: AllowedHosts,
        *,
        max_bytes: int,
        timeout_s: float,
        deadline_s: float,
    ) -> None:
        self._client = client
        self._allowed = allowed_hosts
        self.max_bytes = max_bytes
        self._timeout = httpx.Timeout(timeout_s)
        self._deadline_s = deadline_s

    async def _send(
        self, url: str, headers: Mapping[str, str], what: str, classify: Classifier
    ) -> httpx.Response:
        """The final 2xx response, streaming; a non-2xx one is classified and raised."""
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise FetchPermanent(f"{what}: invalid URL") from exc
        sent = {"user-agent": USER_AGENT, "accept-encoding": "identity", **headers}
        for _ in range(MAX_REDIRECTS + 1):
            if not self._allowed.allows(target):
                log.warning("media host not allowed", what=what, host=target.host)
                where = target.host if target.port is None else f"{target.host}:{target.port}"
                raise FetchPermanent(f"{what}: host not allowed ({where})")
            request = self._client.build_request("GET", target, headers=sent, timeout=self._timeout)
            try:
                response = await self._client.send(request, stream=True, follow_redirects=False)
            except httpx.HTTPError as exc:
                raise _translate(exc, what) from exc
            if response.is_redirect and "location" in response.headers:
                await response.aclose()
                try:
                    hop = target.join(response.headers["location"])
                except httpx.InvalidURL as exc:
                    raise FetchPermanent(f"{what}: invalid redirect") from exc
                if _origin(hop) != _origin(target):
                    sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
                target = hop
                continue
            if response.is_success:
                return response
            raise classify(await _small_answer(response, what))
        raise FetchPermanent(f"{what}: too many redirects")

    async def get_json(
        self, url: str, *, what: str, classify: Classifier, headers: Mapping[str, str] = {}
    ) -> dict[str, Any]:
        """A provider API call answering JSON (Telegram getFile, the Graph media lookup)."""
        try:
            async with asyncio.timeout(self._deadline_s):
                response = await self._send(url, headers, what, classify)
                data = (await _small_answer(response, what)).json()
        except TimeoutError as exc:
            raise FetchTransient(f"{what}: timed out") from exc
        if not data:
            raise FetchTransient(f"{what}: answer is not a JSON object")
        return data

    @asynccontextmanager
    async def download(
        self,
        url: str,
        *,
        what: str,
        classify: Classifier,
        headers: Mapping[str, str] = {},
        content_type: str | None = None,
        declared_size: int | None = None,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
    ) -> AsyncIterator[HttpDownload]:
        """The response body, open. A size declared by the provider or by Content-Length over
        the cap is refused here, before a byte of the body is read."""
        if declared_size is not None and declared_size > self.max_bytes:
            raise FetchPermanent(
                f"{what}: too large ({declared_size} bytes, the limit is {self.max_bytes})"
            )
        deadline = asyncio.get_running_loop().time() + self._deadline_s
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._send(url, headers, what, classify)
        except TimeoutError as exc:
            raise FetchTransient(f"{what}: timed out") from exc
        try:
            length = _content_length(response)
            if length is not None and length > self.max_bytes:
                raise FetchPermanent(
                    f"{what}: too large ({length} bytes, the limit is {self.max_bytes})"
                )
            size = declared_size if declared_size is not None else length
            yield HttpDownload(
                response,
                what=what,
                max_bytes=self.max_bytes,
                deadline=deadline,
                content_type=content_type or _mime(response),
                declared_size=size,
                expected_sha256=expected_sha256,
                expected_size=expected_size,
            )
        finally:
            await response.aclose()


async def _small_answer(response: httpx.Response, what: str) -> ErrorResponse:
    """An error envelope or an API answer: read up to ERROR_BODY_MAX, then closed."""
    body = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) >= ERROR_BODY_MAX:
                break
    except httpx.HTTPError as exc:
        raise _translate(exc, what) from exc
    finally:
        await response.aclose()
    return ErrorResponse(response.status_code, response.headers, bytes(body[:ERROR_BODY_MAX]))


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


def _mime(response: httpx.Response) -> str | None:
    value = response.headers.get("content-type", "").split(";")[0].strip().lower()
    return value or None


class LinkExpired(FetchTransient):
    """A short-lived download link has expired; a fresh lookup gives a new one."""


@asynccontextmanager
async def with_fresh_link(
    open_link: Callable[[], Awaitable[AbstractAsyncContextManager[HttpDownload]]],
) -> AsyncIterator[HttpDownload]:
    """Telegram and Meta hand out short-lived links: `open_link` looks one up and returns its
    download; when the link turns out expired it is looked up once more, at once."""
    async with AsyncExitStack() as stack:
        for attempt in range(2):
            link = await open_link()
            try:
                download = await stack.enter_async_context(link)
                break
            except LinkExpired:
                if attempt:
                    raise
        yield download


def media_http_client() -> httpx.AsyncClient:
    """The client to hand to `load_media_sources`: it keeps no cookies, so nothing one
    provider answer sets (for one tenant) rides along on another request. Timeouts, redirects
    and headers are per request, set by SafeDownloader."""
    no_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(cookies=no_cookies)  # the jar itself: httpx.Cookies() would copy it


def safe_downloader(settings: Settings, client: httpx.AsyncClient) -> SafeDownloader:
    return SafeDownloader(
        client,
        AllowedHosts(settings.media_allowed_hosts),
        max_bytes=settings.media_max_bytes,
        timeout_s=settings.media_http_timeout_s,
        deadline_s=settings.media_download_deadline_s,
    )
