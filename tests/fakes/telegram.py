"""A Telegram Bot API fake (provider-apis.md §1, §5): `/bot<token>/<method>` and
`/file/bot<token>/<file_path>` on one origin, as the real server.

- Malformed token → 404 `Not Found`; well-formed but unknown → 401 `Unauthorized`.
- `getFile` (GET or POST; query, form or JSON; case-insensitive) returns a `File` with a
  relative `file_path`; over 20 MB → 400 `Bad Request: file is too big`; unknown id → 400
  `Bad Request: invalid file_id`.
- File links expire `link_ttl_s` after their getFile (real: at least an hour) → 404; a new
  getFile revalidates.
- `local_mode`: absolute `file_path`s and no size cap, as `telegram-bot-api --local`.
- `sendMessage` / `sendPhoto` / `sendDocument` (§1.4, §1.5): params any way (JSON, form,
  multipart, with objects as JSON strings; legacy `reply_to_message_id`), a `Message` with a
  per-chat increasing `message_id`; text 1-4096, caption <= 1024, uploads <= 10 MB (photo) /
  50 MB (document). Per chat: `blocked` → 403, `flood` → 429 with `parameters.retry_after`
  and `Retry-After` (then succeeds once the wait passed), `migrated` → 400 with
  `migrate_to_chat_id`, `failing` → that many 5xx, `scheduling` → `message_id` 0. What was
  sent is in `sent`.
- Scriptable routes: "api" (every method), "file".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fakes.harness import Body, Clock, FakeServer

TOKEN = re.compile(r"[0-9]{1,20}:[A-Za-z0-9_-]{20,100}")
MAX_DOWNLOAD = 20 << 20


def error(status: int, description: str, **parameters: Any) -> JSONResponse:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return JSONResponse(body, status)


@dataclass(slots=True)
class TelegramFile:
    file_id: str
    file_unique_id: str
    body: Body
    file_path: str
    file_size: int  # what getFile reports (may differ from the body, to test caps)


PHOTO_MAX = 10 << 20
DOCUMENT_MAX = 50 << 20
TEXT_MAX = 4096
CAPTION_MAX = 1024


@dataclass(frozen=True, slots=True)
class Upload:
    field: str  # "photo" / "document"
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass(frozen=True, slots=True)
class SentMessage:
    method: str
    chat_id: int
    message_id: int
    text: str | None
    caption: str | None
    reply_to_message_id: int | None
    upload: Upload | None
    params: dict[str, Any]


@dataclass(slots=True)
class TelegramFake:
    server: FakeServer = field(default_factory=lambda: FakeServer("telegram"))
    clock: Clock = field(default_factory=Clock)
    link_ttl_s: float = 3600.0
    local_mode: bool = False  # a local Bot API server: absolute file_path, no 20 MB cap
    tokens: set[str] = field(default_factory=set)
    files: dict[str, TelegramFile] = field(default_factory=dict)
    issued: dict[tuple[str, str], float] = field(default_factory=dict)  # (token, path) → when
    sent: list[SentMessage] = field(default_factory=list)
    last_message_id: dict[int, int] = field(default_factory=dict)  # per chat
    blocked: set[int] = field(default_factory=set)
    flood: dict[int, int] = field(default_factory=dict)  # chat → retry_after seconds
    flooded_until: dict[int, float] = field(default_factory=dict)
    migrated: dict[int, int] = field(default_factory=dict)  # old chat id → supergroup id
    failing: dict[int, int] = field(default_factory=dict)  # chat → 5xx answers left
    scheduling: set[int] = field(default_factory=set)  # chats whose sends get message_id 0

    def __post_init__(self) -> None:
        self.server.route("/bot{token}/{method}", "api", self._api, ["GET", "POST"])
        self.server.route("/file/bot{token}/{path:path}", "file", self._file, ["GET"])

    @property
    def url(self) -> str:
        return self.server.url

    def add_bot(self, token: str) -> str:
        self.tokens.add(token)
        return token

    def add_file(
        self, file_id: str, data: bytes, *, file_size: int | None = None, **body: Any
    ) -> TelegramFile:
        n = len(self.files) + 1
        added = TelegramFile(
            file_id=file_id,
            file_unique_id=f"AQAD{n:06d}",
            body=Body(data, **body),
            file_path=f"documents/file_{n}.bin",
            file_size=len(data) if file_size is None else file_size,
        )
        self.files[file_id] = added
        return added

    def reset(self) -> None:
        self.server.reset()
        self.clock.offset = 0.0
        self.link_ttl_s = 3600.0
        self.local_mode = False
        self.tokens.clear()
        self.files.clear()
        self.issued.clear()
        self.sent.clear()
        self.last_message_id.clear()
        self.blocked.clear()
        self.flood.clear()
        self.flooded_until.clear()
        self.migrated.clear()
        self.failing.clear()
        self.scheduling.clear()

    def _auth(self, token: str) -> Response | None:
        if not TOKEN.fullmatch(token):
            return error(404, "Not Found")
        if token not in self.tokens:
            return error(401, "Unauthorized")
        return None

    async def _api(self, request: Request) -> Response:
        token = request.path_params["token"]
        if (refused := self._auth(token)) is not None:
            return refused
        method = request.path_params["method"].lower()
        params = dict(request.query_params) | await _body_params(request)
        if method in SEND_METHODS:
            return self._send(SEND_METHODS[method], params)
        if method != "getfile":
            return error(404, "Not Found: method not found")
        found = self.files.get(str(params.get("file_id", "")))
        if found is None:
            return error(400, "Bad Request: invalid file_id")
        result: dict[str, Any] = {
            "file_id": found.file_id,
            "file_unique_id": found.file_unique_id,
            "file_size": found.file_size,
        }
        if self.local_mode:
            result["file_path"] = f"/var/lib/telegram-bot-api/{token}/{found.file_path}"
            return JSONResponse({"ok": True, "result": result})
        if found.file_size > MAX_DOWNLOAD:
            return error(400, "Bad Request: file is too big")
        result["file_path"] = found.file_path
        self.issued[(token, found.file_path)] = self.clock.now()
        return JSONResponse({"ok": True, "result": result})

    def _send(self, method: str, params: dict[str, Any]) -> Response:
        try:
            chat_id = int(params["chat_id"])
        except (KeyError, TypeError, ValueError):
            return error(400, "Bad Request: chat not found")
        if (refused := self._chat_state(chat_id)) is not None:
            return refused
        text = caption = None
        upload: Upload | None = None
        if method == "sendMessage":
            text = str(params.get("text") or "")
            if not text.strip():
                return error(400, "Bad Request: message text is empty")
            if len(text) > TEXT_MAX:
                return error(400, "Bad Request: message is too long")
        else:
            field_name = "photo" if method == "sendPhoto" else "document"
            upload = params.get(field_name)
            if not isinstance(upload, Upload):
                return error(400, f"Bad Request: there is no {field_name} in the request")
            limit = PHOTO_MAX if field_name == "photo" else DOCUMENT_MAX
            if len(upload.data) > limit:
                return error(400, "Bad Request: file is too big")
            caption = params.get("caption")
            if caption is not None and len(str(caption)) > CAPTION_MAX:
                return error(400, "Bad Request: message caption is too long")
        reply = params.get("reply_parameters")
        if isinstance(reply, str):
            try:
                reply = json.loads(reply)
            except ValueError:
                return error(400, "Bad Request: can't parse reply parameters JSON object")
        reply_to = reply.get("message_id") if isinstance(reply, dict) else None
        reply_to = reply_to if reply_to is not None else params.get("reply_to_message_id")
        message_id = 0
        if chat_id not in self.scheduling:
            message_id = self.last_message_id.get(chat_id, 0) + 1
            self.last_message_id[chat_id] = message_id
        self.sent.append(
            SentMessage(
                method,
                chat_id,
                message_id,
                text,
                None if caption is None else str(caption),
                None if reply_to is None else int(reply_to),
                upload,
                {k: v for k, v in params.items() if not isinstance(v, Upload)},
            )
        )
        result: dict[str, Any] = {
            "message_id": message_id,
            "from": {"id": 7000000001, "is_bot": True, "first_name": "Acme CRM"},
            "chat": {"id": chat_id, "type": "private"},
            "date": int(self.clock.now()),
        }
        if text is not None:
            result["text"] = text
        if caption is not None:
            result["caption"] = caption
        return JSONResponse({"ok": True, "result": result})

    def _chat_state(self, chat_id: int) -> Response | None:
        """The scripted per-chat refusals, in the order the real server would meet them."""
        if chat_id in self.migrated:
            return error(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                migrate_to_chat_id=self.migrated[chat_id],
            )
        if chat_id in self.blocked:
            return error(403, "Forbidden: bot was blocked by the user")
        if self.failing.get(chat_id, 0) > 0:
            self.failing[chat_id] -= 1
            return JSONResponse({"ok": False, "error_code": 502, "description": "Bad Gateway"}, 502)
        if chat_id in self.flood:
            until = self.flooded_until.setdefault(chat_id, self.clock.now() + self.flood[chat_id])
            left = until - self.clock.now()
            if left > 0:
                wait = max(1, int(left + 0.999))
                response = error(429, f"Too Many Requests: retry after {wait}", retry_after=wait)
                response.headers["retry-after"] = str(wait)
                return response
        return None

    async def _file(self, request: Request) -> Response:
        token, path = request.path_params["token"], request.path_params["path"]
        if (refused := self._auth(token)) is not None:
            return refused
        issued = self.issued.get((token, path))
        found = next((f for f in self.files.values() if f.file_path == path), None)
        if found is None or issued is None or self.clock.now() - issued > self.link_ttl_s:
            return error(404, "Not Found")
        return found.body.response()


async def _body_params(request: Request) -> dict[str, Any]:
    kind = request.headers.get("content-type", "")
    if request.method != "POST":
        return {}
    if kind.startswith("application/json"):
        data = json.loads(await request.body() or b"{}")
        return data if isinstance(data, dict) else {}
    if kind.startswith("application/x-www-form-urlencoded"):
        return dict(parse_qsl((await request.body()).decode()))
    if kind.startswith("multipart/form-data"):
        params: dict[str, Any] = {}
        async with request.form(max_part_size=DOCUMENT_MAX + 1) as form:
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    data = await value.read()
                    params[name] = Upload(name, value.filename, value.content_type, data)
                else:
                    params[name] = value
        return params
    return {}


SEND_METHODS = {name.lower(): name for name in ("sendMessage", "sendPhoto", "sendDocument")}
