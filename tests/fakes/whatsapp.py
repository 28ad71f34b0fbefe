"""A WhatsApp Cloud API fake (provider-apis.md §2, §5): the Graph API on one origin, the media
host (lookaside.fbsbx.com's role) on another, and an optional CDN on a third.

- Bearer required everywhere; a bad token → HTTP 401, code 190.
- `GET /<version>/<media id>[?phone_number_id=]` returns `file_size` as a string and a `url`
  on the media host carrying an expiry and an HMAC; webhook media ids older than 7 days, an
  unknown id or another number's id → 400 code 100 / subcode 33.
- Media host: Bearer required (else 401); a URL older than `url_ttl_s` (5 min) or with a bad
  HMAC → 404; optionally 302 to the CDN, which refuses requests carrying `Authorization`
  (and counts them in `credential_leaks`).
- Scriptable routes: "media_info", "media_download", "cdn".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fakes.harness import Body, Clock, FakeServer

VERSION = "v25.0"
WEBHOOK_ID_TTL_S = 7 * 24 * 3600
URL_KEY = b"fake-lookaside-hmac-key"


def graph_error(status: int, code: int, message: str, **extra: Any) -> JSONResponse:
    error = {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "AFake1"}
    return JSONResponse({"error": error | extra}, status)


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

    def __post_init__(self) -> None:
        self.graph.route(f"/{VERSION}/{{media_id}}", "media_info", self._info, ["GET"])
        self.media_host.route(
            "/whatsapp_business/attachments/", "media_download", self._download, ["GET"]
        )
        self.cdn.route("/m/{media_id}", "cdn", self._cdn, ["GET"])

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


def _sign(media_id: str, expires: int) -> str:
    return hmac.new(URL_KEY, f"{media_id}:{expires}".encode(), hashlib.sha256).hexdigest()
