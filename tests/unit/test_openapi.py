"""The gateway serves an OpenAPI document naming exactly the routes it has."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.routing import Route

from ingest.config import TRANSPORTS, load_settings
from ingest.gateway import create_app
from ingest.transports import load_adapters


class Idle:
    async def publish(self, events: Any) -> None: ...

    async def ping(self) -> bool:
        return True

    async def get(self, channel_id: str) -> None:
        return None


def app() -> Any:
    settings = load_settings(DATABASE_URL="", KAFKA_BOOTSTRAP_SERVERS="")
    return create_app(settings, publisher=Idle(), channels=Idle(), adapters=load_adapters())


def served_operations() -> set[tuple[str, str]]:
    adapters = load_adapters()
    operations = set()
    for route in app().routes:
        assert isinstance(route, Route)
        for method in route.methods or ():
            if method == "HEAD":
                continue
            if "{transport}" not in route.path:
                operations.add((route.path, method.lower()))
                continue
            for transport in TRANSPORTS:  # GET exists only where the adapter has a handshake
                if method == "GET" and not hasattr(adapters[transport], "handshake"):
                    continue
                path = route.path.replace("{transport}", transport)
                operations.add((path, method.lower()))
    return operations


async def test_document_is_served_and_matches_the_routes() -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app()), base_url="http://g"
    ) as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert documented == served_operations()


async def test_every_webhook_documents_its_refusals() -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app()), base_url="http://g"
    ) as client:
        document = (await client.get("/openapi.json")).json()
    for transport in TRANSPORTS:
        answers = document["paths"][f"/webhooks/{transport}/{{channel_id}}"]["post"]["responses"]
        assert {"200", "400", "401", "404", "413", "503"} <= set(answers)
        # Authenticated content is never refused: no 422 (nor 403) for a webhook body.
        assert not {"403", "422"} & set(answers)
