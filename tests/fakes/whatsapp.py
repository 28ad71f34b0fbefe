"""A WhatsApp Cloud API fake (provider-apis.md §2, §5): the Graph API on one origin, the media
host (lookaside.fbsbx.com's role) on another, and an optional CDN on a third.

- Bearer required everywhere; a bad token → HTTP 401, code 190.
- `GET /<version>/<media id>[?phone_number_id=]` returns `file_size` as a string and a `url`
  on the media host carrying an expiry and an HMAC; webhook media ids older than 7 days, an
  unknown id or another number's id → 400 code 100 / subcode 33.
- Media host: Bearer required (else 401); a URL older than `url_ttl_s` (5 min) or with a bad
  HMAC → 404; optionally 302 to the CDN, which refuses requests carrying `Authorization`
  (and counts them in `credential_leaks`).
- Sending (§2.3-2.5): `POST /<version>/<phone id>/media` (multipart: messaging_product,
  type, file) returns `{"id"}`; `POST /<version>/<phone id>/messages` validates
  messaging_product / to / type, text <= 4096, caption <= 1024, media by an uploaded `id` or a
  `link`, templates against `templates` (132001 unknown name or language, 132000 wrong
  parameter count), and returns `{messaging_product, contacts, messages:[{id: "wamid.…"}]}`.
  Recipients in `window_closed` get the send accepted and a `failed` status with 131047 in
  `statuses` (or a synchronous 131047 with `sync_window_errors`); `status_webhook(wamid,
  status)` builds the webhook body a later status would post. Over `throughput` sends per
  second → 130429; the same recipient over `pair_burst` within 6 s → 131056.
- Scriptable routes: "media_info", "media_download", "cdn", "send", "upload".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fakes.harness import Body, Clock, FakeServer

VERSION = "v25.0"
WEBHOOK_ID_TTL_S = 7 * 24 * 3600
URL_KEY = b"fake-lookaside-hmac-key"
PAIR_WINDOW_S = 6.0


def graph_error(status: int, code: int, message: str, **extra: Any) -> JSONResponse:
    error = {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "AFake1"}
    return JSONResponse({"error": error | extra}, status)


def send_error(code: int, message: str, details: str, status: int = 400) -> JSONResponse:
    """The full envelope of a send error, as Meta's error-codes page shows it."""
    return JSONResponse(
        {
            "error": {
                "message": f"(#{code}) {message}",
                "type": "OAuthException",
                "code": code,
                "error_data": {"messaging_product": "whatsapp", "details": details},
                "fbtrace_id": "AFakeSend",
            }
        },
        status,
    )


@dataclass(frozen=True, slots=True)
class Uploaded:
    media_id: str
    phone_number_id: str
    mime_type: str
    filename: str | None
    data: bytes


@dataclass(frozen=True, slots=True)
class SentMessage:
    wamid: str
    phone_number_id: str
    body: dict[str, Any]


def expired_token() -> JSONResponse:
    return graph_error(401, 190, "Error validating access token: Session has expired")


def unknown_object(media_id: str) -> JSONResponse:
    message = (
        f"Unsupported get request. Object with ID '{media_id}' does not exist, cannot be loaded"
        " due to missing permissions, or does not support this operation."
    )
    return JSONResponse(
        {
            "error": {
                "message": message,
                "type": "GraphMethodException",
                "code": 100,
                "error_subcode": 33,
                "fbtrace_id": "AFake2",
            }
        },
        400,
    )


def hex_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def base64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


@dataclass(slots=True)
class WhatsAppMedia:
    media_id: str
    body: Body
    sha256: str  # what the lookup reports (hex by default; a test may lie)
    file_size: str  # a string, as Meta sends it
    received_at: float  # when the webhook carried the id
    phone_number_id: str | None = None
    via_cdn: bool = False  # the media host answers 302 to the CDN


@dataclass(slots=True)
class WhatsAppFake:
    graph: FakeServer = field(default_factory=lambda: FakeServer("whatsapp-graph"))
    media_host: FakeServer = field(default_factory=lambda: FakeServer("whatsapp-media"))
    cdn: FakeServer = field(default_factory=lambda: FakeServer("whatsapp-cdn"))
    clock: Clock = field(default_factory=Clock)
    url_ttl_s: float = 300.0
    require_user_agent: bool = True
    tokens: set[str] = field(default_factory=set)
    media: dict[str, WhatsAppMedia] = field(default_factory=dict)
    credential_leaks: int = 0
    phone_numbers: set[str] = field(default_factory=set)
    templates: dict[tuple[str, str], int] = field(default_factory=dict)  # → parameter count
    uploads: dict[str, Uploaded] = field(default_factory=dict)
    sent: list[SentMessage] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)  # what webhooks would carry
    window_closed: set[str] = field(default_factory=set)  # wa_ids outside the 24 h window
    sync_window_errors: bool = False
    throughput: int = 80  # messages per second
    pair_burst: int = 45  # to one recipient within PAIR_WINDOW_S
    recent: deque[float] = field(default_factory=deque)
    recent_by_recipient: dict[str, deque[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.graph.route(f"/{VERSION}/{{media_id}}", "media_info", self._info, ["GET"])
        self.media_host.route(
            "/whatsapp_business/attachments/", "media_download", self._download, ["GET"]
        )
        self.cdn.route("/m/{media_id}", "cdn", self._cdn, ["GET"])
        self.graph.route(f"/{VERSION}/{{number}}/messages", "send", self._send, ["POST"])
        self.graph.route(f"/{VERSION}/{{number}}/media", "upload", self._upload, ["POST"])

    @property
    def servers(self) -> tuple[FakeServer, ...]:
        return (self.graph, self.media_host, self.cdn)

    @property
    def graph_url(self) -> str:
        """CRM_INGEST_WHATSAPP_GRAPH_URL for this fake (the version included)."""
        return f"{self.graph.url}/{VERSION}"

    def add_token(self, token: str) -> str:
        self.tokens.add(token)
        return token

    def add_media(
        self,
        media_id: str,
        data: bytes,
        *,
        mime_type: str = "image/jpeg",
        sha256: str | None = None,
        file_size: str | None = None,
        age_s: float = 0.0,
        phone_number_id: str | None = None,
        via_cdn: bool = False,
        **body: Any,
    ) -> WhatsAppMedia:
        added = WhatsAppMedia(
            media_id=media_id,
            body=Body(data, content_type=mime_type, **body),
            sha256=hex_sha256(data) if sha256 is None else sha256,
            file_size=str(len(data)) if file_size is None else file_size,
            received_at=self.clock.now() - age_s,
            phone_number_id=phone_number_id,
            via_cdn=via_cdn,
        )
        self.media[media_id] = added
        return added

    def reset(self) -> None:
        for server in self.servers:
            server.reset()
        self.clock.offset = 0.0
        self.url_ttl_s = 300.0
        self.require_user_agent = True
        self.tokens.clear()
        self.media.clear()
        self.credential_leaks = 0
        self.phone_numbers.clear()
        self.templates.clear()
        self.uploads.clear()
        self.sent.clear()
        self.statuses.clear()
        self.window_closed.clear()
        self.sync_window_errors = False
        self.throughput = 80
        self.pair_burst = 45
        self.recent.clear()
        self.recent_by_recipient.clear()

    def _bearer_ok(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and token in self.tokens

    async def _info(self, request: Request) -> Response:
        if not self._bearer_ok(request):
            return expired_token()
        media_id = request.path_params["media_id"]
        found = self.media.get(media_id)
        number = request.query_params.get("phone_number_id")
        if (
            found is None
            or self.clock.now() - found.received_at > WEBHOOK_ID_TTL_S
            or (number is not None and number != found.phone_number_id)
        ):
            return unknown_object(media_id)
        expires = int(self.clock.now() + self.url_ttl_s)
        query = urlencode({"mid": media_id, "ext": expires, "hash": _sign(media_id, expires)})
        return JSONResponse(
            {
                "messaging_product": "whatsapp",
                "url": f"{self.media_host.url}/whatsapp_business/attachments/?{query}",
                "mime_type": found.body.content_type,
                "sha256": found.sha256,
                "file_size": found.file_size,
                "id": media_id,
            }
        )

    async def _download(self, request: Request) -> Response:
        if not self._bearer_ok(request):
            return expired_token()
        if self.require_user_agent and not request.headers.get("user-agent"):
            return Response(b"", 400)
        params = request.query_params
        found = self.media.get(params.get("mid", ""))
        expires = int(params["ext"]) if params.get("ext", "").isdigit() else 0
        if (
            found is None
            or not hmac.compare_digest(params.get("hash", ""), _sign(found.media_id, expires))
            or self.clock.now() > expires
        ):
            return Response(b"", 404)
        if found.via_cdn:
            return Response(b"", 302, headers={"location": f"{self.cdn.url}/m/{found.media_id}"})
        return found.body.response()

    async def _cdn(self, request: Request) -> Response:
        if "authorization" in request.headers:
            self.credential_leaks += 1
            return Response(b"Only one auth mechanism allowed", 400)
        found = self.media.get(request.path_params["media_id"])
        return Response(b"", 404) if found is None else found.body.response()

    async def _upload(self, request: Request) -> Response:
        if not self._bearer_ok(request):
            return expired_token()
        number = request.path_params["number"]
        if number not in self.phone_numbers:
            return unknown_object(number)
        async with request.form(max_part_size=1 << 20) as form:
            upload = form.get("file")
            if form.get("messaging_product") != "whatsapp" or not isinstance(upload, UploadFile):
                return send_error(100, "Invalid parameter", "messaging_product and file needed")
            data = await upload.read()
            mime_type = str(form.get("type") or upload.content_type or "")
        media_id = str(1_000_000_000_000 + len(self.uploads) + 1)
        self.uploads[media_id] = Uploaded(media_id, number, mime_type, upload.filename, data)
        return JSONResponse({"id": media_id})

    async def _send(self, request: Request) -> Response:
        if not self._bearer_ok(request):
            return expired_token()
        number = request.path_params["number"]
        if number not in self.phone_numbers:
            return unknown_object(number)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return send_error(100, "Invalid parameter", "body is not JSON")
        if (refused := self._invalid(body)) is not None:
            return refused
        wa_id = str(body["to"]).lstrip("+")
        if (limited := self._rate_limited(wa_id)) is not None:
            return limited
        outside = wa_id in self.window_closed and body["type"] != "template"
        if outside and self.sync_window_errors:
            return send_error(
                131047,
                "Re-engagement message",
                "More than 24 hours have passed since the recipient last replied to the"
                " sender number.",
            )
        wamid = f"wamid.FAKE{len(self.sent) + 1:08d}{wa_id}"
        self.sent.append(SentMessage(wamid, number, body))
        if outside:
            self.status_webhook(wamid, "failed", error=(131047, "Re-engagement message"))
        else:
            self.status_webhook(wamid, "sent")
        return JSONResponse(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": body["to"], "wa_id": wa_id}],
                "messages": [{"id": wamid}],
            }
        )

    def status_webhook(
        self, wamid: str, status: str, *, error: tuple[int, str] | None = None
    ) -> dict[str, Any]:
        """The status webhook Meta would post for a sent message (the shape of
        tests/payloads/whatsapp/status_*.json); its element is also kept in `statuses`."""
        sent = next(m for m in self.sent if m.wamid == wamid)
        element: dict[str, Any] = {
            "id": wamid,
            "status": status,
            "timestamp": str(int(self.clock.now())),
            "recipient_id": str(sent.body["to"]).lstrip("+"),
        }
        if error is not None:
            element["errors"] = [{"code": error[0], "title": error[1]}]
        self.statuses.append(element)
        value = {
            "messaging_product": "whatsapp",
            "metadata": {
                "display_phone_number": "15550783881",
                "phone_number_id": sent.phone_number_id,
            },
            "statuses": [element],
        }
        return {
            "object": "whatsapp_business_account",
            "entry": [
                {"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}
            ],
        }

    def _invalid(self, body: Any) -> Response | None:
        if not isinstance(body, dict) or body.get("messaging_product") != "whatsapp":
            return send_error(100, "Invalid parameter", "messaging_product must be whatsapp")
        kind = body.get("type")
        if not body.get("to") or not isinstance(body.get(kind), dict):
            return send_error(131008, "Required parameter is missing", "to and type needed")
        content = body[kind]
        if kind == "text":
            text = content.get("body")
            if not isinstance(text, str) or not text or len(text) > 4096:
                return send_error(100, "Invalid parameter", "text body must be 1-4096 characters")
        elif kind in ("image", "document", "audio", "video"):
            if "id" in content:
                if str(content["id"]) not in self.uploads:
                    return send_error(131053, "Media upload error", "unknown media id")
            elif "link" not in content:
                return send_error(131008, "Required parameter is missing", "id or link needed")
            if len(str(content.get("caption", ""))) > 1024:
                return send_error(100, "Invalid parameter", "caption over 1024 characters")
        elif kind == "template":
            return self._invalid_template(content)
        else:
            return send_error(131051, "Unsupported message type", f"{kind} is not supported")
        return None

    def _invalid_template(self, template: dict[str, Any]) -> Response | None:
        language = template.get("language")
        code = language.get("code") if isinstance(language, dict) else None
        key = (str(template.get("name")), str(code))
        if key not in self.templates:
            return send_error(
                132001,
                "Template name does not exist in the translation",
                f"template name ({key[0]}) does not exist in {key[1]}",
            )
        given = sum(
            len(component.get("parameters", []))
            for component in template.get("components", [])
            if component.get("type") == "body"
        )
        if given != self.templates[key]:
            return send_error(
                132000,
                "Number of parameters does not match the expected number of params",
                f"body: number of localizable_params ({given}) does not match the expected"
                f" number of params ({self.templates[key]})",
            )
        return None

    def _rate_limited(self, wa_id: str) -> Response | None:
        now = self.clock.now()
        while self.recent and now - self.recent[0] >= 1.0:
            self.recent.popleft()
        if len(self.recent) >= self.throughput:
            return send_error(
                130429, "Rate limit hit", "Cloud API message throughput has been reached."
            )
        pair = self.recent_by_recipient.setdefault(wa_id, deque())
        while pair and now - pair[0] >= PAIR_WINDOW_S:
            pair.popleft()
        if len(pair) >= self.pair_burst:
            return send_error(
                131056,
                "(Business Account, Consumer Account) pair rate limit hit",
                "Message failed to send because there were too many messages sent from this"
                " phone number to the same phone number in a short period of time.",
            )
        self.recent.append(now)
        pair.append(now)
        return None


def _sign(media_id: str, expires: int) -> str:
    return hmac.new(URL_KEY, f"{media_id}:{expires}".encode(), hashlib.sha256).hexdigest()
