"""A Telegram Bot API fake (provider-apis.md §1, §5): `/bot<token>/<method>` and
`/file/bot<token>/<file_path>` on one origin, as the real server.

- Malformed token → 404 `Not Found`; well-formed but unknown → 401 `Unauthorized`.
- `getFile` (GET or POST; query, form or JSON; case-insensitive) returns a `File` with a
  relative `file_path`; over 20 MB → 400 `Bad Request: file is too big`; unknown id → 400
  `Bad Request: invalid file_id`.
- File links expire `link_ttl_s` after their getFile (real: at least an hour) → 404; a new
  getFile revalidates.
- `local_mode`: absolute `file_path`s and no size cap, as `telegram-bot-api --local`.
- Scriptable routes: "api" (every method), "file".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

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


@dataclass(slots=True)
class TelegramFake:
    server: FakeServer = field(default_factory=lambda: FakeServer("telegram"))
    clock: Clock = field(default_factory=Clock)
    link_ttl_s: float = 3600.0
    local_mode: bool = False  # a local Bot API server: absolute file_path, no 20 MB cap
    tokens: set[str] = field(default_factory=set)
    files: dict[str, TelegramFile] = field(default_factory=dict)
    issued: dict[tuple[str, str], float] = field(default_factory=dict)  # (token, path) → when

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
        if request.path_params["method"].lower() != "getfile":
            return error(404, "Not Found: method not found")
        params = dict(request.query_params) | await _body_params(request)
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
    return {}  # multipart (uploads) comes with the send endpoints
