"""A Twilio REST fake (provider-apis.md §3, §5): the API on one origin, the media CDN on another.

- HTTP Basic with `AC…:auth_token` or `SK…:secret`; the path's Account SID must be the
  credential's account. Otherwise 401, code 20003.
- `…/Messages/{MM}/Media/{ME}`: within `propagation_s` of the webhook → 404 (code 20404),
  then a 307 (or `redirect_status`) to the CDN, whose signed URL is valid for 4 hours and which
  refuses any request carrying `Authorization` (counted in `credential_leaks`). `.json` returns
  the Media resource.
- Scriptable routes: "media", "cdn".
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

CDN_TTL_S = 4 * 3600
CDN_KEY = b"fake-twilio-cdn-key"
MEDIA_PATH = "/2010-04-01/Accounts/{account}/Messages/{message}/Media/{media}"


def twilio_error(status: int, code: int, message: str, detail: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    if detail:
        body["detail"] = detail
    return JSONResponse(body, status)


def unauthenticated() -> JSONResponse:
    return twilio_error(401, 20003, "Authenticate", "Your AccountSid or AuthToken was incorrect.")


@dataclass(slots=True)
class TwilioMedia:
    account_sid: str
    message_sid: str
    media_sid: str
    body: Body
    created_at: float


@dataclass(slots=True)
class TwilioFake:
    api: FakeServer = field(default_factory=lambda: FakeServer("twilio-api"))
    cdn: FakeServer = field(default_factory=lambda: FakeServer("twilio-cdn"))
    clock: Clock = field(default_factory=Clock)
    propagation_s: float = 0.0  # the early-404 window after the webhook
    redirect_status: int = 307
    accounts: dict[str, str] = field(default_factory=dict)  # AC… → auth token
    api_keys: dict[str, tuple[str, str]] = field(default_factory=dict)  # SK… → (secret, AC…)
    media: dict[str, TwilioMedia] = field(default_factory=dict)
    credential_leaks: int = 0

    def __post_init__(self) -> None:
        self.api.route(MEDIA_PATH, "media", self._media, ["GET"])
        self.cdn.route("/v1/{media}", "cdn", self._cdn, ["GET"])

    @property
    def servers(self) -> tuple[FakeServer, ...]:
        return (self.api, self.cdn)

    def add_account(self, account_sid: str, auth_token: str) -> None:
        self.accounts[account_sid] = auth_token

    def add_api_key(self, key_sid: str, secret: str, account_sid: str) -> None:
        self.api_keys[key_sid] = (secret, account_sid)

    def add_media(
        self, account_sid: str, message_sid: str, media_sid: str, data: bytes, **body: Any
    ) -> str:
        """Registers media as a webhook would announce it; returns its MediaUrl."""
        self.media[media_sid] = TwilioMedia(
            account_sid, message_sid, media_sid, Body(data, **body), self.clock.now()
        )
        path = MEDIA_PATH.format(account=account_sid, message=message_sid, media=media_sid)
        return f"{self.api.url}{path}"

    def reset(self) -> None:
        for server in self.servers:
            server.reset()
        self.clock.offset = 0.0
        self.propagation_s = 0.0
        self.redirect_status = 307
        self.accounts.clear()
        self.api_keys.clear()
        self.media.clear()
        self.credential_leaks = 0

    def _authenticated(self, request: Request, account_sid: str) -> bool:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return False
        if user.startswith("AC"):
            return user == account_sid and self.accounts.get(user) == password
        secret, owner = self.api_keys.get(user, ("", ""))
        return bool(secret) and secret == password and owner == account_sid

    async def _media(self, request: Request) -> Response:
        account = request.path_params["account"]
        if not self._authenticated(request, account):
            return unauthenticated()
        media_sid = request.path_params["media"]
        as_json = media_sid.endswith(".json")
        found = self.media.get(media_sid.removesuffix(".json"))
        if (
            found is None
            or found.account_sid != account
            or found.message_sid != request.path_params["message"]
            or self.clock.now() - found.created_at < self.propagation_s
        ):
            return twilio_error(404, 20404, "The requested resource was not found")
        if as_json:
            return JSONResponse(
                {
                    "account_sid": account,
                    "content_type": found.body.content_type,
                    "parent_sid": found.message_sid,
                    "sid": found.media_sid,
                    "uri": request.url.path,
                }
            )
        expires = int(self.clock.now() + CDN_TTL_S)
        query = urlencode({"Expires": expires, "Signature": _sign(found.media_sid, expires)})
        location = f"{self.cdn.url}/v1/{found.media_sid}?{query}"
        return Response(b"", self.redirect_status, headers={"location": location})

    async def _cdn(self, request: Request) -> Response:
        if "authorization" in request.headers:
            self.credential_leaks += 1
            return Response(b"<Error><Code>InvalidArgument</Code></Error>", 400)
        found = self.media.get(request.path_params["media"])
        expires = request.query_params.get("Expires", "")
        expiry = int(expires) if expires.isdigit() else 0
        signature = request.query_params.get("Signature", "")
        if found is None or not hmac.compare_digest(signature, _sign(found.media_sid, expiry)):
            return Response(b"<Error><Code>AccessDenied</Code></Error>", 403)
        if self.clock.now() > expiry:
            return Response(b"<Error><Code>AccessDenied</Code></Error>", 403)
        return found.body.response()


def _sign(media_sid: str, expires: int) -> str:
    return hmac.new(CDN_KEY, f"{media_sid}:{expires}".encode(), hashlib.sha256).hexdigest()
