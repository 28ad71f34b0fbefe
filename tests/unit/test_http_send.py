"""The one HTTP call of the senders (ingest/transports/http_send.py): where a failure falls
between "certainly not accepted" and "may have been accepted", over real sockets."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ingest.transports.http_download import ErrorResponse
from ingest.transports.http_send import ProviderHTTP, classify_status
from ingest.transports.sending import (
    SendError,
    SendOutcomeUnknown,
    SendRejected,
    SendTransient,
)
from tests.fakes.fixtures import serving
from tests.fakes.harness import FakeServer, Scripted


def classify(answer: ErrorResponse) -> SendError:
    return classify_status("test", answer) or SendRejected(str(answer.status), "refused")


@pytest.fixture
async def http() -> AsyncIterator[ProviderHTTP]:
    async with httpx.AsyncClient() as client:
        yield ProviderHTTP(client, timeout_s=0.5)


@pytest.fixture
async def hang_up() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A server that reads the whole request, then closes without an answer (a crash or a
    reset after the provider got it)."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        received.append(head + await reader.readexactly(length))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}/send", received


@pytest.fixture(scope="module")
def _api() -> Iterator[FakeServer]:
    server = FakeServer("http-send")

    async def accepted(request: Request) -> Response:
        return JSONResponse({"id": "1"})

    server.route("/send", "send", accepted, ["POST"])
    with serving(server):
        yield server


@pytest.fixture
def api(_api: FakeServer) -> FakeServer:
    _api.reset()
    return _api


async def test_refused_connection_is_transient(http: ProviderHTTP) -> None:
    with pytest.raises(SendTransient) as caught:
        await http.post("http://127.0.0.1:9/send", what="test", classify=classify, json_body={})
    assert caught.value.code == "network"


async def test_hang_up_after_the_request_arrived_is_unknown(
    http: ProviderHTTP, hang_up: tuple[str, list[bytes]]
) -> None:
    url, received = hang_up
    with pytest.raises(SendOutcomeUnknown):
        await http.post(url, what="test", classify=classify, json_body={"text": "hi"})
    assert received[0].endswith(b'{"text":"hi"}')  # the provider did get it


async def test_accepted_answer_is_returned(http: ProviderHTTP, api: FakeServer) -> None:
    answer = await http.post(f"{api.url}/send", what="test", classify=classify, json_body={})
    assert answer == {"id": "1"}


async def test_a_compressed_answer_is_read(http: ProviderHTTP, api: FakeServer) -> None:
    body = gzip.compress(json.dumps({"id": "wamid.Z"}).encode())
    headers = {"content-encoding": "gzip", "content-type": "application/json"}
    api.script("send", Scripted(200, body=body, headers=headers))
    answer = await http.post(f"{api.url}/send", what="test", classify=classify, json_body={})
    assert answer == {"id": "wamid.Z"}


async def test_no_answer_in_time_is_unknown(http: ProviderHTTP, api: FakeServer) -> None:
    api.script("send", Scripted(200, json={"id": 1}, delay_s=2.0))
    with pytest.raises(SendOutcomeUnknown):
        await http.post(f"{api.url}/send", what="test", classify=classify, json_body={})


@pytest.mark.parametrize(
    ("answer", "error", "code"),
    [
        (Scripted(503, body=b"down"), SendTransient, "503"),
        (Scripted(429, body=b"", headers={"retry-after": "4"}), SendTransient, "429"),
        (Scripted(302, headers={"location": "https://elsewhere/"}), SendRejected, "302"),
        (Scripted(400, json={"error": "x"}), SendRejected, "400"),
        (Scripted(200, body=b"<html>ok</html>"), SendOutcomeUnknown, "bad_answer"),
    ],
)
async def test_answers_are_classified(
    answer: Scripted, error: type[SendError], code: str, http: ProviderHTTP, api: FakeServer
) -> None:
    api.script("send", answer)
    with pytest.raises(error) as caught:
        await http.post(f"{api.url}/send", what="test", classify=classify, json_body={})
    assert caught.value.code == code
    if code == "429":
        assert isinstance(caught.value, SendTransient)
        assert caught.value.retry_after == 4.0
    assert len(api.calls("send")) == 1  # a redirect is not followed
