"""A Twilio REST fake (provider-apis.md §3, §5): the API on one origin, the media CDN on another.

- HTTP Basic with `AC…:auth_token` or `SK…:secret`; the path's Account SID must be the
  credential's account. Otherwise 401, code 20003.
- `…/Messages/{MM}/Media/{ME}`: within `propagation_s` of the webhook → 404 (code 20404),
  then a 307 (or `redirect_status`) to the CDN, whose signed URL is valid for 4 hours and which
  refuses any request carrying `Authorization` (counted in `credential_leaks`). `.json` returns
  the Media resource.
- `POST …/Messages.json` (§3.3-3.4): a form with `To` and `From` or `MessagingServiceSid`,
  `Body` <= 1600 (else 21617), <= 10 `MediaUrl` (else 21623); 201 with the Message resource
  (`sid` "SM…", status `queued`). Scripted per recipient in `refusing`: a sync 400 with the
  code's envelope (21211/21408/21610/21611/21606), or 429 code 20429 with `Retry-After`.
  `status_callback(sid, status, error_code)` later posts the status form to the message's
  `StatusCallback`, signed with the account's auth token, as Twilio does.
- Scriptable routes: "media", "cdn", "messages".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ingest.transports.sms.webhook import SIGNATURE_HEADER, compute_signature
from tests.fakes.harness import Body, Clock, FakeServer

CDN_TTL_S = 4 * 3600
CDN_KEY = b"fake-twilio-cdn-key"
MEDIA_PATH = "/2010-04-01/Accounts/{account}/Messages/{message}/Media/{media}"
MESSAGES_PATH = "/2010-04-01/Accounts/{account}/Messages.json"
SYNC_ERRORS = {
    21211: "The 'To' number {to} is not a valid phone number.",
    21408: "Permission to send an SMS has not been enabled for the region indicated by the"
    " 'To' number: {to}.",
    21610: "Attempt to send to unsubscribed recipient",
    21611: "This 'From' number has exceeded the maximum number of queued messages",
    21606: "The 'From' phone number provided is not a valid message-capable Twilio phone"
    " number for this destination.",
    20429: "Too Many Requests",
}


@dataclass(frozen=True, slots=True)
class SentSms:
    sid: str
    account_sid: str
    form: dict[str, list[str]]  # every field as posted, repeated ones in order


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
    sent: list[SentSms] = field(default_factory=list)
    refusing: dict[str, int] = field(default_factory=dict)  # To → sync error code

    def __post_init__(self) -> None:
        self.api.route(MESSAGES_PATH, "messages", self._messages, ["POST"])
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
        self.sent.clear()
        self.refusing.clear()

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

    async def _messages(self, request: Request) -> Response:
        account = request.path_params["account"]
        if not self._authenticated(request, account):
            return unauthenticated()
        form: dict[str, list[str]] = {}
        for name, value in parse_qsl((await request.body()).decode(), keep_blank_values=True):
            form.setdefault(name, []).append(value)
        to = form.get("To", [""])[0]
        if not to:
            return twilio_error(400, 21604, "A 'To' phone number is required.")
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return twilio_error(400, 21603, "A 'From' or 'MessagingServiceSid' is required.")
        body = form.get("Body", [""])[0]
        if not body and not form.get("MediaUrl"):
            return twilio_error(400, 21602, "Message body is required.")
        if len(body) > 1600:
            return twilio_error(
                400, 21617, "The concatenated message body exceeds the 1600 character limit."
            )
        if len(form.get("MediaUrl", [])) > 10:
            return twilio_error(400, 21623, "Too many media urls; at most 10 are allowed.")
        if (code := self.refusing.get(to)) is not None:
            if code == 20429:
                refused = twilio_error(429, code, SYNC_ERRORS[code])
                refused.headers["retry-after"] = "2"
                return refused
            return twilio_error(400, code, SYNC_ERRORS[code].format(to=to))
        sid = f"SM{hashlib.sha256(f'{account}:{len(self.sent)}'.encode()).hexdigest()[:32]}"
        self.sent.append(SentSms(sid, account, form))
        path = MESSAGES_PATH.format(account=account).removesuffix(".json")
        return JSONResponse(
            {
                "account_sid": account,
                "api_version": "2010-04-01",
                "body": body,
                "direction": "outbound-api",
                "error_code": None,
                "error_message": None,
                "from": form.get("From", [None])[0],
                "messaging_service_sid": form.get("MessagingServiceSid", [None])[0],
                "num_media": str(len(form.get("MediaUrl", []))),
                "num_segments": "1",
                "sid": sid,
                "status": "queued",
                "to": to,
                "uri": f"{path}/{sid}.json",
            },
            201,
        )

    def status_callback(
        self, sid: str, status: str, error_code: int | None = None
    ) -> httpx.Response:
        """Posts a status to the message's StatusCallback, signed as Twilio signs it."""
        sent = next(m for m in self.sent if m.sid == sid)
        url = sent.form["StatusCallback"][0]
        params = [
            ("AccountSid", sent.account_sid),
            ("MessageSid", sid),
            ("SmsSid", sid),
            ("MessageStatus", status),
            ("To", sent.form["To"][0]),
            ("From", sent.form.get("From", [""])[0]),
            ("ApiVersion", "2010-04-01"),
        ]
        if error_code is not None:
            params.append(("ErrorCode", str(error_code)))
        signature = compute_signature(self.accounts[sent.account_sid], url, params)
        return httpx.post(url, data=dict(params), headers={SIGNATURE_HEADER: signature})


def _sign(media_sid: str, expires: int) -> str:
    return hmac.new(CDN_KEY, f"{media_sid}:{expires}".encode(), hashlib.sha256).hexdigest()
