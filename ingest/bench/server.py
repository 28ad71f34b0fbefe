"""The gateway phase's child-process entry point:

    python -m ingest.bench.server serve {bare|gateway} PORT

Settings come from the environment (`ingest.bench.children.settings_env`)."""

from __future__ import annotations

import asyncio
import sys

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def bare_app() -> Starlette:
    """One trivial POST route on the gateway's URL shape (reads the body, answers 200)."""

    async def webhook(request: Request) -> Response:
        await request.body()
        return Response(b'{"ok":true}', media_type="application/json")

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/webhooks/{transport}/{channel_id}", webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def serve(kind: str, port: int) -> None:
    """Run the gateway (`create_gateway`: real publisher, channel directory, adapters) or the
    bare app on the server `crm-ingest gateway` runs: both sides of the ratio on one stack."""
    from ingest.config import load_settings
    from ingest.logs import configure_logging
    from ingest.process import http_server, serve_until_signalled

    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    if kind == "gateway":
        from ingest.gateway import create_gateway

        app = create_gateway(settings)
    else:
        app = bare_app()
    asyncio.run(serve_until_signalled(http_server(app, "127.0.0.1", port, settings)))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit("usage: python -m ingest.bench.server serve {bare|gateway} PORT")
